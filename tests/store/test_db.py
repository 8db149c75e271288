from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from edgenode.errors import MigrationFailed, StoreError
from edgenode.store import Database, Migration


def _items(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    calls = []

    def second(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE items ADD COLUMN size INTEGER")

    migrations = [Migration("0001-items", _items), Migration("0002-size", second)]
    with Database(tmp_path / "a.db", migrations) as db:
        assert db.applied_migrations() == ["0001-items", "0002-size"]
    with Database(tmp_path / "a.db", migrations) as db:
        assert db.applied_migrations() == ["0001-items", "0002-size"]
        db.write_sync(lambda c: c.execute("INSERT INTO items (name, size) VALUES ('x', 3)"))
    assert calls == [1]


def test_failed_migration_rolls_back_and_names_itself(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    db = Database(tmp_path / "b.db", [Migration("0001-items", _items), Migration("0002-broken", broken)])
    with pytest.raises(MigrationFailed) as info:
        db.open()
    assert info.value.migration == "0002-broken"
    conn = sqlite3.connect(tmp_path / "b.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables and "items" in tables
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == ["0001-items"]


def test_wal_mode_and_busy_timeout(tmp_path: Path) -> None:
    with Database(tmp_path / "c.db", busy_timeout_ms=1234) as db:
        assert db.read_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert db.read_sync(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) == 1234


def test_failing_write_does_not_undo_its_neighbours(tmp_path: Path) -> None:
    with Database(tmp_path / "d.db", [Migration("0001-items", _items)]) as db:
        futures = []
        for i in range(50):
            name = "dup" if i % 10 == 0 else f"n{i}"
            futures.append(db.submit(lambda c, name=name: c.execute("INSERT INTO items (name) VALUES (?)", (name,))))
        errors = 0
        for f in futures:
            try:
                f.result()
            except sqlite3.IntegrityError:
                errors += 1
        assert errors == 4  # the 2nd..5th "dup"
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0]) == 46


def test_concurrent_writers_from_threads_and_the_event_loop(tmp_path: Path) -> None:
    with Database(tmp_path / "e.db", [Migration("0001-items", _items)]) as db:
        def worker(t: int) -> None:
            for i in range(100):
                db.write_sync(lambda c, t=t, i=i: c.execute("INSERT INTO items (name) VALUES (?)", (f"t{t}-{i}",)))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()

        async def from_loop() -> None:
            await asyncio.gather(*(db.write(lambda c, i=i: c.execute(
                "INSERT INTO items (name) VALUES (?)", (f"loop-{i}",))) for i in range(100)))

        asyncio.run(from_loop())
        for t in threads:
            t.join()
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0]) == 500


def test_acknowledged_writes_survive_reopening(tmp_path: Path) -> None:
    with Database(tmp_path / "f.db", [Migration("0001-items", _items)]) as db:
        db.write_sync(lambda c: c.execute("INSERT INTO items (name) VALUES ('kept')"))
    conn = sqlite3.connect(tmp_path / "f.db")
    assert conn.execute("SELECT name FROM items").fetchall() == [("kept",)]


def test_readers_cannot_write(tmp_path: Path) -> None:
    with Database(tmp_path / "g.db", [Migration("0001-items", _items)]) as db:
        with pytest.raises(sqlite3.OperationalError):
            db.read_sync(lambda c: c.execute("INSERT INTO items (name) VALUES ('no')"))


def test_nested_write_is_refused_not_deadlocked(tmp_path: Path) -> None:
    with Database(tmp_path / "h.db", [Migration("0001-items", _items)]) as db:
        with pytest.raises(StoreError):
            db.write_sync(lambda c: db.write_sync(lambda c2: None))


def test_closed_database_refuses_work(tmp_path: Path) -> None:
    db = Database(tmp_path / "i.db").open()
    db.close()
    with pytest.raises(StoreError):
        db.write_sync(lambda c: None)
    with pytest.raises(StoreError):
        db.read_sync(lambda c: None)
