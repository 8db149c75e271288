"""The store's health: stuck or stopped writers, disk faults seen, damaged databases, free space.

One :class:`StoreMonitor` per node tracks every open database (the node's own and
each open namespace). ``/healthz``, ``/v1/status`` and the metrics read it on
demand; a watchdog task (:meth:`StoreMonitor.watch`) logs a writer that becomes
stuck, and its recovery, once each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgenode.errors import DatabaseDamaged, EdgenodeError, InsufficientStorage, StorageIOFailed
from edgenode.store.faults import free_bytes, insufficient

if TYPE_CHECKING:
    from edgenode.store.db import Database

log = logging.getLogger(__name__)


def _kind(error: EdgenodeError) -> str:
    if isinstance(error, InsufficientStorage):
        return "full"
    if isinstance(error, StorageIOFailed):
        return "io"
    if isinstance(error, DatabaseDamaged):
        return "damaged"
    return "other"


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    if "/" in str(entry["database"]):
        return {**entry, "database": "a namespace database"}
    return entry


class StoreMonitor:
    """Every open database of a node, and the disk under its data directory."""

    def __init__(self, data_dir: Path, *, stuck_after_s: float = 60.0, min_free_mb: int = 200,
                 min_free_percent: float = 2.0, registry: CollectorRegistry | None = None) -> None:
        self.data_dir = data_dir
        self.stuck_after_s = stuck_after_s
        self.min_free_mb = min_free_mb
        self.min_free_percent = min_free_percent
        self._dbs: weakref.WeakSet[Database] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        #: The state of continuous replication (store.replica_url), when the node runs it.
        self.replication: Callable[[], dict[str, Any]] | None = None
        self.faults = Counter("edgenode_store_faults", "Disk faults met by reads and writes, by kind "
                              "(full, io, damaged).", ["kind"], registry=registry)
        for kind in ("full", "io", "damaged"):
            self.faults.labels(kind)
        self.m_stuck = Gauge("edgenode_store_writers_stuck", "Databases whose writer is stopped or has run one "
                             "write longer than store.stuck_write_s.", registry=registry)
        self.m_stuck.set_function(lambda: len(self.stuck()))
        self.m_free = Gauge("edgenode_store_free_bytes", "Free bytes on the disk holding the data directory.",
                            registry=registry)
        self.m_free.set_function(lambda: free_bytes(self.data_dir))
        self.m_low = Gauge("edgenode_store_low_space", "1 while free space is below the reserve "
                           "(large writes are refused).", registry=registry)
        self.m_low.set_function(lambda: 1 if self.low_space() else 0)

    # -- databases -------------------------------------------------------------

    def track(self, db: Database) -> None:
        """Watch an open database."""
        with self._lock:
            self._dbs.add(db)

    def untrack(self, db: Database) -> None:
        """Stop watching a closed database."""
        with self._lock:
            self._dbs.discard(db)

    def count_fault(self, error: EdgenodeError) -> None:
        """Count one disk fault a read or write met."""
        self.faults.labels(_kind(error)).inc()

    def _open(self) -> list[Database]:
        with self._lock:
            return list(self._dbs)

    def _name(self, db: Database) -> str:
        try:
            return str(db.path.relative_to(self.data_dir))
        except ValueError:
            return db.path.name

    def stuck(self) -> list[dict[str, Any]]:
        """Databases that cannot take writes now: their writer stopped, or one write runs too long."""
        out = []
        for db in self._open():
            problem = db.writer_problem(self.stuck_after_s)
            if problem is not None:
                out.append({"database": self._name(db), "problem": problem, "queued": db.queued_writes()})
        return sorted(out, key=lambda d: str(d["database"]))

    def damaged(self) -> list[dict[str, Any]]:
        """Open databases that refuse writes because their file is damaged."""
        out = []
        for db in self._open():
            refusal = db.refusal
            if isinstance(refusal, DatabaseDamaged):
                out.append({"database": self._name(db), "reason": refusal.reason})
        return sorted(out, key=lambda d: str(d["database"]))

    # -- space -----------------------------------------------------------------

    def reserve_bytes(self) -> int:
        """Free space kept back from large writes: the smaller of min_free_mb and min_free_percent of the disk."""
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return self.min_free_mb << 20
        total = st.f_blocks * st.f_frsize
        return int(min(self.min_free_mb << 20, total * self.min_free_percent / 100))

    def low_space(self) -> bool:
        """Whether free space is below the reserve."""
        return free_bytes(self.data_dir) < self.reserve_bytes()

    def require_space(self, purpose: str) -> None:
        """Refuse a large write (deploy, push, new sandbox) early with 507 while space is below the reserve."""
        free = free_bytes(self.data_dir)
        reserve = self.reserve_bytes()
        if free < reserve:
            error = insufficient(self.data_dir, purpose, reserve_bytes=reserve)
            error.message = (f"the disk holding the {purpose} is below its reserve ({free >> 20} MiB free, "
                             f"{reserve >> 20} MiB kept for small writes); large writes are refused until "
                             "space is freed")
            self.count_fault(error)
            raise error

    def space(self) -> dict[str, Any]:
        """Free space, reserve and whether large writes are refused, for status and health."""
        free = free_bytes(self.data_dir)
        reserve = self.reserve_bytes()
        return {"free_bytes": free, "reserve_bytes": reserve, "low": free < reserve}

    # -- reporting -------------------------------------------------------------

    def health(self, *, public: bool = False) -> dict[str, Any]:
        """The store's part of ``/healthz`` and ``/v1/status``: ``ok`` is False when a writer is stuck or stopped.

        ``public`` leaves out which namespaces (tenant data) are concerned; only the node's own
        databases are named.
        """
        stuck, damaged = self.stuck(), self.damaged()
        replication = self.replication() if self.replication is not None else None
        if public:
            stuck = [_public(d) for d in stuck]
            damaged = [_public(d) for d in damaged]
            if replication is not None:  # not where the replica is
                replication = {k: v for k, v in replication.items() if k != "replica"}
        return {"ok": not stuck, "stuck_writers": stuck, "damaged": damaged, "space": self.space(),
                "replication": replication}

    def sweep(self) -> list[dict[str, Any]]:
        """Log writers that became stuck, and those that recovered, once each; returns the stuck ones."""
        stuck = self.stuck()
        now = {str(d["database"]) for d in stuck}
        for entry in stuck:
            if entry["database"] not in self._reported:
                log.error("database writer is stuck", extra=entry)
        for name in self._reported - now:
            log.info("database writer recovered", extra={"database": name})
        self._reported = now
        return stuck

    async def watch(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled (the node runs it as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sweep()
            except Exception:
                log.exception("store watchdog round failed")
