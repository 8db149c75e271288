"""The writer thread survives a full disk, a failed COMMIT and a stuck write; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from edgenode.errors import DatabaseDamaged, InsufficientStorage, StoreError, StoreTimeout
from edgenode.store import Database, Migration
from edgenode.store.health import StoreMonitor
from tests.store.disk import fill, free_bytes, small_disk
from tests.support import wait_for


def _items(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")


def _insert(size: int) -> Any:
    return lambda c: c.execute("INSERT INTO items (body) VALUES (?)", (os.urandom(size),)).lastrowid


def _count(db: Database) -> int:
    return int(db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0]))


@pytest.mark.parametrize("size", [2_000, 3_000_000], ids=["fails-at-commit", "fails-mid-statement"])
def test_full_disk_fails_the_writes_and_the_writer_goes_on_once_space_is_back(tmp_path: Path, size: int) -> None:
    with small_disk(tmp_path / "disk", 8) as disk:
        monitor = StoreMonitor(disk)
        with Database(disk / "a.db", [Migration("0001", _items)], monitor=monitor, purpose="test store") as db:
            acknowledged = [db.write_sync(_insert(100))]
            fill(disk / "filler")
            futures = [db.submit(_insert(size)) for _ in range(20)]
            errors = []
            for f in futures:
                try:
                    acknowledged.append(f.result(timeout=60))
                except InsufficientStorage as exc:
                    errors.append(exc)
            assert errors, "a full disk must refuse some writes"
            assert errors[0].status == 507 and errors[0].purpose == "test store"
            assert errors[0].free_bytes < 1 << 20
            assert monitor.stuck() == []
            assert _count(db) == len(acknowledged)  # reads keep working and no refused write landed

            (disk / "filler").unlink()
            assert free_bytes(disk) > 4 << 20
            acknowledged.append(db.write_sync(_insert(100)))
            acknowledged.append(asyncio.run(db.write(_insert(100))))
            assert _count(db) == len(acknowledged)
        with Database(disk / "a.db", [Migration("0001", _items)]) as db:
            assert _count(db) == len(acknowledged)


def test_neighbours_of_a_lost_transaction_are_retried_or_answered(tmp_path: Path) -> None:
    """A write whose failure makes SQLite drop the whole transaction never leaves its batch unanswered."""
    with Database(tmp_path / "b.db", [Migration("0001", _items)]) as db:
        gate = threading.Event()
        blocker = db.submit(lambda c: gate.wait(30))
        wait_for(blocker.running, timeout=30, message="the blocker to run")
        # Queued behind the blocker, these form one batch; the middle one ends the transaction itself.
        before = db.submit(_insert(10))
        killer = db.submit(lambda c: c.execute("ROLLBACK"))
        after = db.submit(_insert(10))
        gate.set()
        assert blocker.result(30) is True
        with pytest.raises(StoreError):
            before.result(30)  # rolled back with the transaction: answered, not silently lost
        with pytest.raises(sqlite3.OperationalError):
            killer.result(30)
        assert after.result(30) is not None  # retried in a fresh transaction
        assert _count(db) == 1
        assert db.writer_problem(60) is None


def test_a_stuck_write_is_reported_and_waits_on_it_are_bounded(tmp_path: Path) -> None:
    monitor = StoreMonitor(tmp_path, stuck_after_s=0.2)
    with Database(tmp_path / "c.db", [Migration("0001", _items)], write_timeout_s=0.5, monitor=monitor) as db:
        gate = threading.Event()
        stuck = db.submit(lambda c: gate.wait(60))
        try:
            problems = wait_for(monitor.stuck, timeout=30, message="the stuck writer to be reported")
            assert problems[0]["database"] == "c.db" and "running" in problems[0]["problem"]
            with pytest.raises(StoreTimeout) as info:
                db.write_sync(_insert(10))
            assert info.value.started is False and info.value.status == 503
            with pytest.raises(StoreTimeout):
                asyncio.run(db.write(_insert(10)))
            assert monitor.health()["ok"] is False
        finally:
            gate.set()
        assert stuck.result(30) is True
        wait_for(lambda: not monitor.stuck(), timeout=30, message="the writer to recover")
        db.write_sync(_insert(10))
        assert _count(db) == 1  # the timed-out writes were never started, so never written


class _BrokenWriter(Database):
    """A database whose writer loop has a bug on its first batch (what cannot be provoked otherwise)."""

    def _commit_batch(self, batch: list[Any]) -> list[Any]:
        raise RuntimeError("a bug in the writer")


def test_a_dead_writer_answers_its_callers_and_is_reported(tmp_path: Path) -> None:
    monitor = StoreMonitor(tmp_path)
    db = _BrokenWriter(tmp_path / "d.db", [Migration("0001", _items)], write_timeout_s=30, monitor=monitor).open()
    try:
        with pytest.raises((StoreError, StoreTimeout)):
            db.write_sync(_insert(10))
        problems = wait_for(monitor.stuck, timeout=30, message="the dead writer to be reported")
        assert "stopped" in problems[0]["problem"]
        with pytest.raises(StoreError, match="stopped"):
            db.write_sync(_insert(10))  # refused at once, not queued for nobody
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0]) == 0
    finally:
        db.close()


def test_a_reader_wait_is_bounded(tmp_path: Path) -> None:
    with Database(tmp_path / "e.db", [Migration("0001", _items)], readers=1, write_timeout_s=0.5) as db:
        gate = threading.Event()
        holder = threading.Thread(target=db.read_sync, args=(lambda c: gate.wait(60),))
        holder.start()
        try:
            wait_for(lambda: db._readers.qsize() == 0 and db._reader_count == 1, timeout=30,
                     message="the only reader to be borrowed")
            with pytest.raises(StoreTimeout):
                db.read_sync(lambda c: 1)
        finally:
            gate.set()
            holder.join(30)
        assert db.read_sync(lambda c: 1) == 1


def test_zero_readers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reader"):
        Database(tmp_path / "f.db", readers=0)


def test_a_lock_held_elsewhere_is_a_503_not_a_500_and_passes(tmp_path: Path) -> None:
    with Database(tmp_path / "g.db", [Migration("0001", _items)], busy_timeout_ms=50) as db:
        other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreTimeout) as info:
                db.write_sync(_insert(10))
            assert info.value.status == 503 and info.value.started is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        db.write_sync(_insert(10))
        assert _count(db) == 1


def test_damage_met_while_in_use_refuses_further_writes(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Database(path, [Migration("0001", _items)]) as db:
        for _ in range(20):
            db.write_sync(lambda c: c.executemany("INSERT INTO items (body) VALUES (?)",
                                                  [(os.urandom(2000),) for _ in range(20)]))
    with open(path, "r+b") as f:  # the clean close checkpointed everything into the file
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(32 * 1024))
    seen: list[DatabaseDamaged] = []
    db = Database(path, [Migration("0001", _items)]).open()
    db.on_damaged = seen.append
    try:
        with pytest.raises(DatabaseDamaged) as info:
            db.read_sync(lambda c: c.execute("SELECT sum(length(body)) FROM items").fetchone())
        assert info.value.status == 503 and info.value.database == "h.db"
        assert seen == [info.value]
        with pytest.raises(DatabaseDamaged):
            db.write_sync(_insert(10))
    finally:
        db.close()
