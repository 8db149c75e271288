"""The ``Node``: one object that wires every capability and owns start and stop."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from edgenode import __version__
from edgenode.agents import Agents
from edgenode.artifacts import Artifacts
from edgenode.auth import MIGRATIONS as AUTH_MIGRATIONS
from edgenode.auth import Auth
from edgenode.cluster import Cluster
from edgenode.config import Config
from edgenode.isolates import Workers
from edgenode.metrics import Metrics
from edgenode.sandboxes import Sandboxes
from edgenode.state import State
from edgenode.store import Database

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
        self.metrics = Metrics()
        self.metrics.info.labels(self.id, self.version).set(1)
        self.db = self.database("node.db", AUTH_MIGRATIONS)
        self.auth = Auth(self.db, self.admin_token)
        self.capabilities: list[Capability] = []
        # Capabilities are wired here, in start order; each also registers its routes in
        # edgenode.api.app and its commands in edgenode.cli.
        self.cluster = self.add(Cluster(self))
        self.state = self.add(State(self))
        self.workers = self.add(Workers(self))
        self.artifacts = self.add(Artifacts(self))
        self.sandboxes = self.add(Sandboxes(self))
        self.agents = self.add(Agents(self))

    def database(self, name: str, migrations: Any = ()) -> Database:
        """A database file in the data directory, with the node's store settings."""
        settings = self.config.store
        return Database(
            self.data_dir / name,
            migrations,
            readers=settings.readers,
            synchronous=settings.synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )

    def add(self, capability: Capability) -> Any:
        """Register a capability to be started and stopped with the node."""
        self.capabilities.append(capability)
        return capability

    async def start(self) -> None:
        """Open the node database and start every capability."""
        self.db.open()
        for capability in self.capabilities:
            await capability.start()
        self.started_at = time.time()
        log.info("node started", extra={"node": self.id, "version": self.version, "data": str(self.data_dir)})

    async def stop(self) -> None:
        """Stop capabilities in reverse order, then close the node database."""
        for capability in reversed(self.capabilities):
            try:
                await capability.stop()
            except Exception:
                log.exception("capability failed to stop", extra={"capability": capability.name})
        self.db.close()
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
        }
