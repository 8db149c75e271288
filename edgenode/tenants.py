"""Deleting a tenant: everything it owns on this node goes with it, so a new tenant of its name starts empty.

Workers (and the public ones stop answering), sandboxes (processes killed, files removed),
repositories, state namespaces (worker and agent kv included), agents with their runs, and
finally its tokens and its record. Each capability removes its own part (``purge_tenant``);
this module only sequences them, workers first so nothing public keeps serving meanwhile.
In a fleet the tenant's deletion is a control record (``edgenode.fleet``): every other node runs
this same sequence when it applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgenode.auth import validate_tenant
from edgenode.errors import NotFound

if TYPE_CHECKING:
    from edgenode.node import Node

#: Capabilities in the order their part of a tenant is removed.
ORDER = ("workers", "agents", "sandboxes", "artifacts", "state")


async def delete_tenant(node: Node, name: str) -> None:
    """Remove ``name`` and everything it owns on this node; NotFound if there is no such tenant."""
    validate_tenant(name)
    if not await node.auth.tenant_exists(name):
        raise NotFound(f"no tenant named {name!r}")  # before anything is touched
    workers: Any = getattr(node, "workers", None)
    if workers is not None:
        for worker in await workers.list_workers(name):
            await workers.delete(name, worker["name"])
    for capability in ORDER[1:]:
        cap: Any = getattr(node, capability, None)
        purge = getattr(cap, "purge_tenant", None)
        if purge is not None:
            await purge(name)
    await node.auth.delete_tenant(name)


__all__ = ["delete_tenant"]
