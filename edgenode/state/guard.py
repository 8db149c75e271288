"""What user SQL may do inside a namespace: an authorizer, a time limit and a result size limit.

SQLite's authorizer sees every table, pragma and function a statement touches,
at prepare time, so escapes are refused before anything runs: ATTACH/DETACH,
``load_extension``, pragmas other than read-only introspection, transaction
control (edgenode owns the transaction), temporary objects, user triggers and
virtual tables, writes to edgenode's own tables, and DROP/ALTER of tables
(replicated schema only grows; see the README).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edgenode.errors import SqlRefused, SqlResultTooLarge, SqlTimeLimit
from edgenode.state.schema import is_internal

#: Pragmas that only read; anything else (synchronous, journal_mode, writable_schema, ...) is refused.
READ_ONLY_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "collation_list",
    "function_list", "pragma_list", "compile_options", "data_version",
})

_WRITE_ACTIONS = frozenset({
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE,
})

_REFUSED = {
    sqlite3.SQLITE_ATTACH: "ATTACH is refused: a namespace cannot reach other databases",
    sqlite3.SQLITE_DETACH: "DETACH is refused",
    sqlite3.SQLITE_TRANSACTION: "transaction control is refused: each request runs in its own transaction",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT is refused: each request runs in its own transaction",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "temporary tables are refused",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "temporary indexes are refused",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "temporary triggers are refused",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "temporary views are refused",
    sqlite3.SQLITE_CREATE_TRIGGER: "user triggers are refused (their effects would replicate twice)",
    sqlite3.SQLITE_DROP_TRIGGER: "dropping triggers is refused",
    sqlite3.SQLITE_CREATE_VTABLE: "virtual tables are refused",
    sqlite3.SQLITE_DROP_VTABLE: "virtual tables are refused",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE is refused: replicated schema only grows (create a new table)",
    sqlite3.SQLITE_DROP_TABLE: "DROP TABLE is refused: replicated schema only grows (delete the rows instead)",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "temporary tables are refused",
    sqlite3.SQLITE_DROP_TEMP_INDEX: "temporary indexes are refused",
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: "temporary triggers are refused",
    sqlite3.SQLITE_DROP_TEMP_VIEW: "temporary views are refused",
}

_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})
_CREATES = (sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW)


class NeedsWriter(Exception):
    """A statement tried on a reader connection turned out to write."""


class Guard:
    """An authorizer for one statement; remembers why it refused, so the error can say so.

    ``read_only`` guards run on reader connections: the first write action marks the
    statement as needing the writer instead of failing it.
    """

    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only
        self.refusal: str | None = None
        self.wants_write = False

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if source and source.startswith("_crdt_"):  # edgenode's own capture triggers
            return sqlite3.SQLITE_OK
        reason = self._check(action, arg1, arg2, db)
        if reason is None:
            return sqlite3.SQLITE_OK
        if reason == "write":
            self.wants_write = True
        elif self.refusal is None:
            self.refusal = reason
        return sqlite3.SQLITE_DENY

    def _check(self, action: int, arg1: str | None, arg2: str | None, db: str | None) -> str | None:
        if action in _REFUSED:
            return _REFUSED[action]
        if db == "temp":
            return "the temp schema is refused"
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in READ_ONLY_PRAGMAS and not (name == "data_version" and arg2):
                return None
            return f"PRAGMA {name} is refused: only read-only introspection pragmas are allowed"
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            # fts3_tokenizer() hands out (and takes) a C pointer: a process address, or a jump target.
            if name in ("load_extension", "fts3_tokenizer") or name.startswith("crdt_"):
                return f"function {name} is refused"
            return None
        if action in _WRITE_ACTIONS:
            target = arg2 if action in (sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX) else arg1
            # sqlite_sequence comes with AUTOINCREMENT, which the replicated schema refuses with its own reason.
            if (action in _CREATES and arg1 and is_internal(arg1) and not arg1.startswith("sqlite_autoindex_")
                    and arg1 != "sqlite_sequence"):
                return f"names starting with {arg1[:6]!r}... are reserved for edgenode"
            if target and target.lower() in _SCHEMA_TABLES:  # SQLite's own bookkeeping for CREATE
                return "write" if self.read_only else None
            if target and is_internal(target) and action not in _CREATES:
                return f"table {target} belongs to edgenode and cannot be written with SQL"
            return "write" if self.read_only else None
        return None

    def refused(self) -> SqlRefused:
        """The error for the refusal this guard recorded."""
        return SqlRefused(self.refusal or "statement refused")


def deadline_handler(limit_ms: int, now: Callable[[], float] = time.monotonic) -> Callable[[], int]:
    """A progress handler that interrupts a statement after ``limit_ms``."""
    deadline = now() + limit_ms / 1000

    def check() -> int:
        return 1 if now() > deadline else 0

    return check


class Watchdog:
    """One thread that interrupts connections whose statement outlives its deadline.

    The progress handler runs between VM steps only; ``conn.interrupt()`` from here also
    reaches a statement busy in one long step (SQLite checks the flag in its long loops).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, sqlite3.Connection]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, conn: sqlite3.Connection, limit_ms: int) -> Iterator[None]:
        """Interrupt ``conn`` if the block is still running ``limit_ms`` from now."""
        ident = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + limit_ms / 1000, ident, conn))
            self._live.add(ident)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sql-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._live.discard(ident)  # under the lock: no interrupt can land after this

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, ident, conn = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ident)
                conn.interrupt()


#: The node's one SQL watchdog.
watchdog = Watchdog()


def encode_value(value: Any) -> Any:
    """A SQLite value as JSON: blobs become ``{"$base64": "..."}``."""
    if isinstance(value, (bytes, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    return value


def decode_param(value: Any) -> Any:
    """A JSON parameter as a SQLite value: ``{"$base64": "..."}`` becomes a blob."""
    if isinstance(value, dict) and set(value) == {"$base64"} and isinstance(value["$base64"], str):
        return base64.b64decode(value["$base64"], validate=True)
    if isinstance(value, (dict, list)):
        raise TypeError("a SQL parameter must be a string, number, boolean, null or {\"$base64\": ...}")
    return value


def fetch_limited(cursor: sqlite3.Cursor, max_bytes: int) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a cursor, refusing results larger than ``max_bytes`` (approximate JSON size)."""
    columns = [d[0] for d in cursor.description or ()]
    rows: list[list[Any]] = []
    size = 0
    for row in cursor:
        out = [encode_value(v) for v in row]
        size += 8 + sum(_size(v) for v in row)
        if size > max_bytes:
            raise SqlResultTooLarge(f"the result is larger than {max_bytes} bytes; add LIMIT or select less",
                                    limit=max_bytes)
        rows.append(out)
    return columns, rows


def _size(value: Any) -> int:
    if value is None:
        return 4
    if isinstance(value, (bytes, memoryview)):
        return 16 + len(value) * 4 // 3
    if isinstance(value, str):
        return 2 + len(value)
    return 12


def timed_out(exc: sqlite3.Error) -> bool:
    """Whether a SQLite error is the progress handler's interrupt."""
    return "interrupted" in str(exc).lower()


def time_limit_error(limit_ms: int) -> SqlTimeLimit:
    """The error for a statement stopped by its time limit."""
    return SqlTimeLimit(f"the statement ran longer than {limit_ms} ms and was stopped", limit_ms=limit_ms)
