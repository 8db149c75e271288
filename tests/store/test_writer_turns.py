"""The writer takes queued writes tenant by tenant in turn: one tenant's backlog delays another's write by one turn."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from edgenode.store.db import MAX_BATCH, Database
from edgenode.threads import current_tenant

BOUND_S = 60.0


def test_a_tenants_write_is_not_queued_behind_another_tenants_backlog(tmp_path: Path) -> None:
    order: list[str] = []
    gate, started = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        assert gate.wait(BOUND_S)
        order.append("hold")

    def note(name: str) -> Callable[[sqlite3.Connection], None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (?)", (name,))
            order.append(name)
        return write

    with Database(tmp_path / "shared.db", synchronous="OFF") as db:
        db.write_sync(lambda c: c.execute("CREATE TABLE t (v TEXT)"))
        first = db.submit(hold)
        try:
            assert started.wait(BOUND_S)
            token = current_tenant.set("alice")
            backlog = [db.submit(note(f"alice-{i}")) for i in range(2 * MAX_BATCH)]
            current_tenant.reset(token)
            token = current_tenant.set("bob")
            bob = db.submit(note("bob"))
            current_tenant.reset(token)
        finally:
            gate.set()
        for future in (first, *backlog, bob):
            future.result(BOUND_S)
        rows = db.read_sync(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
    assert rows == 2 * MAX_BATCH + 1  # every write committed
    # Bob's write went in the first transaction after the one holding the writer, right after alice's first.
    assert order.index("bob") <= 2, order.index("bob")
    assert [name for name in order if name.startswith("alice")] == [f"alice-{i}" for i in range(2 * MAX_BATCH)]
