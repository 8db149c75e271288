"""One SQLite database: a single writer thread fed by a queue, readers apart.

Every write runs on the writer thread inside ``BEGIN IMMEDIATE``; writes that
queue up while one commits are grouped into the next transaction, each under a
savepoint of its own, so one failing write never undoes another and a caller is
answered only after the commit that holds its write. Reads run on a small pool
of separate connections and see the last committed state (WAL).

The writer survives every failure: when a statement or the ``COMMIT`` fails
(a full disk, an I/O error), SQLite may already have rolled the transaction
back; each write of that transaction is answered with the error, the
connection is rolled back or reopened, and the writer goes on with the next
batch. Every wait is bounded (``write_timeout_s``), so no caller waits on a
future nobody will complete.

Writes queue per tenant (the caller's ``threads.current_tenant``) and a batch takes them
tenant by tenant in turn, so a tenant with hundreds of writes queued on a shared database
(agent journals, deployments) delays another tenant's write by one transaction, not by its
whole backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgenode.errors import (
    DatabaseDamaged,
    DatabaseRefused,
    EdgenodeError,
    MigrationFailed,
    StoreError,
    StoreTimeout,
)
from edgenode.store.faults import storage_fault
from edgenode.threads import NODE, STORE, FairQueue, current_tenant

if TYPE_CHECKING:
    from edgenode.store.health import StoreMonitor

T = TypeVar("T")

log = logging.getLogger(__name__)

#: How many queued writes one transaction may take at most.
MAX_BATCH = 256
SQLITE_BUSY = 5

#: Blocking store calls from event loops go to the store's bridge (``edgenode.threads.STORE``), apart
#: from other blocking work, so store calls never queue behind it (or it behind them).
run_blocking = STORE.run


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


class _WriteQueue:
    """Writes waiting for the writer, per tenant, taken tenant by tenant in turn; stop comes after the last."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: FairQueue[_Job] = FairQueue(1)
        self._stopping = False

    def put(self, key: str, job: _Job) -> None:
        with self._cond:
            self._jobs.put(key, job)
            self._cond.notify()

    def stop(self) -> None:
        """After the writes queued now, :meth:`get` answers ``_STOP``."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _take(self) -> _Job | object | None:
        taken = self._jobs.take()
        if taken is not None:
            self._jobs.finished(taken[0])  # a turn only: writes run one at a time on the writer anyway
            return taken[1]
        return _STOP if self._stopping else None

    def get(self) -> _Job | object:
        """The next write in turn (or ``_STOP``), waiting for one."""
        with self._cond:
            while (item := self._take()) is None:
                self._cond.wait()
            return item

    def get_nowait(self) -> _Job | object:
        """The next write in turn (or ``_STOP``); ``queue.Empty`` if there is none."""
        with self._cond:
            item = self._take()
        if item is None:
            raise queue.Empty
        return item

    def empty(self) -> bool:
        return self._jobs.waiting == 0

    def qsize(self) -> int:
        return self._jobs.waiting


def connect(path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000,
            wal_autocheckpoint: int = 1000) -> sqlite3.Connection:
    """Open a connection with edgenode's pragmas; transactions are explicit.

    ``wal_autocheckpoint`` 0 leaves every checkpoint to another process (Litestream must be the
    only checkpointer of the databases it replicates).
    """
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _TransactionLost(Exception):
    """The batch's transaction is gone (rolled back by SQLite or by us); carries the error to answer with."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Database:
    """A SQLite file with one writer thread and a pool of reader connections."""

    #: The error a damaged file of this kind raises (namespaces have their own).
    damaged_error: type[DatabaseDamaged] = DatabaseDamaged

    def __init__(
        self,
        path: Path | str,
        migrations: Sequence[Migration] = (),
        *,
        readers: int = 4,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        write_timeout_s: float = 30.0,
        purpose: str = "",
        monitor: StoreMonitor | None = None,
        wal_autocheckpoint: int = 1000,
    ) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        if readers < 1:
            raise ValueError(f"a database needs at least one reader connection, not {readers}")
        if write_timeout_s <= 0:
            raise ValueError(f"write_timeout_s must be positive, not {write_timeout_s}")
        self.path = Path(path)
        self.migrations = list(migrations)
        self.purpose = purpose or f"database {self.path.name}"
        self.write_timeout_s = write_timeout_s
        self.monitor = monitor
        #: Called (from any thread) when the file turns out to be damaged while in use.
        self.on_damaged: Callable[[DatabaseDamaged], None] | None = None
        self._max_readers = readers
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._wal_autocheckpoint = wal_autocheckpoint
        self._queue = _WriteQueue()
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._reader_count = 0
        self._reader_lock = threading.Lock()
        self._all_readers: list[sqlite3.Connection] = []
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._refusal: EdgenodeError | None = None
        #: When the job now on the writer started (monotonic), for the watchdog.
        self._job_started: float | None = None
        self._writer_stopped = False
        self._opened = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Database:
        """Create the file if needed, apply pending migrations, start the writer.

        A database that refuses writes (:meth:`refuse_writes`) opens for reading only.
        """
        if self._opened:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise (storage_fault(exc, self.path.parent, self.purpose) or exc) from exc
        if self._refusal is None:
            existed = self.path.exists()
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                self._forget_new_file(existed)
                raise self._open_failed(exc) from exc
            try:
                self._migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                self._forget_new_file(existed)
                raise self._open_failed(exc) from exc
            except BaseException:
                conn.close()
                raise
            self._writer_conn = conn
            self._writer = threading.Thread(target=self._run_writer, name=f"sqlite-writer:{self.path.name}",
                                            daemon=True)
            self._writer.start()
        self._opened = True
        if self.monitor is not None:
            self.monitor.track(self)
        return self

    def _forget_new_file(self, existed: bool) -> None:
        """Remove the file a failed first open created (on a full disk, an empty one), so it is not taken for lost."""
        if existed:
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + suffix).unlink()

    def _open_failed(self, exc: sqlite3.Error) -> EdgenodeError:
        error = storage_fault(exc, self.path, self.purpose, database=self.path.name)
        if isinstance(error, DatabaseDamaged) or error is None:
            return DatabaseRefused(
                f"the {self.purpose} {self.path} cannot be opened: {exc}. Restore the file from a backup while "
                f"the node is stopped, or move it aside to start with an empty {self.path.name}.",
                path=str(self.path), reason=str(exc))
        return error

    def refuse_writes(self, error: EdgenodeError) -> None:
        """From now on, every write raises ``error`` (reads go on); before :meth:`open`, no writer starts."""
        self._refusal = error

    @property
    def refusal(self) -> EdgenodeError | None:
        """The error writes are refused with, if they are."""
        return self._refusal

    def close(self) -> None:
        """Finish queued writes, stop the writer and close every connection."""
        if self._closed:
            return
        self._closed = True
        if self.monitor is not None:
            self.monitor.untrack(self)
        if self._writer is not None:
            self._queue.stop()
            self._writer.join(self.write_timeout_s)
            if self._writer.is_alive():
                log.error("writer did not stop in time; leaving its connection open",
                          extra={"db": str(self.path), "bound_s": self.write_timeout_s})
        for conn in self._all_readers:
            conn.close()
        if self._writer_conn is not None and (self._writer is None or not self._writer.is_alive()):
            self._writer_conn.close()

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms,
                       wal_autocheckpoint=self._wal_autocheckpoint)

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
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise MigrationFailed(f"migration {migration.name} failed: {exc}", migration=migration.name) from exc
            conn.execute("COMMIT")
            log.info("applied migration", extra={"migration": migration.name, "db": str(self.path)})

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in this database, oldest first."""
        return self.read_sync(
            lambda c: [r[0] for r in c.execute("SELECT name FROM _migrations ORDER BY applied_at, name")]
        )

    # -- faults --------------------------------------------------------------

    def fault(self, exc: BaseException) -> EdgenodeError | None:
        """The client-facing error for a disk fault behind ``exc`` (full, I/O, damaged), else None."""
        error = storage_fault(exc, self.path, self.purpose, database=self.path.name)
        if isinstance(error, DatabaseDamaged):
            error = self.damaged_error(
                f"the {self.purpose} ({self.path.name}) is damaged ({exc}); it refuses writes until it is "
                "restored from a backup", database=self.path.name, reason=str(exc))
            if self._refusal is None:
                self._refusal = error
                log.error("database is damaged; refusing writes", extra={"db": str(self.path), "error": str(exc)})
                if self.on_damaged is not None:
                    self.on_damaged(error)
        if error is not None and self.monitor is not None:
            self.monitor.count_fault(error)
        return error

    def _answer(self, exc: BaseException) -> BaseException:
        """What a caller whose work failed with ``exc`` should see: the disk fault, or ``exc`` itself."""
        return self.fault(exc) or exc

    # -- writes ------------------------------------------------------------

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` to run in a write transaction; the future settles after commit."""
        if self._refusal is not None:
            raise self._refusal
        if self._closed or self._writer is None:
            raise StoreError(f"database {self.path.name} is not open")
        if threading.current_thread() is self._writer:
            raise StoreError("write() called from inside a write; nest the work in the outer function instead")
        if self._writer_stopped:
            raise StoreError(f"the writer of {self.path.name} has stopped; see the node's log")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(current_tenant.get() or NODE, _Job(fn, future))
        return future

    def _timed_out(self, future: concurrent.futures.Future[Any]) -> StoreTimeout:
        if future.cancel():
            return StoreTimeout(f"database {self.path.name} did not take the write within {self.write_timeout_s:g} s "
                                "(its writer is busy or stuck); nothing was written",
                                database=self.path.name, started=False)
        return StoreTimeout(f"a write to {self.path.name} is still running after {self.write_timeout_s:g} s; "
                            "it may still commit", database=self.path.name, started=True)

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a write transaction and return its result once committed (bounded wait)."""
        future = self.submit(fn)
        try:
            return future.result(timeout=self.write_timeout_s)
        except concurrent.futures.TimeoutError:
            if future.done():
                return future.result()
            raise self._timed_out(future) from None

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Awaitable form of :meth:`write_sync`; the event loop is never blocked, no thread is held."""
        future = self.submit(fn)
        wrapped = asyncio.wrap_future(future)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            wrapped.cancel()  # and with it the write, if it has not started

        timer = asyncio.get_running_loop().call_later(self.write_timeout_s, expire)
        try:
            return await wrapped
        except asyncio.CancelledError:
            if not expired:
                raise  # the caller was cancelled; a write not yet started never runs
            raise self._timed_out(future) from None
        finally:
            timer.cancel()

    def _run_writer(self) -> None:
        inflight: list[_Job] = []
        try:
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
                pending = inflight = [job for job in batch if isinstance(job, _Job)]
                while pending:
                    pending = self._commit_batch(pending)
                if stop_after:
                    return
        except BaseException as exc:  # noqa: BLE001 - the thread ends here; its callers must hear of it
            # Only a bug in this loop lands here; answer everyone still waiting rather than leave them hanging.
            log.exception("database writer stopped", extra={"db": str(self.path)})
            self._drain(StoreError(f"the writer of {self.path.name} stopped: {type(exc).__name__}: {exc}"), inflight)
        finally:
            self._job_started = None
            self._writer_stopped = True

    def _drain(self, error: BaseException, inflight: list[_Job]) -> None:
        for job in inflight:
            if not job.future.done():
                if job.future.running() or job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                return
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer_conn is None:
            self._writer_conn = self._connect()
            log.info("reopened the writer connection", extra={"db": str(self.path)})
        return self._writer_conn

    def _recover(self) -> None:
        """After a failed transaction: roll back what is left, or reopen the connection if that fails too."""
        conn = self._writer_conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        except sqlite3.Error as exc:
            log.warning("rollback failed; reopening the writer connection",
                        extra={"db": str(self.path), "error": str(exc)})
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        self._writer_conn = None

    def _commit_batch(self, batch: list[_Job]) -> list[_Job]:
        """Run and commit ``batch``; returns the jobs not yet tried when the transaction was lost."""
        self._job_started = time.monotonic()  # waiting for the lock counts too
        try:
            return self._run_batch(batch)
        finally:
            self._job_started = None

    def _run_batch(self, batch: list[_Job]) -> list[_Job]:
        try:
            conn = self._writer_connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = self._answer(exc)
            if error is exc and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_BUSY:
                error = StoreTimeout(f"database {self.path.name} stayed locked by another connection for "
                                     f"{self._busy_timeout_ms} ms; nothing was written",
                                     database=self.path.name, started=False)
            elif error is exc:
                error = StoreError(f"cannot begin a write on {self.path.name}: {exc}")
            for job in batch:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)
            self._recover()
            return []
        outcomes: list[tuple[_Job, bool, Any]] = []
        for index, job in enumerate(batch):
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                outcomes.append(self._run_job(conn, job))
            except _TransactionLost as lost:
                # SQLite rolled the transaction back (or we could not undo the job alone): every
                # write of it so far is gone with it. The jobs not yet tried go in a fresh one.
                job.future.set_exception(lost.error)
                self._fail_lost(outcomes, self._neighbour_error(lost.error))
                self._recover()
                return batch[index + 1:]
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = self._answer(exc)
            if error is exc:
                error = StoreError(f"commit failed on {self.path.name}: {exc}")
            self._fail_lost(outcomes, error)
            self._recover()
            return []
        for job, ok, value in outcomes:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        return []

    def _run_job(self, conn: sqlite3.Connection, job: _Job) -> tuple[_Job, bool, Any]:
        try:
            conn.execute("SAVEPOINT job")
        except sqlite3.Error as exc:
            raise _TransactionLost(self._answer(exc)) from exc
        try:
            result = job.fn(conn)
        except BaseException as exc:  # the job's own failure; undo only its work
            answer = self._answer(exc)
            if not conn.in_transaction:
                raise _TransactionLost(answer) from exc
            try:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            except sqlite3.Error as undo:
                raise _TransactionLost(self.fault(undo) or answer) from undo
            return job, False, answer
        try:
            conn.execute("RELEASE job")
        except sqlite3.Error as exc:
            raise _TransactionLost(self._answer(exc)) from exc
        return job, True, result

    def _neighbour_error(self, error: BaseException) -> BaseException:
        """What the other writes of a transaction another write lost are answered with."""
        if isinstance(error, EdgenodeError):
            return error
        return StoreError(f"the transaction holding this write on {self.path.name} was rolled back by another "
                          f"write's failure ({type(error).__name__}: {error}); nothing of it was written")

    @staticmethod
    def _fail_lost(outcomes: list[tuple[_Job, bool, Any]], error: BaseException) -> None:
        for job, ok, value in outcomes:
            job.future.set_exception(error if ok else value)

    # -- health --------------------------------------------------------------

    def writer_problem(self, stuck_after_s: float) -> str | None:
        """Why this database cannot take writes now (a dead writer, a write running too long), or None."""
        if self._closed or self._writer is None:
            return None
        if not self._writer.is_alive():
            return "its writer thread has stopped"
        started = self._job_started
        if started is not None and time.monotonic() - started > stuck_after_s:
            return f"one write (or the wait for its lock) has been running for {time.monotonic() - started:.0f} s"
        return None

    def idle(self) -> bool:
        """Whether no write is running or queued (closing now waits for nothing)."""
        return self._job_started is None and self._queue.empty()

    def queued_writes(self) -> int:
        """Writes waiting for the writer (approximate)."""
        return self._queue.qsize()

    # -- reads -------------------------------------------------------------

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader connection inside one read transaction."""
        if self._closed:
            raise StoreError(f"database {self.path.name} is closed")
        try:
            conn = self._borrow_reader()
        except sqlite3.Error as exc:
            raise self._answer(exc) from exc
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = self.fault(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            self._readers.put(conn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Awaitable form of :meth:`read_sync`, run on the store's threads."""
        return await run_blocking(self.read_sync, fn)

    def _borrow_reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        with self._reader_lock:
            if self._reader_count < self._max_readers:
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
                self._reader_count += 1
                self._all_readers.append(conn)
                return conn
        try:
            return self._readers.get(timeout=self.write_timeout_s)
        except queue.Empty:
            raise StoreTimeout(f"no reader of {self.path.name} came free within {self.write_timeout_s:g} s",
                               database=self.path.name, started=False) from None
