"""One call that builds a node's control plane from the services it replicates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.js.client import JetStreamContext

from edgenode.fleet.access import RepoTokenRecords, Tenants, Tokens
from edgenode.fleet.control import ControlPlane
from edgenode.fleet.deployments import AgentDeployments, Blobs, WorkerDeployments
from edgenode.fleet.secrets import SecretBox, TenantSecrets
from edgenode.store import Database

if TYPE_CHECKING:
    from edgenode.agents import Agents
    from edgenode.artifacts.tokens import RepoTokens
    from edgenode.auth import Auth
    from edgenode.isolates import Workers


def build_control_plane(js: JetStreamContext, *, prefix: str, node_id: str, fleet_secret: bytes, db: Database,
                        auth: Auth, purge_tenant: Callable[[str], Awaitable[None]] | None = None,
                        repo_tokens: RepoTokens | None = None, workers: Workers | None = None,
                        agents: Agents | None = None, replicas: int = 1) -> ControlPlane:
    """A control plane replicating tenants and tokens, plus whichever of the other services are given.

    ``purge_tenant`` removes a tenant deleted elsewhere with everything it owns here (the node's
    ``edgenode.tenants.delete_tenant``); without it only the tenant's record and tokens go.
    ``db`` is ``fleet.db``, opened with :data:`edgenode.fleet.control.MIGRATIONS`.
    """
    box = SecretBox(fleet_secret)
    plane = ControlPlane(js, prefix=prefix, node_id=node_id, fleet_secret=fleet_secret, db=db, replicas=replicas)
    tokens = Tokens(auth)
    tokens.bind(plane)
    plane.add(Tenants(auth, purge_tenant))
    plane.add(tokens)
    plane.follow(auth.changes)
    if repo_tokens is not None:
        plane.add(RepoTokenRecords(repo_tokens))
        plane.follow(repo_tokens.changes)
    blobs = Blobs(js, prefix=prefix, replicas=replicas)
    if workers is not None:
        plane.add(WorkerDeployments(workers, blobs, box))
        plane.follow(workers.changes)
    if agents is not None:
        plane.add(AgentDeployments(agents, blobs))
        plane.add(TenantSecrets(agents, box))
        plane.follow(agents.changes)
    return plane


__all__ = ["build_control_plane"]
