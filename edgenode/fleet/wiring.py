"""Building a node's fleet services: the control plane and the Git ref bus, from the services they replicate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.client import Client
from nats.js.api import DiscardPolicy
from nats.js.client import JetStreamContext

from edgenode.cluster.transport import Bucket as FleetBucket
from edgenode.fleet.access import RepoTokenRecords, Tenants, Tokens
from edgenode.fleet.buckets import BlobStore, Bucket, DeferredBucket, open_bucket
from edgenode.fleet.checkpoints import SandboxCheckpoints
from edgenode.fleet.control import MIGRATIONS, ControlPlane
from edgenode.fleet.deployments import AgentDeployments, WorkerDeployments
from edgenode.fleet.git import RETENTION_S, RefBus
from edgenode.fleet.secrets import SecretBox, TenantSecrets
from edgenode.store import Database

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edgenode.agents import Agents
    from edgenode.artifacts.tokens import RepoTokens
    from edgenode.auth import Auth
    from edgenode.isolates import Workers
    from edgenode.node import Node
    from edgenode.sandboxes import Sandboxes


async def open_buckets(js: JetStreamContext, *, subject_prefix: str, stream_prefix: str,
                       replicas: int = 1) -> tuple[FleetBucket, FleetBucket]:
    """The control and blob buckets (``<stream_prefix>_CONTROL`` on ``<subject_prefix>.control.>``, and blobs)."""
    control = await open_bucket(js, stream=f"{stream_prefix}_CONTROL".upper(),
                                subject=f"{subject_prefix}.control", replicas=replicas)
    blobs = await open_bucket(js, stream=f"{stream_prefix}_BLOBS".upper(),
                              subject=f"{subject_prefix}.blobs", replicas=replicas)
    return control, blobs


def build_control_plane(js: JetStreamContext, control: Bucket, blobs: Bucket, *, node_id: str,
                        fleet_secret: bytes, db: Database, auth: Auth,
                        purge_tenant: Callable[[str], Awaitable[None]] | None = None,
                        repo_tokens: RepoTokens | None = None, workers: Workers | None = None,
                        agents: Agents | None = None, sandboxes: Sandboxes | None = None) -> ControlPlane:
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
    if sandboxes is not None:
        # Workspace checkpoints: files as blobs beside the deployments' code, the latest manifest a record.
        kind = SandboxCheckpoints(sandboxes.checkpoints)
        plane.add(kind)
        plane.follow(sandboxes.checkpoints.changes)
        sandboxes.checkpoints.attach(code)
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
    stops first. It listens for local changes at once (each is marked in ``fleet.db``) and joins
    the fleet's buckets in the background, retrying until JetStream answers, so a node whose fleet
    is still forming starts anyway. A node outside a fleet (no ``node.cluster.transport``) starts
    nothing here and has no ``fleet.db``.
    """

    name = "control"

    def __init__(self, node: Node, *, retry_s: float = 0.2, max_retry_s: float = 5.0) -> None:
        self.node = node
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        #: ``fleet.db``, created on the first start in a fleet (a lone node never has one).
        self.db: Database | None = None
        self.plane: ControlPlane | None = None
        self.bus: RefBus | None = None
        self.joined = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for local changes now; join the fleet's buckets and streams in the background."""
        transport: FleetTransport | None = getattr(getattr(self.node, "cluster", None), "transport", None)
        secret = self.node.config.fleet_secret_bytes()
        if transport is None or secret is None:
            return
        node = self.node
        self.db = db = node.database("fleet.db", MIGRATIONS)
        db.open()

        async def purge(name: str) -> None:
            from edgenode.tenants import delete_tenant  # the node's one tenant purge sequence

            await delete_tenant(node, name)

        control, blobs = DeferredBucket(), DeferredBucket()
        artifacts: Any = getattr(node, "artifacts", None)
        self.plane = build_control_plane(
            transport.jetstream, control, blobs, node_id=node.id, fleet_secret=secret, db=db, auth=node.auth,
            purge_tenant=purge, repo_tokens=getattr(artifacts, "tokens", None),
            workers=getattr(node, "workers", None), agents=getattr(node, "agents", None),
            sandboxes=getattr(node, "sandboxes", None))
        if artifacts is not None:
            self.bus = RefBus(transport.nc, transport.jetstream, artifacts.gossip, subject_prefix=transport.prefix,
                              stream=transport.stream_name("GIT"), node_id=node.id, fleet_secret=secret, db=db,
                              replicas=None)
        self._task = asyncio.create_task(self._join(transport, control, blobs), name="fleet-control-join")

    async def _join(self, transport: FleetTransport, control: DeferredBucket, blobs: DeferredBucket) -> None:
        delay = self.retry_s
        while True:
            try:
                if control.target is None:
                    control.set(await transport.bucket("control"))
                if blobs.target is None:
                    blobs.set(await transport.bucket("blobs"))
                assert self.plane is not None
                await self.plane.start()
                if self.bus is not None:
                    await transport.stream("GIT", [self.bus.subject], max_age=RETENTION_S, discard=DiscardPolicy.OLD)
                    await self.bus.start()
                self.joined = True
                log.info("joined the fleet's control plane")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("the fleet's control plane is not reachable yet", extra={"error": repr(exc)[:200]})
                await asyncio.sleep(delay)
                delay = min(self.max_retry_s, delay * 2)

    async def stop(self) -> None:
        """Stop joining, the ref bus and the control plane; close ``fleet.db``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.bus is not None:
            await self.bus.stop()
            self.bus = None
        if self.plane is not None:
            await self.plane.stop()
            self.plane = None
        if self.db is not None:
            self.db.close()

    def status(self) -> dict[str, Any]:
        """Whether this node joined, and the control plane's and the ref bus's counters (None outside a fleet)."""
        return {"joined": self.joined, "control": self.plane.status() if self.plane else None,
                "refbus": self.bus.status() if self.bus else None}


__all__ = ["FleetControl", "FleetTransport", "build_control_plane", "open_buckets"]
