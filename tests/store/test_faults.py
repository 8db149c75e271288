"""Disk faults are named: real ENOSPC, SQLITE_FULL and damaged files map to 507 / 503 errors, nothing else does."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edgenode.errors import DatabaseDamaged, InsufficientStorage
from edgenode.store.faults import storage_fault
from tests.store.disk import fill, small_disk


def test_a_full_disk_is_insufficient_storage_with_free_bytes_and_purpose(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 2) as disk:
        fill(disk / "filler")
        with pytest.raises(OSError) as raised:
            with open(disk / "more", "wb") as f:
                f.write(os.urandom(1 << 20))
        error = storage_fault(raised.value, disk, "build cache")
        assert isinstance(error, InsufficientStorage)
        assert error.status == 507 and error.purpose == "build cache" and error.free_bytes < 64 * 1024
        assert "build cache" in error.message

        conn = sqlite3.connect(disk / "x.db")
        with pytest.raises(sqlite3.Error) as sql_raised:
            conn.execute("CREATE TABLE t (v)")
            conn.execute("INSERT INTO t VALUES (?)", (os.urandom(1 << 20),))
            conn.commit()
        conn.close()
        assert isinstance(storage_fault(sql_raised.value, disk, "namespace x"), InsufficientStorage)


def test_a_file_that_is_not_a_database_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "bad.db").write_bytes(b"this is no SQLite file" * 500)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        sqlite3.connect(tmp_path / "bad.db").execute("SELECT * FROM sqlite_master")
    error = storage_fault(raised.value, tmp_path / "bad.db", "node database", database="bad.db")
    assert isinstance(error, DatabaseDamaged) and error.status == 503 and error.database == "bad.db"


def test_other_failures_are_not_disk_faults(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v UNIQUE)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as raised:
        conn.execute("INSERT INTO t VALUES (1)")
    assert storage_fault(raised.value, tmp_path, "x") is None
    assert storage_fault(FileNotFoundError(2, "gone"), tmp_path, "x") is None
    assert storage_fault(ValueError("no"), tmp_path, "x") is None
