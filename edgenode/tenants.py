"""Deleting a tenant: everything it owns on this node goes with it, so a new tenant of its name starts empty.

Workers (and the public ones stop answering), sandboxes (processes killed, files removed),
repositories, state namespaces (worker and agent kv included), agents with their runs, and
finally its tokens and its record. Each capability removes its own part (``purge_tenant``);
this module only sequences them, workers first so nothing public keeps serving meanwhile.
In a fleet the tenant's deletion is a control record (``edgenode.fleet``): every other node runs
this same sequence when it applies it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgenode.auth import validate_tenant
from edgenode.errors import NotFound

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)

#: Capabilities in the order their part of a tenant is removed.
ORDER = ("workers", "agents", "sandboxes", "artifacts", "state")
#: Longest a deletion waits for the tenant's requests already under way (a deploy building, an
#: upload) before it removes what they made; streams it cut short end sooner.
DRAIN_S = 30.0


async def delete_tenant(node: Node, name: str, *, drain_s: float = DRAIN_S, own_request: bool = False) -> None:
    """Remove ``name`` and everything it owns on this node; NotFound if there is no such tenant.

    Its tokens go first, so nothing new starts for it; its jobs are cancelled; what its requests
    already under way create while the first removal runs goes in a second one, once they end
    (``own_request``: the deleting request itself acts for the tenant, and is not waited for).
    """
    validate_tenant(name)
    if not await node.auth.tenant_exists(name):
        raise NotFound(f"no tenant named {name!r}")  # before anything is touched
    await node.auth.revoke_tenant(name)
    await node.jobs.purge_tenant(name)
    await _purge(node, name)
    if not await node.admission.idle(name, drain_s, besides=1 if own_request else 0):
        log.warning("tenant requests still running after its deletion's wait",
                    extra={"tenant": name, "requests": node.admission.in_flight(name)})
    await _purge(node, name)
    await node.auth.delete_tenant(name)


async def _purge(node: Node, name: str) -> None:
    workers: Any = getattr(node, "workers", None)
    if workers is not None:
        for worker in await workers.list_workers(name):
            await workers.delete(name, worker["name"])
    for capability in ORDER[1:]:
        cap: Any = getattr(node, capability, None)
        purge = getattr(cap, "purge_tenant", None)
        if purge is not None:
            await purge(name)


__all__ = ["DRAIN_S", "delete_tenant"]
