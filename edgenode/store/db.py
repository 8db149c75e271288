"""One SQLite database: a single writer thread fed by a queue, readers apart.

Every write runs on the writer thread inside ``BEGIN IMMEDIATE``; writes that
queue up while one commits are grouped into the next transaction, each under a
savepoint of its own, so one failing write never undoes another and a caller is
answered only after the commit that holds its write. Reads run on a small pool
of separate connections and see the last committed state (WAL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgenode.errors import MigrationFailed, StoreError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: How many queued writes one transaction may take at most.
MAX_BATCH = 256


@dataclass(frozen=True)
class Migration:
    """A named, append-only schema change; applied once, recorded in ``_migrations``."""

    name: str
    apply: Callable[[sqlite3.Connection], None]


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]


_STOP = object()


def connect(path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open a connection with edgenode's pragmas; transactions are explicit."""
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Database:
    """A SQLite file with one writer thread and a pool of reader connections."""

    def __init__(
        self,
        path: Path | str,
        migrations: Sequence[Migration] = (),
        *,
        readers: int = 4,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.migrations = list(migrations)
        self._max_readers = readers
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._reader_count = 0
        self._reader_lock = threading.Lock()
        self._all_readers: list[sqlite3.Connection] = []
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Database:
        """Create the file if needed, apply pending migrations, start the writer."""
        if self._writer is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        self._migrate(conn)
        self._writer_conn = conn
        self._writer = threading.Thread(target=self._run_writer, name=f"sqlite-writer:{self.path.name}", daemon=True)
        self._writer.start()
        return self

    def close(self) -> None:
        """Finish queued writes, stop the writer and close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        for conn in self._all_readers:
            conn.close()
        if self._writer_conn is not None:
            self._writer_conn.close()

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        for migration in self.migrations:
            if migration.name in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                migration.apply(conn)
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (migration.name, time.time())
                )
            except Exception as exc:
                conn.execute("ROLLBACK")
                raise MigrationFailed(f"migration {migration.name} failed: {exc}", migration=migration.name) from exc
            conn.execute("COMMIT")
            log.info("applied migration", extra={"migration": migration.name, "db": str(self.path)})

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in this database, oldest first."""
        return self.read_sync(
            lambda c: [r[0] for r in c.execute("SELECT name FROM _migrations ORDER BY applied_at, name")]
        )

    # -- writes ------------------------------------------------------------

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` to run in a write transaction; the future settles after commit."""
        if self._closed or self._writer is None:
            raise StoreError(f"database {self.path.name} is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if threading.current_thread() is self._writer:
            raise StoreError("write() called from inside a write; nest the work in the outer function instead")
        self._queue.put(_Job(fn, future))
        return future

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a write transaction and return its result once committed."""
        return self.submit(fn).result()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Awaitable form of :meth:`write_sync`; the event loop is never blocked."""
        return await asyncio.wrap_future(self.submit(fn))

    def _run_writer(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop_after = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            self._commit_batch(conn, [job for job in batch if isinstance(job, _Job)])
            if stop_after:
                return

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in batch:
                job.future.set_exception(StoreError(f"cannot begin a write: {exc}"))
            return
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue
            conn.execute("SAVEPOINT job")
            try:
                result = job.fn(conn)
            except BaseException as exc:  # the job's own failure; undo only its work
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append((job, False, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((job, True, result))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            for job, _, _ in outcomes:
                job.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        for job, ok, value in outcomes:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    # -- reads -------------------------------------------------------------

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader connection inside one read transaction."""
        if self._closed:
            raise StoreError(f"database {self.path.name} is closed")
        conn = self._borrow_reader()
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        finally:
            self._readers.put(conn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Awaitable form of :meth:`read_sync`, run on a thread."""
        return await asyncio.to_thread(self.read_sync, fn)

    def _borrow_reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        with self._reader_lock:
            if self._reader_count < self._max_readers:
                self._reader_count += 1
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
                self._all_readers.append(conn)
                return conn
        return self._readers.get()

