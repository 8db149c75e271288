"""The state capability: per-tenant, per-namespace key-value and SQL, replicated across the fleet.

Workers and agents call the synchronous methods from their isolate threads; the
HTTP layer awaits the ``a``-prefixed twins. Both run the same code on the
namespace's single writer thread, so there is one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Gauge

from edgenode.auth import validate_tenant
from edgenode.cluster.hlc import Hlc
from edgenode.cluster.ranges import RangeSet
from edgenode.errors import DatabaseDamaged, DatabaseRefused, MalformedChanges, TenantQuotaExceeded, ValidationFailed
from edgenode.state.blocked import BlockedNamespaces
from edgenode.state.health import NamespaceHealth
from edgenode.state.merge import check_changes
from edgenode.state.names import namespace_path, validate_key, validate_namespace
from edgenode.state.payload import Changes
from edgenode.state.pool import NamespacePool
from edgenode.state.replica import Commit, Limits, NamespaceDatabase, Replica, SqlResult
from edgenode.store.db import run_blocking

if TYPE_CHECKING:
    from edgenode.node import Node
    from edgenode.state.replication import Replicator

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_LIST = 10_000
#: Statements in one SQL batch.
MAX_BATCH = 100


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise ValidationFailed("a value must be bytes", field="value")


class State:
    """Key-value and SQL namespaces of every tenant on this node, and their replication bookkeeping."""

    name = "state"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.config.state
        self.root = node.data_dir / "state"
        self.origin = node.id
        self.hlc = Hlc(offset_ms=node.config.cluster.clock_offset_ms,
                       max_offset_ms=node.config.cluster.max_clock_offset_ms)
        self.limits = Limits(
            max_value_bytes=self.settings.max_value_bytes,
            sql_time_limit_ms=self.settings.sql_time_limit_ms,
            sql_max_result_bytes=self.settings.sql_max_result_bytes,
        )
        self.pool = NamespacePool(self._open, self.path, capacity=self.settings.max_open_namespaces)
        self.health = NamespaceHealth()
        #: What each namespace has seen, per origin; mirrors the committed ``_crdt_book`` tables.
        self._books: dict[tuple[str, str], dict[str, RangeSet]] = {}
        self._books_lock = threading.Lock()
        #: Called after every local commit that changed rows (the replicator pushes it).
        self.on_commit: Callable[[str, str, int], None] = lambda tenant, namespace, version: None
        self.replicator: Replicator | None = None
        self._checker: asyncio.Task[None] | None = None
        self._stop_checks = threading.Event()
        registry = node.metrics.registry
        #: Namespaces a peer's changes could not be merged into (each blocks only itself).
        self.blocked = BlockedNamespaces(registry)
        self._m_writes = Counter("edgenode_state_writes", "Local writes that changed rows.", ["kind"],
                                 registry=registry)
        self._m_open = Gauge("edgenode_state_open_namespaces", "Namespace databases open now.",
                             registry=registry)
        self._m_open.set_function(self.pool.open_count)

    # -- lifecycle -------------------------------------------------------------

    def path(self, tenant: str, namespace: str) -> Path:
        """The SQLite file of a namespace."""
        return namespace_path(self.root, tenant, namespace)

    def _open(self, tenant: str, namespace: str) -> Replica:
        store = self.node.config.store
        path = self.path(tenant, namespace)

        def database() -> NamespaceDatabase:
            db = NamespaceDatabase(path, readers=self.settings.namespace_readers, synchronous=store.synchronous,
                                   busy_timeout_ms=store.busy_timeout_ms, write_timeout_s=store.write_timeout_s,
                                   purpose=f"namespace {namespace}", monitor=self.node.store,
                                   max_length=self.settings.sql_max_length_bytes,
                                   wal_autocheckpoint=self.node.wal_autocheckpoint)
            db.on_damaged = lambda error: self._damaged(tenant, namespace, path, error)
            return db

        db = database()
        damage = self.health.check(tenant, namespace, path)
        if damage is not None:
            db.refuse_writes(damage)
        try:
            db.open()
        except DatabaseRefused as exc:
            # Opening runs the namespace's migrations: a file that turns out unreadable only now is
            # marked like one that failed its check, and opened for (what reads still can) reading.
            db = database()
            db.refuse_writes(self.health.mark(tenant, namespace, path, exc.reason))
            db.open()
        return Replica(db, tenant, namespace, self.origin, self.hlc, self.limits)

    def _damaged(self, tenant: str, namespace: str, path: Path, error: DatabaseDamaged) -> None:
        """SQLite found a namespace damaged while in use: mark it like one that failed its check."""
        self.health.mark(tenant, namespace, path, error.reason)

    async def start(self) -> None:
        """Load every namespace's bookkeeping, seed the clock, start replication."""
        await run_blocking(self._load_books)
        from edgenode.state.replication import Replicator

        self.replicator = Replicator(self, self.node.cluster)
        await self.replicator.start()
        self._checker = asyncio.create_task(run_blocking(self._check_all), name="namespace-check")

    def _check_all(self) -> None:
        """Check every namespace file in full once after start, so damage is reported now, not at first use."""
        if not self.root.exists():
            return
        for tenant_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(tenant_dir.glob("*.db")):
                if self._stop_checks.is_set():
                    return
                self.health.check(tenant_dir.name, path.stem, path)

    async def stop(self) -> None:
        """Stop replication and close every namespace database."""
        self._stop_checks.set()
        if self._checker is not None:
            with contextlib.suppress(Exception):
                await self._checker  # at most the one file being checked
        if self.replicator is not None:
            await self.replicator.stop()
        await run_blocking(self.pool.close_all)

    async def purge_tenant(self, tenant: str) -> None:
        """Remove every namespace of ``tenant`` on this node (files, open databases, bookkeeping)."""
        validate_tenant(tenant)

        def purge() -> None:
            self.pool.close_tenant(tenant)
            with self._books_lock:
                for key in [k for k in self._books if k[0] == tenant]:
                    del self._books[key]
            self.blocked.forget_tenant(tenant)
            shutil.rmtree(self.root / tenant, ignore_errors=True)

        await run_blocking(purge)
        if self.replicator is not None:
            self.replicator.forget_tenant(tenant)  # its namespaces start again at version 1

    def _load_books(self) -> None:
        # Reading the small book table of each file is cheap, even for thousands of namespaces;
        # the newest HLC seen seeds the clock so a restart never stamps below its own past.
        if not self.root.exists():
            return
        newest = 0
        for tenant_dir in sorted(self.root.iterdir()):
            for path in sorted(tenant_dir.glob("*.db")):
                # Before any connection opens the file (opening would rebuild a lost log's index).
                if self.health.check(tenant_dir.name, path.stem, path, full=False) is not None:
                    continue
                try:
                    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                    try:
                        book: dict[str, RangeSet] = {}
                        for origin, lo, hi in conn.execute("SELECT origin, lo, hi FROM _crdt_book"):
                            book.setdefault(origin, RangeSet()).add(lo, hi)
                        newest = max(newest, conn.execute("SELECT coalesce(max(hlc), 0) FROM _crdt_clock")
                                     .fetchone()[0])
                    finally:
                        conn.close()
                except sqlite3.Error as exc:
                    log.warning("cannot read namespace bookkeeping", extra={"path": str(path), "error": str(exc)})
                    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                        self.health.mark(tenant_dir.name, path.stem, path, str(exc))
                    continue
                self._books[(tenant_dir.name, path.stem)] = book
        self.hlc.observe(newest)

    # -- bookkeeping -------------------------------------------------------------

    def books(self) -> dict[tuple[str, str], dict[str, RangeSet]]:
        """A copy of every namespace's seen versions."""
        with self._books_lock:
            return {k: {o: RangeSet(rs) for o, rs in v.items()} for k, v in self._books.items()}

    def book(self, tenant: str, namespace: str) -> dict[str, RangeSet]:
        """A copy of one namespace's seen versions."""
        with self._books_lock:
            return {o: RangeSet(rs) for o, rs in self._books.get((tenant, namespace), {}).items()}

    def merge_seen(self, tenant: str, namespace: str, seen: dict[str, RangeSet]) -> None:
        """Record versions now committed in a namespace."""
        with self._books_lock:
            book = self._books.setdefault((tenant, namespace), {})
            for origin, ranges in seen.items():
                book.setdefault(origin, RangeSet()).update(ranges)

    def progress(self) -> dict[str, int]:
        """Versions seen per origin, summed over namespaces."""
        totals: dict[str, int] = {}
        with self._books_lock:
            for book in self._books.values():
                for origin, ranges in book.items():
                    totals[origin] = totals.get(origin, 0) + ranges.count()
        return totals

    def _committed(self, tenant: str, namespace: str, commit: Commit, kind: str) -> None:
        if commit.version is None:
            return
        self._m_writes.labels(kind).inc()
        self.merge_seen(tenant, namespace, {self.origin: RangeSet([(commit.version, commit.version)])})
        self.on_commit(tenant, namespace, commit.version)

    # -- running work on a namespace -------------------------------------------------

    def _check_new_namespace(self, tenant: str, namespace: str) -> None:
        """Refuse (429) a namespace that would be one more than the tenant may create; blocking (file checks)."""
        cap = self.settings.max_namespaces_per_tenant
        if cap <= 0 or self.path(tenant, namespace).exists():
            return
        tenant_dir = self.root / tenant
        have = sum(1 for _ in tenant_dir.glob("*.db")) if tenant_dir.is_dir() else 0
        if have >= cap:
            raise TenantQuotaExceeded(f"this tenant has {cap} namespaces, as many as the node allows one tenant "
                                      "(state.max_namespaces_per_tenant)", limit=cap, retry_after=60)

    def _with(self, tenant: str, namespace: str, fn: Callable[[Replica], T], *, create: bool = True,
              default: Any = None) -> T:
        validate_namespace(namespace)
        if create:
            self._check_new_namespace(tenant, namespace)
        with self.pool.lease(tenant, namespace, create=create) as replica:
            if replica is None:
                return default  # type: ignore[no-any-return]
            return fn(replica)

    async def _awith(self, tenant: str, namespace: str, fn: Callable[[Replica], Awaitable[T]], *,
                     create: bool = True, default: Any = None) -> T:
        validate_namespace(namespace)
        def acquire() -> Replica | None:
            if create:
                self._check_new_namespace(tenant, namespace)
            return self.pool.acquire(tenant, namespace, create=create)

        replica = self.pool.acquire_open(tenant, namespace) or await run_blocking(acquire)
        if replica is None:
            return default  # type: ignore[no-any-return]
        try:
            return await fn(replica)
        finally:
            self.pool.release(replica)

    # -- key-value (the interface workers and agents use) ------------------------------

    def kv_get(self, tenant: str, namespace: str, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        found = self.kv_get_versioned(tenant, namespace, key)
        return None if found is None else found[0]

    def kv_get_versioned(self, tenant: str, namespace: str, key: str) -> tuple[bytes, str] | None:
        """The value of ``key`` and its version (for ETag / compare-and-set), or None."""
        validate_key(key, self.settings.max_key_bytes)
        return self._with(tenant, namespace, lambda r: r.kv_get(key), create=False)

    def kv_put(self, tenant: str, namespace: str, key: str, value: bytes, *, if_match: str | None = None,
               if_none_match: str | None = None) -> str:
        """Set ``key`` to ``value``; returns the new version. ``if_match`` makes it compare-and-set."""
        validate_key(key, self.settings.max_key_bytes)
        data = _as_bytes(value)

        def put(r: Replica) -> str:
            version, commit = r.kv_put(key, data, if_match=if_match, if_none_match=if_none_match)
            self._committed(tenant, namespace, commit, "kv")
            return version
        return self._with(tenant, namespace, put)

    def kv_delete(self, tenant: str, namespace: str, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key`` (replicated as a tombstone)."""
        validate_key(key, self.settings.max_key_bytes)

        def delete(r: Replica) -> None:
            self._committed(tenant, namespace, r.kv_delete(key, if_match=if_match), "kv")
        self._with(tenant, namespace, delete, create=if_match is not None)

    def kv_list(self, tenant: str, namespace: str, prefix: str = "", limit: int = 1000, *,
                after: str | None = None) -> list[str]:
        """Keys starting with ``prefix`` in order (after ``after``), at most ``limit``."""
        limit = self._limit(limit)
        return self._with(tenant, namespace, lambda r: r.kv_list(prefix, after=after, limit=limit),
                          create=False, default=[])

    def sql(self, tenant: str, namespace: str, query: str, params: list[Any] | dict[str, Any] | None = None
            ) -> dict[str, Any]:
        """Run one parameterized statement: ``{"columns": [...], "rows": [[...], ...], ...}``."""
        return self.sql_result(tenant, namespace, query, params).as_dict()

    def sql_result(self, tenant: str, namespace: str, query: str, params: Any = None) -> SqlResult:
        """Like :meth:`sql`, with the commit it made."""
        def run(r: Replica) -> SqlResult:
            result = r.sql(query, params)
            self._committed(tenant, namespace, result.commit, "sql")
            return result
        return self._with(tenant, namespace, run)

    def sql_batch(self, tenant: str, namespace: str, statements: list[tuple[str, Any]]) -> dict[str, Any]:
        """Run statements in one transaction: ``{"results": [{"columns", "rows", ...}, ...]}``; all or nothing."""
        if not statements or len(statements) > MAX_BATCH:
            raise ValidationFailed(f"a batch holds 1 to {MAX_BATCH} statements", field="batch")

        def run(r: Replica) -> dict[str, Any]:
            results = r.sql_batch(statements)
            self._committed(tenant, namespace, results[0].commit, "sql")
            return {"results": [res.as_dict() for res in results]}
        return self._with(tenant, namespace, run)

    async def asql_batch(self, tenant: str, namespace: str, statements: list[tuple[str, Any]]) -> dict[str, Any]:
        """Awaitable :meth:`sql_batch`; waits on the writer without holding a thread."""
        if not statements or len(statements) > MAX_BATCH:
            raise ValidationFailed(f"a batch holds 1 to {MAX_BATCH} statements", field="batch")

        async def run(r: Replica) -> dict[str, Any]:
            results = await r.asql_batch(statements)
            self._committed(tenant, namespace, results[0].commit, "sql")
            return {"results": [res.as_dict() for res in results]}
        return await self._awith(tenant, namespace, run)

    @staticmethod
    def _limit(limit: int) -> int:
        if type(limit) is not int or not 1 <= limit <= MAX_LIST:
            raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIST}", field="limit")
        return limit

    # -- async twins (the HTTP layer) ---------------------------------------------------

    async def akv_get(self, tenant: str, namespace: str, key: str) -> bytes | None:
        """Awaitable :meth:`kv_get`."""
        return await run_blocking(self.kv_get, tenant, namespace, key)

    async def akv_get_versioned(self, tenant: str, namespace: str, key: str) -> tuple[bytes, str] | None:
        """Awaitable :meth:`kv_get_versioned`."""
        return await run_blocking(self.kv_get_versioned, tenant, namespace, key)

    async def akv_put(self, tenant: str, namespace: str, key: str, value: bytes, *, if_match: str | None = None,
                      if_none_match: str | None = None) -> str:
        """Awaitable :meth:`kv_put`; the event loop waits on the writer without a thread of its own."""
        validate_key(key, self.settings.max_key_bytes)
        data = _as_bytes(value)

        async def put(r: Replica) -> str:
            version, commit = await r.akv_put(key, data, if_match=if_match, if_none_match=if_none_match)
            self._committed(tenant, namespace, commit, "kv")
            return version
        return await self._awith(tenant, namespace, put)

    async def akv_delete(self, tenant: str, namespace: str, key: str, *, if_match: str | None = None) -> None:
        """Awaitable :meth:`kv_delete`."""
        validate_key(key, self.settings.max_key_bytes)

        async def delete(r: Replica) -> None:
            self._committed(tenant, namespace, await r.akv_delete(key, if_match=if_match), "kv")
        await self._awith(tenant, namespace, delete, create=if_match is not None)

    async def akv_list(self, tenant: str, namespace: str, prefix: str = "", limit: int = 1000, *,
                       after: str | None = None) -> list[str]:
        """Awaitable :meth:`kv_list`."""
        return await run_blocking(self.kv_list, tenant, namespace, prefix, limit, after=after)

    async def asql(self, tenant: str, namespace: str, query: str, params: Any = None) -> dict[str, Any]:
        """Awaitable :meth:`sql`: reads on the store's threads, writes waited on without a thread."""
        async def run(r: Replica) -> dict[str, Any]:
            result = await r.asql(query, params)
            self._committed(tenant, namespace, result.commit, "sql")
            return result.as_dict()
        return await self._awith(tenant, namespace, run)

    # -- replication hooks ---------------------------------------------------------------

    def apply(self, changes: Changes) -> int:
        """Apply a peer's changes to one namespace (created if new); returns rows that won."""
        def run(r: Replica) -> int:
            applied = r.apply(changes)
            if self.origin in changes.seen:  # rare: it may have re-stamped our rows (merge._restamp_lost_versions)
                key = (changes.tenant, changes.namespace)
                book = r.book()
                with self._books_lock:
                    before = self._books.get(key, {}).get(self.origin, RangeSet()).head()
                    self._books[key] = book
                head = book.get(self.origin, RangeSet()).head()
                if head > before:  # the re-stamped rows are a new version of ours: send it like a commit
                    self.on_commit(changes.tenant, changes.namespace, head)
            else:
                self.merge_seen(changes.tenant, changes.namespace, changes.seen)
            return applied
        return self._with(changes.tenant, changes.namespace, run)

    def merge(self, sender: str, changes: Changes) -> int | None:
        """Check and apply a peer's changes to one namespace; rows that won, or None if it refused them.

        A refusal (MalformedChanges, ClockOffsetExceeded) applies nothing, is recorded in
        :attr:`blocked` and blocks only this namespace; the caller goes on with the others.
        NamespaceDamaged propagates (the namespace's health reports it).
        """
        try:
            if changes.rows:  # before the namespace is opened: a refused batch creates no file
                self.hlc.observe_remote(changes.max_hlc())
            self.check(changes)
            applied = self.apply(changes)
        except MalformedChanges as exc:
            self.blocked.record(changes.tenant, changes.namespace, sender, exc)
            return None
        self.blocked.clear(changes.tenant, changes.namespace)
        return applied

    def blocked_namespaces(self) -> list[dict[str, Any]]:
        """Namespaces a peer's changes could not be merged into, with why (for ``GET /v1/cluster``)."""
        return self.blocked.listing()

    def collect_tombstones(self, tenant: str, namespace: str, acknowledged: dict[str, int],
                           before_hlc: int = 0) -> int:
        """Delete a namespace's tombstones every member has seen: per origin, versions up to ``acknowledged``.

        ``acknowledged`` is what every member has seen of the namespace (``merge.acknowledged_by_all``
        over their books); tombstones stamped at or after ``before_hlc`` (if not 0) stay. Returns how
        many tombstones went (0 if the namespace does not exist).
        """
        return self._with(tenant, namespace, lambda r: r.collect_tombstones(acknowledged, before_hlc),
                          create=False, default=0)

    def check(self, changes: Changes) -> None:
        """Refuse (MalformedChanges) changes that could not be applied whole, writing nothing."""
        validate_namespace(changes.namespace)
        with self.pool.lease(changes.tenant, changes.namespace, create=False) as replica:
            if replica is None:
                check_changes(changes, None)
            else:
                replica.check(changes)

    def read_changes(self, tenant: str, namespace: str, wanted: dict[str, RangeSet], budget: int) -> Changes | None:
        """Rows for ``wanted`` versions of a namespace (None if it does not exist here)."""
        return self._with(tenant, namespace, lambda r: r.changes(wanted, budget), create=False)

    def read_snapshot(self, tenant: str, namespace: str) -> Changes | None:
        """The whole state of a namespace (None if it does not exist here)."""
        return self._with(tenant, namespace, lambda r: r.snapshot(), create=False)

    def status(self) -> dict[str, Any]:
        """A short summary for ``edgenode status``."""
        with self._books_lock:
            count = len(self._books)
        return {"namespaces": count, "open": self.pool.open_count(), "hlc": self.hlc.peek(),
                "damaged": len(self.health.damaged()), "blocked": len(self.blocked),
                "clock_refusals": self.blocked.clock_refusals}
