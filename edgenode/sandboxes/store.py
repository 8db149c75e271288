"""Sandbox records in SQLite: who owns a sandbox, its policy, limits and host uid."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from edgenode.errors import Conflict, SandboxNotFound
from edgenode.store import Database, Migration


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            name TEXT,
            created_at REAL NOT NULL,
            last_used_at REAL NOT NULL,
            network TEXT NOT NULL,
            limits TEXT NOT NULL,
            uid_slot INTEGER NOT NULL UNIQUE
        )"""
    )
    conn.execute("CREATE UNIQUE INDEX sandboxes_tenant_name ON sandboxes(tenant, name) WHERE name IS NOT NULL")
    conn.execute("CREATE INDEX sandboxes_tenant ON sandboxes(tenant, created_at)")


def _add_layers(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE sandboxes ADD COLUMN layers TEXT NOT NULL DEFAULT '[]'")


def _add_image(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE sandboxes ADD COLUMN image TEXT")


def _add_ports(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE sandbox_ports (
            sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
            port INTEGER NOT NULL,
            public INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (sandbox_id, port)
        )"""
    )


def _add_checkpoints(conn: sqlite3.Connection) -> None:
    # The latest checkpoint of each sandbox of the fleet (a replicated control record), and what this
    # node last uploaded of its own sandboxes' files (so unchanged files are not read again).
    conn.execute(
        """CREATE TABLE checkpoints (
            tenant TEXT NOT NULL,
            sandbox_id TEXT NOT NULL,
            name TEXT,
            manifest TEXT NOT NULL,
            record TEXT NOT NULL,
            checkpointed_at REAL NOT NULL,
            PRIMARY KEY (tenant, sandbox_id)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX checkpoints_name ON checkpoints(tenant, name)")
    conn.execute(
        """CREATE TABLE checkpoint_index (
            sandbox_id TEXT NOT NULL,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            ino INTEGER NOT NULL,
            digest TEXT NOT NULL,
            blobs TEXT NOT NULL,
            PRIMARY KEY (sandbox_id, path)
        ) WITHOUT ROWID"""
    )


MIGRATIONS = [Migration("sandboxes-0001-records", _create_tables), Migration("sandboxes-0002-layers", _add_layers),
              Migration("sandboxes-0003-ports", _add_ports), Migration("sandboxes-0004-images", _add_image),
              Migration("sandboxes-0005-checkpoints", _add_checkpoints)]


@dataclass
class SandboxRecord:
    """One sandbox as stored."""

    id: str
    tenant: str
    name: str | None
    created_at: float
    last_used_at: float
    network: Any
    limits: dict[str, Any]
    uid_slot: int
    #: The frozen layers (top first) the workspace is stacked on; empty for a plain directory.
    layers: list[str] = field(default_factory=list)
    #: The image whose root file system the sandbox runs on; None for the host's system dirs.
    image: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> SandboxRecord:
        """A record from a ``sandboxes`` row."""
        return cls(row["id"], row["tenant"], row["name"], row["created_at"], row["last_used_at"],
                   json.loads(row["network"]), json.loads(row["limits"]), row["uid_slot"], json.loads(row["layers"]),
                   row["image"])


def _free_slot(conn: sqlite3.Connection, reserved: set[int] | frozenset[int]) -> int:
    taken = {r[0] for r in conn.execute("SELECT uid_slot FROM sandboxes")} | set(reserved)
    slot = 0
    while slot in taken:
        slot += 1
    return slot


class SandboxStore:
    """CRUD over the ``sandboxes`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, *, id: str, tenant: str, name: str | None, network: Any,
                     limits: dict[str, Any], uid_slot: int | None = None,
                     reserved: set[int] | frozenset[int] = frozenset(),
                     layers: list[str] | None = None, image: str | None = None) -> SandboxRecord:
        """Store a new sandbox with ``uid_slot``, else the lowest uid slot neither taken nor ``reserved``;
        409 if the name is taken."""
        now = time.time()

        def insert(conn: sqlite3.Connection) -> SandboxRecord:
            if name is not None and conn.execute(
                "SELECT 1 FROM sandboxes WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone():
                raise Conflict(f"a sandbox named {name!r} already exists")
            slot = uid_slot if uid_slot is not None else _free_slot(conn, reserved)
            conn.execute(
                "INSERT INTO sandboxes (id, tenant, name, created_at, last_used_at, network, limits, uid_slot,"
                " layers, image) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id, tenant, name, now, now, json.dumps(network), json.dumps(limits), slot, json.dumps(layers or []),
                 image),
            )
            return SandboxRecord(id, tenant, name, now, now, network, limits, slot, list(layers or []), image)

        return await self.db.write(insert)

    async def reserve_slot(self, reserved: set[int]) -> int:
        """The lowest uid slot neither taken nor in ``reserved``, added to ``reserved`` (in write order,
        so an insert running at the same time cannot pick it)."""

        def reserve(conn: sqlite3.Connection) -> int:
            slot = _free_slot(conn, reserved)
            reserved.add(slot)
            return slot

        return await self.db.write(reserve)

    async def get(self, tenant: str, ref: str) -> SandboxRecord:
        """The tenant's sandbox with id (or name) ``ref``; 404 otherwise."""

        def read(conn: sqlite3.Connection) -> SandboxRecord | None:
            row = conn.execute(
                "SELECT * FROM sandboxes WHERE tenant = ? AND (id = ? OR name = ?) ORDER BY id = ? DESC LIMIT 1",
                (tenant, ref, ref, ref),
            ).fetchone()
            return SandboxRecord.from_row(row) if row else None

        record = await self.db.read(read)
        if record is None:
            raise SandboxNotFound(f"no sandbox {ref!r}")
        return record

    async def count_for(self, tenant: str) -> int:
        """How many sandboxes the tenant has."""
        return int(await self.db.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM sandboxes WHERE tenant = ?", (tenant,)).fetchone()[0]))

    async def list_for(self, tenant: str) -> list[SandboxRecord]:
        """The tenant's sandboxes, oldest first."""
        return await self.db.read(lambda c: [
            SandboxRecord.from_row(r)
            for r in c.execute("SELECT * FROM sandboxes WHERE tenant = ? ORDER BY created_at, id", (tenant,))
        ])

    def all_sync(self) -> list[SandboxRecord]:
        """Every sandbox of every tenant."""
        return self.db.read_sync(lambda c: [SandboxRecord.from_row(r) for r in c.execute("SELECT * FROM sandboxes")])

    async def touch(self, sandbox_id: str, when: float) -> None:
        """Record use, for the idle reaper and listings."""
        await self.db.write(lambda c: c.execute(
            "UPDATE sandboxes SET last_used_at = ? WHERE id = ?", (when, sandbox_id)))

    async def set_layers(self, sandbox_id: str, layers: list[str]) -> None:
        """Record the layers a workspace is now stacked on."""
        await self.db.write(lambda c: c.execute(
            "UPDATE sandboxes SET layers = ? WHERE id = ?", (json.dumps(layers), sandbox_id)))

    async def delete(self, sandbox_id: str) -> None:
        """Forget a sandbox (and the ports it exposed)."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sandbox_ports WHERE sandbox_id = ?", (sandbox_id,))
            conn.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

        await self.db.write(delete)

    async def expose(self, sandbox_id: str, port: int, public: bool) -> None:
        """Record that ``port`` of the sandbox may be reached through the node."""
        await self.db.write(lambda c: c.execute(
            "INSERT INTO sandbox_ports (sandbox_id, port, public, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (sandbox_id, port) DO UPDATE SET public = excluded.public",
            (sandbox_id, port, int(public), time.time())))

    async def unexpose(self, sandbox_id: str, port: int) -> bool:
        """Forget an exposed port; whether it was exposed."""
        return bool(await self.db.write(lambda c: c.execute(
            "DELETE FROM sandbox_ports WHERE sandbox_id = ? AND port = ?", (sandbox_id, port)).rowcount))

    async def ports(self, sandbox_id: str) -> dict[int, bool]:
        """The sandbox's exposed ports and whether each is public."""
        return await self.db.read(lambda c: {int(r[0]): bool(r[1]) for r in c.execute(
            "SELECT port, public FROM sandbox_ports WHERE sandbox_id = ? ORDER BY port", (sandbox_id,))})

    async def image_in_use(self, image: str) -> bool:
        """Whether any sandbox runs on ``image``."""
        return bool(await self.db.read(lambda c: c.execute("SELECT 1 FROM sandboxes WHERE image = ? LIMIT 1",
                                                           (image,)).fetchone()))

    async def by_id(self, sandbox_id: str) -> SandboxRecord:
        """Any tenant's sandbox by id (for public ports, whose URL names no tenant); 404 otherwise."""
        row = await self.db.read(lambda c: c.execute("SELECT * FROM sandboxes WHERE id = ?",
                                                      (sandbox_id,)).fetchone())
        if row is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return SandboxRecord.from_row(row)


__all__ = ["MIGRATIONS", "SandboxRecord", "SandboxStore"]
