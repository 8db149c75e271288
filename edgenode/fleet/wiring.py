"""Building a node's fleet services: the control plane and the Git ref bus, from the services they replicate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.client import Client
from nats.js.api import DiscardPolicy
from nats.js.client import JetStreamContext

from edgenode.fleet.access import RepoTokenRecords, Tenants, Tokens
from edgenode.fleet.buckets import BlobStore, Bucket, StreamBucket
from edgenode.fleet.control import MIGRATIONS, ControlPlane
from edgenode.fleet.deployments import AgentDeployments, WorkerDeployments
from edgenode.fleet.git import RETENTION_S, RefBus
from edgenode.fleet.secrets import SecretBox, TenantSecrets
from edgenode.store import Database

if TYPE_CHECKING:
    from edgenode.agents import Agents
    from edgenode.artifacts.tokens import RepoTokens
    from edgenode.auth import Auth
    from edgenode.isolates import Workers
    from edgenode.node import Node


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




class FleetTransport(Protocol):
    """What :class:`FleetControl` needs of the cluster's transport (``edgenode.cluster.NatsTransport``)."""

    prefix: str
    replicas: int
    nc: Client

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the fleet's domain."""

    def stream_name(self, name: str) -> str:
        """The full name of one of the fleet's streams."""

    async def stream(self, name: str, subjects: list[str], **limits: Any) -> str:
        """Make sure a fleet-wide stream exists (fewer replicas while servers are few); returns its full name."""

    async def bucket(self, name: str) -> Bucket:
        """A fleet-wide bucket (created if missing)."""


class FleetControl:
    """The node's fleet-wide control plane and Git ref bus, started once the cluster has a transport.

    Added last to the node (after workers, artifacts and agents have opened their databases), so it
    stops first. A node outside a fleet (no ``node.cluster.transport``) starts nothing here.
    """

    name = "control"

    def __init__(self, node: Node) -> None:
        self.node = node
        #: ``fleet.db``, created on the first start in a fleet (a lone node never has one).
        self.db: Database | None = None
        self.plane: ControlPlane | None = None
        self.bus: RefBus | None = None

    async def start(self) -> None:
        """Build and start the control plane and the ref bus on the cluster's transport, if there is one."""
        transport: FleetTransport | None = getattr(getattr(self.node, "cluster", None), "transport", None)
        secret = self.node.config.fleet_secret_bytes()
        if transport is None or secret is None:
            return
        node = self.node
        self.db = db = node.database("fleet.db", MIGRATIONS)
        db.open()
        js = transport.jetstream

        async def purge(name: str) -> None:
            from edgenode.tenants import delete_tenant  # the node's one tenant purge sequence

            await delete_tenant(node, name)

        artifacts: Any = getattr(node, "artifacts", None)
        self.plane = build_control_plane(
            js, await transport.bucket("control"), await transport.bucket("blobs"), node_id=node.id,
            fleet_secret=secret, db=db, auth=node.auth, purge_tenant=purge,
            repo_tokens=getattr(artifacts, "tokens", None), workers=getattr(node, "workers", None),
            agents=getattr(node, "agents", None))
        await self.plane.start()
        if artifacts is not None:
            stream = await transport.stream("GIT", [f"{transport.prefix}.git.refs"], max_age=RETENTION_S,
                                            discard=DiscardPolicy.OLD)
            self.bus = RefBus(transport.nc, js, artifacts.gossip, subject_prefix=transport.prefix, stream=stream,
                              node_id=node.id, fleet_secret=secret, db=db, replicas=None)
            await self.bus.start()

    async def stop(self) -> None:
        """Stop the ref bus and the control plane; close ``fleet.db``."""
        if self.bus is not None:
            await self.bus.stop()
            self.bus = None
        if self.plane is not None:
            await self.plane.stop()
            self.plane = None
        if self.db is not None:
            self.db.close()

    def status(self) -> dict[str, Any]:
        """The control plane's and the ref bus's counters (empty outside a fleet)."""
        return {"control": self.plane.status() if self.plane else None,
                "refbus": self.bus.status() if self.bus else None}


__all__ = ["FleetControl", "FleetTransport", "build_control_plane", "open_buckets"]
