"""Deployments: every deploy is a new version of a tenant's worker; one version is current.

Stored in ``workers.db``. A Python version keeps its source (so a lost build
cache can be rebuilt); a component version refers to its content-addressed file.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from edgenode.errors import TenantQuotaExceeded, ValidationFailed, WorkerNotFound
from edgenode.isolates.cache import owned_key
from edgenode.store import Database, Migration
from edgenode.threads import STORE

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid worker name, else raise ValidationFailed."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValidationFailed("a worker name is 1-63 lower-case letters, digits and dashes", field="name")
    return name


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE workers (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            current INTEGER NOT NULL,
            latest INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, name)
        )"""
    )
    conn.execute(
        """CREATE TABLE versions (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('python', 'component', 'wasi')),
            hash TEXT NOT NULL,
            source TEXT,
            settings TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (tenant, name, version)
        )"""
    )
    conn.execute(
        """CREATE TABLE usage (
            tenant TEXT NOT NULL,
            worker TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            cpu_ms REAL NOT NULL DEFAULT 0,
            wall_ms REAL NOT NULL DEFAULT 0,
            subrequests INTEGER NOT NULL DEFAULT 0,
            max_memory_limit_mb INTEGER NOT NULL DEFAULT 0,
            last_at REAL,
            PRIMARY KEY (tenant, worker)
        )"""
    )


MIGRATIONS = [Migration("workers-0001-deployments-and-usage", _create)]


@dataclass(frozen=True)
class Version:
    """One deployed version of a worker."""

    tenant: str
    name: str
    version: int
    kind: str
    hash: str
    settings: dict[str, Any]
    created_at: float
    source: dict[str, str] | None = field(default=None, repr=False)

    def describe(self, *, current: bool = False) -> dict[str, Any]:
        """Plain data for replies; secrets' values are never shown."""
        s = self.settings
        return {
            "version": self.version,
            "kind": self.kind,
            "hash": self.hash,
            "limits": s.get("limits", {}),
            "allowed_hosts": s.get("allowed_hosts", []),
            "env": sorted(s.get("env", {})),
            "public": bool(s.get("public", False)),
            "created_at": self.created_at,
            "current": current,
        }


def _version(row: sqlite3.Row) -> Version:
    return Version(row["tenant"], row["name"], row["version"], row["kind"], row["hash"],
                   json.loads(row["settings"]), row["created_at"],
                   json.loads(row["source"]) if row["source"] else None)


class Registry:
    """Versions of every tenant's workers, and their usage totals."""

    def __init__(self, db: Database, *, max_per_tenant: int = 0) -> None:
        self.db = db
        self.max_per_tenant = max_per_tenant

    async def add(self, tenant: str, name: str, *, kind: str, hash: str, settings: dict[str, Any],
                  source: dict[str, str] | None) -> Version:
        """Store a new version and make it current."""
        now = time.time()

        def insert(c: sqlite3.Connection) -> Version:
            row = c.execute("SELECT latest FROM workers WHERE tenant = ? AND name = ?", (tenant, name)).fetchone()
            cap = self.max_per_tenant
            if row is None and cap > 0 and \
                    c.execute("SELECT COUNT(*) FROM workers WHERE tenant = ?", (tenant,)).fetchone()[0] >= cap:
                raise TenantQuotaExceeded(f"this tenant has {cap} workers, as many as the node allows one tenant; "
                                          "delete one first", limit=cap, retry_after=60)
            version = (row["latest"] if row else 0) + 1
            c.execute(
                "INSERT INTO versions (tenant, name, version, kind, hash, source, settings, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, name, version, kind, hash, json.dumps(source) if source is not None else None,
                 json.dumps(settings), now),
            )
            c.execute(
                "INSERT INTO workers (tenant, name, current, latest, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, name) DO UPDATE SET current = excluded.current, latest = excluded.latest,"
                " updated_at = excluded.updated_at",
                (tenant, name, version, version, now, now),
            )
            return Version(tenant, name, version, kind, hash, settings, now, source)

        return await self.db.write(insert)

    async def install(self, version: Version) -> None:
        """Store ``version`` under its own number (a deploy made elsewhere in the fleet) and make it current."""
        v = version

        def put(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO versions (tenant, name, version, kind, hash, source, settings, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (v.tenant, v.name, v.version, v.kind, v.hash, json.dumps(v.source) if v.source is not None else None,
                 json.dumps(v.settings), v.created_at),
            )
            c.execute(
                "INSERT INTO workers (tenant, name, current, latest, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, name) DO UPDATE SET current = excluded.current,"
                " latest = MAX(latest, excluded.latest), updated_at = excluded.updated_at",
                (v.tenant, v.name, v.version, v.version, v.created_at, time.time()),
            )

        await self.db.write(put)

    async def names(self) -> list[tuple[str, str]]:
        """(tenant, name) of every worker."""
        return await self.db.read(lambda c: [(r[0], r[1]) for r in c.execute("SELECT tenant, name FROM workers")])

    def current_sync(self, tenant: str, name: str) -> Version:
        """The current version of a worker; WorkerNotFound if there is none."""
        row = self.db.read_sync(
            lambda c: c.execute(
                "SELECT v.* FROM workers w JOIN versions v ON v.tenant = w.tenant AND v.name = w.name"
                " AND v.version = w.current WHERE w.tenant = ? AND w.name = ?",
                (tenant, name),
            ).fetchone()
        )
        if row is None:
            raise WorkerNotFound(f"no worker named {name!r}")
        return _version(row)

    async def current(self, tenant: str, name: str) -> Version:
        """Awaitable :meth:`current_sync`."""
        return await STORE.run(self.current_sync, tenant, name)

    async def versions(self, tenant: str, name: str) -> list[Version]:
        """Every version of a worker, newest first."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM versions WHERE tenant = ? AND name = ? ORDER BY version DESC", (tenant, name)
            ).fetchall()
        )
        return [_version(r) for r in rows]

    async def list_workers(self, tenant: str) -> list[dict[str, Any]]:
        """A tenant's workers with their current version."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT w.name, w.current, w.latest, w.created_at, w.updated_at, v.kind, v.hash, v.settings"
                " FROM workers w JOIN versions v ON v.tenant = w.tenant AND v.name = w.name"
                " AND v.version = w.current WHERE w.tenant = ? ORDER BY w.name",
                (tenant,),
            ).fetchall()
        )
        return [
            {"name": r["name"], "version": r["current"], "latest": r["latest"], "kind": r["kind"],
             "hash": r["hash"], "public": bool(json.loads(r["settings"]).get("public", False)),
             "created_at": r["created_at"], "updated_at": r["updated_at"]}
            for r in rows
        ]

    async def delete(self, tenant: str, name: str) -> None:
        """Remove a worker and all its versions (its kv and sql namespaces are left alone)."""

        def delete(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM versions WHERE tenant = ? AND name = ?", (tenant, name))
            return c.execute("DELETE FROM workers WHERE tenant = ? AND name = ?", (tenant, name)).rowcount

        if await self.db.write(delete) == 0:
            raise WorkerNotFound(f"no worker named {name!r}")

    async def rollback(self, tenant: str, name: str, version: int | None) -> Version:
        """Make ``version`` (default: the one before the current) current again."""

        def roll(c: sqlite3.Connection) -> Version:
            row = c.execute("SELECT current FROM workers WHERE tenant = ? AND name = ?", (tenant, name)).fetchone()
            if row is None:
                raise WorkerNotFound(f"no worker named {name!r}")
            if version is None:
                target = c.execute(
                    "SELECT * FROM versions WHERE tenant = ? AND name = ? AND version < ?"
                    " ORDER BY version DESC LIMIT 1", (tenant, name, row["current"]),
                ).fetchone()
                if target is None:
                    raise WorkerNotFound(f"worker {name!r} has no version before {row['current']}")
            else:
                target = c.execute(
                    "SELECT * FROM versions WHERE tenant = ? AND name = ? AND version = ?", (tenant, name, version)
                ).fetchone()
                if target is None:
                    raise WorkerNotFound(f"worker {name!r} has no version {version}")
            c.execute("UPDATE workers SET current = ?, updated_at = ? WHERE tenant = ? AND name = ?",
                      (target["version"], time.time(), tenant, name))
            return _version(target)

        return await self.db.write(roll)

    async def all_hashes(self) -> set[str]:
        """The content hash of every version of every worker, and its tenant's compiled-code key (what the
        cache must keep)."""
        rows = await self.db.read(lambda c: c.execute("SELECT DISTINCT tenant, hash FROM versions").fetchall())
        return {r[1] for r in rows} | {owned_key(r[0], r[1]) for r in rows}

    # -- usage ---------------------------------------------------------------

    async def add_usage(self, totals: dict[tuple[str, str], dict[str, float]]) -> None:
        """Fold a batch of per-worker totals into the usage table."""
        if not totals:
            return

        def upsert(c: sqlite3.Connection) -> None:
            for (tenant, worker), t in totals.items():
                c.execute(
                    "INSERT INTO usage (tenant, worker, requests, errors, cpu_ms, wall_ms, subrequests,"
                    " max_memory_limit_mb, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, worker) DO UPDATE SET requests = requests + excluded.requests,"
                    " errors = errors + excluded.errors, cpu_ms = cpu_ms + excluded.cpu_ms,"
                    " wall_ms = wall_ms + excluded.wall_ms, subrequests = subrequests + excluded.subrequests,"
                    " max_memory_limit_mb = MAX(max_memory_limit_mb, excluded.max_memory_limit_mb),"
                    " last_at = excluded.last_at",
                    (tenant, worker, int(t["requests"]), int(t["errors"]), t["cpu_ms"], t["wall_ms"],
                     int(t["subrequests"]), int(t["memory_limit_mb"]), t["last_at"]),
                )

        await self.db.write(upsert)

    async def usage(self, tenant: str | None) -> list[dict[str, Any]]:
        """Usage totals per worker, of one tenant or all."""
        query = "SELECT * FROM usage"
        params: tuple[Any, ...] = ()
        if tenant is not None:
            query += " WHERE tenant = ?"
            params = (tenant,)
        rows = await self.db.read(lambda c: c.execute(query + " ORDER BY tenant, worker", params).fetchall())
        return [dict(r) for r in rows]
