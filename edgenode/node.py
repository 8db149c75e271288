"""The ``Node``: one object that wires every capability and owns start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from edgenode import __version__
from edgenode.admission import Admission
from edgenode.agents import Agents
from edgenode.artifacts import Artifacts
from edgenode.auth import MIGRATIONS as AUTH_MIGRATIONS
from edgenode.auth import Auth
from edgenode.cluster import Cluster, NatsTransport
from edgenode.config import Config
from edgenode.errors import ValidationFailed
from edgenode.fleet.wiring import FleetControl
from edgenode.isolates import Workers
from edgenode.jobs import Jobs
from edgenode.metrics import Metrics
from edgenode.sandboxes import Sandboxes
from edgenode.state import State
from edgenode.store import Database
from edgenode.store.health import StoreMonitor
from edgenode.store.ledger import DatabaseLedger
from edgenode.store.replication import INSTALL_HINT, Litestream, find_litestream

log = logging.getLogger(__name__)


class Capability(Protocol):
    """What the node asks of each capability (workers, sandboxes, state, ...)."""

    name: str

    async def start(self) -> None:
        """Open databases, start background tasks; called once, in order, at node start."""

    async def stop(self) -> None:
        """Stop background work and release resources; called once, in reverse order."""

    def status(self) -> dict[str, Any]:
        """A small JSON-able summary for ``GET /v1/status`` and ``edgenode status``."""


#: What each of the node's own databases holds, for errors and start-up refusals.
PURPOSES = {
    "node.db": "node database (tenants and tokens)",
    "workers.db": "workers database (deployments)",
    "sandboxes.db": "sandboxes database (sandbox records)",
    "artifacts.db": "artifacts database (repositories and their tokens)",
    "agents.db": "agents database (agent deployments and run journals)",
    "fleet.db": "fleet database (control-plane bookkeeping and stream positions)",
}


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 and ``text``; never loosen an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def load_or_create(path: Path, make: Any) -> str:
    """Read a one-line file, or create it (mode 0600) with ``make()`` the first time."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = str(make())
        try:
            _write_private(path, value)
        except FileExistsError:  # another process won the race
            return path.read_text().strip()
        return value


class Node:
    """A node: its data directory, identity, stores, auth, metrics and capabilities."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.version = __version__
        self.data_dir = Path(config.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.id = load_or_create(self.data_dir / "node-id", lambda: "n" + secrets.token_hex(6))
        self.admin_token = config.admin_token or load_or_create(
            self.data_dir / "admin-token", lambda: "edn_admin_" + secrets.token_urlsafe(32)
        )
        #: Base URL this node serves on, known once the socket is bound.
        self.url: str | None = None
        self.started_at: float | None = None
        #: Why :meth:`start` failed, for a clear message where the server only reports its traceback.
        self.start_error: Exception | None = None
        self.metrics = Metrics()
        self.metrics.info.labels(self.id, self.version).set(1)
        store = config.store
        self.store = StoreMonitor(self.data_dir, stuck_after_s=store.stuck_write_s, min_free_mb=store.min_free_mb,
                                  min_free_percent=store.min_free_percent, registry=self.metrics.registry)
        self.ledger = DatabaseLedger(self.data_dir, self.id, accept_fresh=store.accept_fresh_db)
        if store.replica_url and find_litestream() is None:
            raise ValidationFailed(f"store.replica_url is set but no litestream binary was found; {INSTALL_HINT}",
                                   field="store.replica_url")
        #: Litestream must be the only checkpointer of the databases it replicates.
        self.wal_autocheckpoint = 0 if store.replica_url else 1000
        self._databases: list[Database] = []
        #: The Litestream child replicating the databases (store.replica_url), once started.
        self.litestream: Litestream | None = None
        self._databases_checked = False
        self._watchdog: asyncio.Task[None] | None = None
        self.db = self.database("node.db", AUTH_MIGRATIONS)
        self.auth = Auth(self.db, self.admin_token)
        self.capabilities: list[Capability] = []
        #: Background work routes answer 202 for (an import), followed at /v1/jobs/{id}.
        self.jobs = Jobs()
        #: Requests under way per tenant: admitted by share, waited for by a tenant's deletion.
        self.admission = Admission(self.config.http.tenant_requests, self.metrics.registry)
        # Capabilities are wired here, in start order; each also registers its routes in
        # edgenode.api.app and its commands in edgenode.cli.
        self.cluster = self.add(Cluster(self))
        self.state = self.add(State(self))
        self.workers = self.add(Workers(self))
        self.artifacts = self.add(Artifacts(self))
        self.sandboxes = self.add(Sandboxes(self))
        self.agents = self.add(Agents(self))
        # Last: it starts after the cluster and every service it replicates, and stops first.
        self.control = self.add(FleetControl(self))

    @property
    def transport(self) -> NatsTransport | None:
        """The fleet transport, connected once the cluster capability started (None for a node alone).

        What capabilities are handed to reach the fleet: ``transport.nc`` (the nats-py client),
        ``transport.jetstream`` (the fleet domain's JetStream), ``transport.subject(...)`` (per-fleet
        subjects), ``transport.stream(...)`` and ``transport.bucket(...)``.
        """
        transport: NatsTransport | None = self.cluster.transport
        return transport

    def database(self, name: str, migrations: Any = ()) -> Database:
        """A database file in the data directory, with the node's store settings."""
        settings = self.config.store
        db = Database(
            self.data_dir / name,
            migrations,
            readers=settings.readers,
            synchronous=settings.synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
            write_timeout_s=settings.write_timeout_s,
            purpose=PURPOSES.get(name, f"database {name}"),
            monitor=self.store,
            wal_autocheckpoint=self.wal_autocheckpoint,
        )
        self._databases.append(db)
        return db

    def check_databases(self) -> None:
        """Refuse to start (DatabaseRefused) if a database this node created is missing, empty or damaged.

        Runs once per process (the daemon runs it before binding its port, start runs it again for free).
        """
        if not self._databases_checked:
            self.ledger.check([db.path.name for db in self._databases], PURPOSES)
            self._databases_checked = True

    def add(self, capability: Capability) -> Any:
        """Register a capability to be started and stopped with the node."""
        self.capabilities.append(capability)
        return capability

    async def start(self) -> None:
        """Check the node's databases, open the node database and start every capability."""
        try:
            self.check_databases()
            self.db.open()
            for capability in self.capabilities:
                await capability.start()
        except Exception as exc:
            self.start_error = exc
            raise
        self.ledger.record(db.path.name for db in self._databases)
        store = self.config.store
        if store.replica_url:
            self.litestream = Litestream(self.data_dir, [db.path.name for db in self._databases],
                                         store.replica_url, sync_s=store.replica_sync_s,
                                         retention_h=store.replica_retention_h)
            await self.litestream.start()
            self.store.replication = self.litestream.status
        self._watchdog = asyncio.create_task(self.store.watch(max(1.0, self.config.store.stuck_write_s / 4)),
                                             name="store-watchdog")
        self.metrics.loop_lag.start()
        self.started_at = time.time()
        log.info("node started", extra={"node": self.id, "version": self.version, "data": str(self.data_dir)})

    async def stop(self) -> None:
        """Stop capabilities in reverse order, then close the node database."""
        await self.metrics.loop_lag.stop()
        await self.jobs.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for capability in reversed(self.capabilities):
            try:
                await capability.stop()
            except Exception:
                log.exception("capability failed to stop", extra={"capability": capability.name})
        self.db.close()
        if self.litestream is not None:  # after the databases closed: Litestream ships their last commits
            await self.litestream.stop()
        log.info("node stopped", extra={"node": self.id})

    def status(self) -> dict[str, Any]:
        """Identity, uptime and each capability's own summary."""
        return {
            "node": self.id,
            "version": self.version,
            "url": self.url,
            "data_dir": str(self.data_dir),
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else None,
            "capabilities": {c.name: c.status() for c in self.capabilities},
            "store": self.store.health(public=True),
            "event_loop_lag": self.metrics.loop_lag.summary(),
        }
