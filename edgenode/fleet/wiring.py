"""One call that builds a node's control plane from the services it replicates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.js.client import JetStreamContext

from edgenode.fleet.access import RepoTokenRecords, Tenants, Tokens
from edgenode.fleet.buckets import BlobStore, Bucket, StreamBucket
from edgenode.fleet.control import ControlPlane
from edgenode.fleet.deployments import AgentDeployments, WorkerDeployments
from edgenode.fleet.secrets import SecretBox, TenantSecrets
from edgenode.store import Database

if TYPE_CHECKING:
    from edgenode.agents import Agents
    from edgenode.artifacts.tokens import RepoTokens
    from edgenode.auth import Auth
    from edgenode.isolates import Workers


async def open_buckets(js: JetStreamContext, *, subject_prefix: str, stream_prefix: str,
                       replicas: int = 1) -> tuple[StreamBucket, StreamBucket]:
    """The control and blob buckets (``<stream_prefix>_CONTROL`` on ``<subject_prefix>.control.>``, and blobs)."""
    control = await StreamBucket.open(js, stream=f"{stream_prefix}_CONTROL".upper(),
                                      subject=f"{subject_prefix}.control", replicas=replicas)
    blobs = await StreamBucket.open(js, stream=f"{stream_prefix}_BLOBS".upper(),
                                    subject=f"{subject_prefix}.blobs", replicas=replicas)
    return control, blobs


def build_control_plane(js: JetStreamContext, control: Bucket, blobs: Bucket, *, node_id: str,
                        fleet_secret: bytes, db: Database, auth: Auth,
                        purge_tenant: Callable[[str], Awaitable[None]] | None = None,
                        repo_tokens: RepoTokens | None = None, workers: Workers | None = None,
                        agents: Agents | None = None) -> ControlPlane:
    """A control plane replicating tenants and tokens, plus whichever of the other services are given.

    ``control`` and ``blobs`` are two buckets of the fleet (:func:`open_buckets`, or the fleet
    transport's ``bucket("control")`` and ``bucket("blobs")``: the same interface). ``purge_tenant``
    removes a tenant deleted elsewhere with everything it owns here (the node's
    ``edgenode.tenants.delete_tenant``); without it only the tenant's record and tokens go.
    ``db`` is ``fleet.db``, opened with :data:`edgenode.fleet.control.MIGRATIONS`.
    """
    box = SecretBox(fleet_secret)
    code = BlobStore(blobs)
    plane = ControlPlane(js, control, node_id=node_id, fleet_secret=fleet_secret, db=db)
    plane.add(Tenants(auth, purge_tenant))
    plane.add(Tokens(auth))
    plane.follow(auth.changes)
    if repo_tokens is not None:
        plane.add(RepoTokenRecords(repo_tokens))
        plane.follow(repo_tokens.changes)
    if workers is not None:
        plane.add(WorkerDeployments(workers, code, box))
        plane.follow(workers.changes)
    if agents is not None:
        plane.add(AgentDeployments(agents, code))
        plane.add(TenantSecrets(agents, box))
        plane.follow(agents.changes)
    return plane


__all__ = ["build_control_plane", "open_buckets"]
