"""One namespace's database: key-value and SQL with change capture, and applying peers' changes.

A :class:`Replica` is the whole local story of a namespace; the state capability
keeps many of them open in an LRU pool, and the property tests drive several
side by side. Every write runs on the database's writer thread; a write that
changes rows is stamped with one HLC timestamp and the next version of this
node's origin, recorded by triggers in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgenode.cluster.hlc import Hlc
from edgenode.cluster.ranges import RangeSet
from edgenode.errors import (
    NamespaceDamaged,
    PayloadTooLarge,
    SqlError,
    SqlResultTooLarge,
    ValidationFailed,
    VersionMismatch,
)
from edgenode.state import merge, schema
from edgenode.state.guard import (
    Guard,
    NeedsWriter,
    deadline_handler,
    decode_param,
    fetch_limited,
    time_limit_error,
    timed_out,
    watchdog,
)
from edgenode.state.payload import Changes
from edgenode.store import Database
from edgenode.store.db import run_blocking

T = TypeVar("T")


#: Longest string, blob or row in a namespace when the node sets none, in bytes.
DEFAULT_MAX_LENGTH = 32 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-namespace limits, from the node's state settings."""

    max_value_bytes: int = 1024 * 1024
    sql_time_limit_ms: int = 5000
    sql_max_result_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class Commit:
    """What a write did: the version and HLC it was stamped with, or None when it changed nothing."""

    version: int | None = None
    hlc: int | None = None


@dataclass
class SqlResult:
    """A statement's result."""

    columns: list[str]
    rows: list[list[Any]]
    rows_affected: int = 0
    commit: Commit = field(default_factory=Commit)
    #: Tables created without a primary key: they stay local to this node.
    not_replicated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/sql``."""
        out: dict[str, Any] = {"columns": self.columns, "rows": self.rows, "rows_affected": self.rows_affected}
        if self.not_replicated:
            out["not_replicated"] = self.not_replicated
        return out


def etag(hlc: int, origin: str) -> str:
    """The version string of a key: its HLC and origin (what compare-and-set compares)."""
    return f"{hlc}.{origin}"


class Capture:
    """The stamp the capture triggers read through SQL functions, set for the length of one write."""

    def __init__(self) -> None:
        self.active = False
        self.hlc = 0
        self.origin = ""
        self.version = 0
        self.used = False

    def register(self, conn: sqlite3.Connection) -> None:
        """Install ``crdt_capturing()``, ``crdt_hlc()``, ``crdt_origin()`` and ``crdt_version()``."""
        conn.create_function("crdt_capturing", 0, lambda: 1 if self.active else 0)
        conn.create_function("crdt_hlc", 0, lambda: self.hlc)
        conn.create_function("crdt_origin", 0, lambda: self.origin)
        conn.create_function("crdt_version", 0, self._use)

    def _use(self) -> int:
        self.used = True
        return self.version


class NamespaceDatabase(Database):
    """A Database whose connections carry the capture functions.

    Foreign keys are off because replicated rows may arrive in any order;
    recursive triggers are on so that rows REPLACE deletes are captured too.
    """

    damaged_error = NamespaceDamaged

    def __init__(self, path: Path | str, *, max_length: int = DEFAULT_MAX_LENGTH, **kwargs: Any) -> None:
        super().__init__(path, schema.MIGRATIONS, **kwargs)
        self.capture = Capture()
        self.max_length = max_length

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        # No string, blob or row longer than this: one step (randomblob, zeroblob, a long concat)
        # can neither take the node's memory nor run past the time limit.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_length)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000)
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA recursive_triggers = ON")
        self.capture.register(conn)
        return conn


def _prefix_upper(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars:
        nxt = ord(chars[-1]) + 1
        if 0xD800 <= nxt <= 0xDFFF:
            nxt = 0xE000
        if nxt <= 0x10FFFF:
            chars[-1] = chr(nxt)
            return "".join(chars)
        chars.pop()
    return None


class Replica:
    """A namespace: its database, this node's origin id and clock, and the operations on it."""

    def __init__(self, db: NamespaceDatabase, tenant: str, namespace: str, origin: str, hlc: Hlc,
                 limits: Limits | None = None) -> None:
        self.db = db
        self.tenant = tenant
        self.namespace = namespace
        self.origin = origin
        self.hlc = hlc
        self.limits = limits or Limits()

    # -- capture -------------------------------------------------------------

    def _captured(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> tuple[T, Commit]:
        """Run ``work`` with capture on; record its version if it changed any row."""
        cap = self.db.capture
        head = conn.execute(
            "SELECT coalesce(max(hi), 0) FROM _crdt_book WHERE origin = ?", (self.origin,)
        ).fetchone()[0]
        cap.active, cap.used = True, False
        cap.origin, cap.version, cap.hlc = self.origin, head + 1, self.hlc.tick()
        try:
            result = work(conn)
            used = cap.used
        finally:
            cap.active = False
        if not used:
            return result, Commit()
        schema.book_add(conn, self.origin, cap.version, cap.version)
        return result, Commit(cap.version, cap.hlc)

    # -- key-value -------------------------------------------------------------

    @staticmethod
    def _current(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute(
            "SELECT c.hlc, c.origin FROM _kv k JOIN _crdt_clock c ON c.tbl = '_kv' AND c.pk = json_array(k.key) "
            "WHERE k.key = ?", (key,)
        ).fetchone()
        return etag(row[0], row[1]) if row else None

    @staticmethod
    def _check(current: str | None, if_match: str | None, if_none_match: str | None) -> None:
        if if_match is not None and (current is None if if_match == "*" else current != if_match):
            raise VersionMismatch(f"the key's version is {current or 'absent'}, not {if_match}",
                                  expected=if_match, current=current)
        if if_none_match is not None and current is not None and if_none_match in ("*", current):
            raise VersionMismatch(f"the key exists with version {current}", expected=None, current=current)

    def kv_get(self, key: str) -> tuple[bytes, str] | None:
        """The value of ``key`` and its version, or None."""
        def read(conn: sqlite3.Connection) -> tuple[bytes, str] | None:
            row = conn.execute(
                "SELECT k.value, c.hlc, c.origin FROM _kv k LEFT JOIN _crdt_clock c "
                "ON c.tbl = '_kv' AND c.pk = json_array(k.key) WHERE k.key = ?", (key,)
            ).fetchone()
            return None if row is None else (bytes(row[0]), etag(row[1] or 0, row[2] or ""))
        return self.db.read_sync(read)

    def _put_fn(self, key: str, value: bytes, if_match: str | None, if_none_match: str | None
                ) -> Callable[[sqlite3.Connection], tuple[str, Commit]]:
        if len(value) > self.limits.max_value_bytes:
            raise PayloadTooLarge(f"value of {len(value)} bytes exceeds {self.limits.max_value_bytes} bytes",
                                  limit=self.limits.max_value_bytes)

        def write(conn: sqlite3.Connection) -> tuple[str, Commit]:
            self._check(self._current(conn, key), if_match, if_none_match)
            _, commit = self._captured(conn, lambda c: c.execute(
                "INSERT INTO _kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value)))
            assert commit.hlc is not None
            return etag(commit.hlc, self.origin), commit
        return write

    def kv_put(self, key: str, value: bytes, *, if_match: str | None = None,
               if_none_match: str | None = None) -> tuple[str, Commit]:
        """Set ``key``; returns its new version. ``if_match``/``if_none_match`` make it compare-and-set."""
        return self.db.write_sync(self._put_fn(key, value, if_match, if_none_match))

    async def akv_put(self, key: str, value: bytes, *, if_match: str | None = None,
                      if_none_match: str | None = None) -> tuple[str, Commit]:
        """Awaitable :meth:`kv_put`."""
        return await self.db.write(self._put_fn(key, value, if_match, if_none_match))

    def _delete_fn(self, key: str, if_match: str | None) -> Callable[[sqlite3.Connection], Commit]:
        def write(conn: sqlite3.Connection) -> Commit:
            self._check(self._current(conn, key), if_match, None)
            return self._captured(conn, lambda c: c.execute("DELETE FROM _kv WHERE key = ?", (key,)))[1]
        return write

    def kv_delete(self, key: str, *, if_match: str | None = None) -> Commit:
        """Delete ``key`` (a tombstone replicates); a no-op when absent."""
        return self.db.write_sync(self._delete_fn(key, if_match))

    async def akv_delete(self, key: str, *, if_match: str | None = None) -> Commit:
        """Awaitable :meth:`kv_delete`."""
        return await self.db.write(self._delete_fn(key, if_match))

    def _list_fn(self, prefix: str, after: str | None, limit: int) -> Callable[[sqlite3.Connection], list[str]]:
        upper = _prefix_upper(prefix)

        def read(conn: sqlite3.Connection) -> list[str]:
            sql = "SELECT key FROM _kv WHERE key >= ?"
            args: list[Any] = [prefix]
            if after is not None:
                sql += " AND key > ?"
                args.append(after)
            if upper is not None:
                sql += " AND key < ?"
                args.append(upper)
            sql += " ORDER BY key LIMIT ?"
            args.append(limit)
            return [r[0] for r in conn.execute(sql, args)]
        return read

    def kv_list(self, prefix: str = "", *, after: str | None = None, limit: int = 1000) -> list[str]:
        """Keys starting with ``prefix``, in order, after ``after``, at most ``limit``."""
        return self.db.read_sync(self._list_fn(prefix, after, limit))

    async def akv_list(self, prefix: str = "", *, after: str | None = None, limit: int = 1000) -> list[str]:
        """Awaitable :meth:`kv_list`."""
        return await self.db.read(self._list_fn(prefix, after, limit))

    # -- SQL -------------------------------------------------------------------

    def _params(self, params: Any) -> Any:
        if params is None:
            return ()
        try:
            if isinstance(params, list):
                return [decode_param(p) for p in params]
            if isinstance(params, dict):
                return {k: decode_param(v) for k, v in params.items()}
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(f"bad SQL parameter: {exc}", field="params") from exc
        raise ValidationFailed("params must be an array or an object", field="params")

    def _execute(self, conn: sqlite3.Connection, guard: Guard, query: str, params: Any
                 ) -> tuple[list[str], list[list[Any]], int]:
        limit_ms = self.limits.sql_time_limit_ms
        conn.set_authorizer(guard)
        conn.set_progress_handler(deadline_handler(limit_ms), 1000)
        try:
            with watchdog.watch(conn, limit_ms):
                cursor = conn.execute(query, params)
                columns, rows = fetch_limited(cursor, self.limits.sql_max_result_bytes)
            return columns, rows, max(cursor.rowcount, 0)
        except sqlite3.Error as exc:
            if guard.wants_write:
                raise NeedsWriter from exc
            fault = self.db.fault(exc)
            if fault is not None:
                raise fault from exc
            if guard.refusal:
                raise guard.refused() from exc
            key_refusal = schema.key_refusal(exc)
            if key_refusal is not None:
                raise key_refusal from exc
            if timed_out(exc):
                raise time_limit_error(limit_ms) from exc
            raise SqlError(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, OverflowError) as exc:  # e.g. two statements, or a bad parameter count
            raise SqlError(str(exc)) from exc
        finally:
            conn.set_authorizer(None)
            conn.set_progress_handler(None, 0)

    def _sql_write_fn(self, query: str, params: Any) -> Callable[[sqlite3.Connection], SqlResult]:
        def write(conn: sqlite3.Connection) -> SqlResult:
            before = schema.schema_version(conn)
            local_only: list[str] = []

            def work(c: sqlite3.Connection) -> tuple[list[str], list[list[Any]], int]:
                nonlocal local_only
                out = self._execute(c, Guard(read_only=False), query, params)
                if schema.schema_version(c) != before:
                    local_only = schema.register_new_objects(c)
                return out

            (columns, rows, affected), commit = self._captured(conn, work)
            return SqlResult(columns, rows, affected, commit, local_only)
        return write

    def _batch_fn(self, statements: list[tuple[str, Any]]) -> Callable[[sqlite3.Connection], list[SqlResult]]:
        def write(conn: sqlite3.Connection) -> list[SqlResult]:
            before = schema.schema_version(conn)
            local_only: list[str] = []

            def work(c: sqlite3.Connection) -> list[tuple[list[str], list[list[Any]], int]]:
                nonlocal local_only
                outs = []
                size = 0
                for query, params in statements:
                    out = self._execute(c, Guard(read_only=False), query, params)
                    size += sum(len(repr(r)) for r in out[1])
                    if size > self.limits.sql_max_result_bytes:
                        raise SqlResultTooLarge(
                            f"the batch's results are larger than {self.limits.sql_max_result_bytes} bytes",
                            limit=self.limits.sql_max_result_bytes)
                    outs.append(out)
                if schema.schema_version(c) != before:
                    local_only = schema.register_new_objects(c)
                return outs

            outs, commit = self._captured(conn, work)
            return [SqlResult(cols, rows, affected, commit, local_only) for cols, rows, affected in outs]
        return write

    def _prepare_batch(self, statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        prepared = []
        for query, params in statements:
            if not isinstance(query, str) or not query.strip():
                raise ValidationFailed("sql must be a non-empty string", field="sql")
            prepared.append((query, self._params(params)))
        return prepared

    def sql_batch(self, statements: list[tuple[str, Any]]) -> list[SqlResult]:
        """Run several statements in one transaction (one version): all take effect or none does."""
        return self.db.write_sync(self._batch_fn(self._prepare_batch(statements)))

    async def asql_batch(self, statements: list[tuple[str, Any]]) -> list[SqlResult]:
        """Awaitable :meth:`sql_batch`; no thread is held while the writer works."""
        return await self.db.write(self._batch_fn(self._prepare_batch(statements)))

    def _prepare(self, query: Any, params: Any) -> Any:
        if not isinstance(query, str) or not query.strip():
            raise ValidationFailed("sql must be a non-empty string", field="sql")
        return self._params(params)

    def _read_fn(self, query: str, args: Any) -> Callable[[sqlite3.Connection], tuple[list[str], list[list[Any]], int]]:
        return lambda c: self._execute(c, Guard(read_only=True), query, args)

    def sql(self, query: str, params: Any = None) -> SqlResult:
        """Run one parameterized statement; reads run on a reader, writes on the writer."""
        args = self._prepare(query, params)
        try:
            columns, rows, _ = self.db.read_sync(self._read_fn(query, args))
            return SqlResult(columns, rows)
        except NeedsWriter:
            return self.db.write_sync(self._sql_write_fn(query, args))
        except SqlError as exc:
            raise self.db.refusal or exc from exc

    async def asql(self, query: str, params: Any = None) -> SqlResult:
        """Awaitable :meth:`sql`: the read attempt on the store's threads, a write waited on without one."""
        args = self._prepare(query, params)
        try:
            columns, rows, _ = await self.db.read(self._read_fn(query, args))
            return SqlResult(columns, rows)
        except NeedsWriter:
            return await self.db.write(self._sql_write_fn(query, args))
        except SqlError as exc:  # on a damaged namespace, say so rather than what the damage looks like
            raise self.db.refusal or exc from exc

    # -- replication (the work itself lives in edgenode.state.merge) -------------------

    def changes(self, wanted: dict[str, RangeSet], budget: int = 2000) -> Changes:
        """Rows written by the ``wanted`` versions that are still current, and the ranges they cover.

        Stops after about ``budget`` rows, at a version boundary; ``seen`` then covers only
        what was sent, so the receiver asks again for the rest.
        """
        return self.db.read_sync(lambda conn: merge.read_changes(conn, self.tenant, self.namespace, wanted, budget))

    def snapshot(self) -> Changes:
        """The namespace's whole replicated state and everything it has seen, in one read."""
        return self.db.read_sync(lambda conn: merge.read_snapshot(conn, self.tenant, self.namespace))

    def book(self) -> dict[str, RangeSet]:
        """Every origin's seen versions, as stored."""
        return self.db.read_sync(schema.read_book)

    def collect_tombstones(self, acknowledged: dict[str, int], before_hlc: int = 0) -> int:
        """Delete tombstones of versions every member has seen (per origin, up to the version given),
        stamped before ``before_hlc`` if it is not 0."""
        return self.db.write_sync(lambda conn: merge.collect_tombstones(conn, acknowledged, before_hlc))

    def check(self, changes: Changes) -> None:
        """Refuse changes this namespace could not apply whole (MalformedChanges), without writing."""
        self.db.read_sync(lambda conn: merge.check_changes(changes, conn))

    def apply(self, changes: Changes) -> int:
        """Apply a peer's changes last-writer-wins; all or nothing. Returns how many rows won.

        ClockOffsetExceeded, applying nothing, if they are stamped too far ahead of this node's clock.
        """
        if changes.rows:
            self.hlc.observe_remote(changes.max_hlc())
        return self.db.write_sync(lambda conn: merge.apply_changes(conn, changes, self.origin))

    async def aapply(self, changes: Changes) -> int:
        """Awaitable :meth:`apply`."""
        if changes.rows:
            self.hlc.observe_remote(changes.max_hlc())
        return await self.db.write(lambda conn: merge.apply_changes(conn, changes, self.origin))

    # -- async twins of the rest ---------------------------------------------------

    async def akv_get(self, key: str) -> tuple[bytes, str] | None:
        """Awaitable :meth:`kv_get`."""
        return await run_blocking(self.kv_get, key)

