"""The records of a fleet run's replicated journal: what a record holds, how a node builds and applies one.

A record is one JSON message on the run's subject: ``key``, ``node`` (the writer), ``fence``
(the writer's lease fence), ``run`` (the run's row, every column; ``input`` only in the
first record), ``entries`` (the journal entries changed since the writer's previous record,
as lists in :data:`ENTRY_COLUMNS` order) and, when they changed, ``events`` (all of the
run's events, in :data:`EVENT_COLUMNS` order). Applying is an upsert, once per stream
sequence, so records may be applied again (a redelivery, a catch-up) without effect.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edgenode.agents.store import get_run
from edgenode.errors import Unavailable

#: Journal columns a record carries, in order.
ENTRY_COLUMNS = ("position", "kind", "name", "request", "result", "status", "attempts", "created_at", "updated_at")
EVENT_COLUMNS = ("type", "payload", "sender", "created_at", "consumed_position")


def build_record(conn: sqlite3.Connection, key: str, since: int, *, events: bool,
                 with_input: bool) -> tuple[dict[str, Any], int]:
    """The record of run ``key`` now: its row, entries changed after run-log ``since``; and the new mark."""
    row = get_run(conn, key)
    if row is None:
        raise Unavailable(f"run {key} is not in this node's copy")
    run = {name: row[name] for name in row.keys()}
    if not with_input:
        del run["input"]
    mark = conn.execute("SELECT MAX(seq) FROM run_log WHERE run_key = ?", (key,)).fetchone()[0] or since
    positions = [r[0] for r in conn.execute(
        "SELECT DISTINCT position FROM run_log WHERE run_key = ? AND seq > ? AND kind = 'journal'", (key, since))]
    marks = ",".join("?" * len(positions))
    entries = [list(r) for r in conn.execute(
        f"SELECT {', '.join(ENTRY_COLUMNS)} FROM journal WHERE run_id = ? AND position IN ({marks}) "
        "ORDER BY position", (key, *positions))] if positions else []
    record: dict[str, Any] = {"v": 1, "key": key, "run": run, "entries": entries}
    if events:
        record["events"] = [list(r) for r in conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE run_id = ? ORDER BY id", (key,))]
    return record, mark


def apply_record(conn: sqlite3.Connection, record: dict[str, Any], seq: int, *, node_id: str,
                 run_columns: frozenset[str], own: bool = False) -> bool:
    """Apply one record at stream ``seq`` to this node's copy (once; older ones are skipped).

    A record this node wrote itself is already in its copy (committed before the append) and
    only moves the bookkeeping on, unless ``own`` (a re-read after a refused append).
    """
    key = record["key"]
    done = conn.execute("SELECT seq FROM fleet_runs WHERE key = ?", (key,)).fetchone()
    if done is not None and done[0] >= seq:
        return False
    if own or record.get("node") != node_id:
        run = {k: v for k, v in record["run"].items() if k in run_columns}
        run["key"] = key
        names = list(run)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "key")
        conn.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                     f"ON CONFLICT (key) DO UPDATE SET {updates}", [run[n] for n in names])
        for entry in record.get("entries") or []:
            conn.execute(
                f"""INSERT INTO journal (run_id, {', '.join(ENTRY_COLUMNS)}) VALUES (?, {', '.join('?' * 9)})
                    ON CONFLICT (run_id, position) DO UPDATE SET kind = excluded.kind, name = excluded.name,
                    request = excluded.request, result = excluded.result, status = excluded.status,
                    attempts = excluded.attempts, updated_at = excluded.updated_at""", (key, *entry))
        if record.get("events") is not None:
            conn.execute("DELETE FROM events WHERE run_id = ?", (key,))
            for event in record["events"]:
                conn.execute(f"INSERT INTO events (run_id, {', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                             (key, *event))
    conn.execute("INSERT INTO fleet_runs (key, seq, owner, fence) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                 "SET seq = excluded.seq, owner = excluded.owner, fence = excluded.fence",
                 (key, seq, record.get("node"), int(record.get("fence") or 0)))
    return True
