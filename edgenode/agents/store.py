"""The agents database: deployed versions, runs, the journal, events, schedules, usage.

Everything is JSON text in SQLite (never pickle). A waiting run is one row with a
``wake_at`` time and/or a ``waiting`` description; nothing else holds it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from edgenode.store import Migration

#: Statuses after which a run never changes again.
TERMINAL = ("completed", "failed", "cancelled", "terminated")
#: Statuses of a run that the scheduler may activate (``waiting`` only once due).
RUNNABLE = ("pending", "waiting")


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE agents (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            current_version INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'null',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, name)
        )"""
    )
    conn.execute(
        """CREATE TABLE agent_versions (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            hash TEXT NOT NULL,
            files TEXT NOT NULL,
            config TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (tenant, name, version)
        )"""
    )
    conn.execute(
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            agent TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            input TEXT NOT NULL DEFAULT 'null',
            output TEXT,
            error TEXT,
            waiting TEXT,
            wake_at REAL,
            parent_id TEXT,
            schedule TEXT,
            activations INTEGER NOT NULL DEFAULT 0,
            journal_pruned INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )"""
    )
    conn.execute("CREATE INDEX runs_due ON runs(status, wake_at)")
    conn.execute("CREATE INDEX runs_agent ON runs(tenant, agent, created_at)")
    conn.execute("CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL")
    conn.execute(
        """CREATE TABLE journal (
            run_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            request TEXT NOT NULL,
            result TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, position)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            sender TEXT,
            created_at REAL NOT NULL,
            consumed_position INTEGER
        )"""
    )
    conn.execute("CREATE INDEX events_run ON events(run_id, type, consumed_position)")
    conn.execute(
        """CREATE TABLE schedules (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            agent TEXT NOT NULL,
            cron TEXT NOT NULL,
            input TEXT NOT NULL DEFAULT 'null',
            next_at REAL NOT NULL,
            last_run_id TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (tenant, name)
        )"""
    )
    conn.execute(
        """CREATE TABLE secrets (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, name)
        )"""
    )
    conn.execute(
        """CREATE TABLE usage (
            tenant TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            calls INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant, provider, model)
        )"""
    )


MIGRATIONS = [Migration("agents-0001-tables", _create_tables)]


def dumps(value: Any) -> str:
    """Compact JSON for storage."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None) -> Any:
    """Parse stored JSON (None stays None)."""
    return None if text is None else json.loads(text)


def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A run row as the API shows it."""
    return {
        "id": row["id"],
        "tenant": row["tenant"],
        "agent": row["agent"],
        "version": row["version"],
        "status": row["status"],
        "input": loads(row["input"]),
        "output": loads(row["output"]),
        "error": loads(row["error"]),
        "waiting": loads(row["waiting"]),
        "wake_at": row["wake_at"],
        "parent_id": row["parent_id"],
        "schedule": row["schedule"],
        "activations": row["activations"],
        "journal_pruned": bool(row["journal_pruned"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }


def entry_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A journal row as the API shows it."""
    return {
        "position": row["position"],
        "kind": row["kind"],
        "name": row["name"],
        "request": loads(row["request"]),
        "result": loads(row["result"]),
        "status": row["status"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def get_run(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row | None:
    """The run row, or None."""
    row: sqlite3.Row | None = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row


def finish_run(conn: sqlite3.Connection, run_id: str, status: str, now: float, *, output: Any = None,
               error: Any = None, only_from: tuple[str, ...] | None = None) -> bool:
    """Record a run's outcome once: a run already finished is never changed (returns False)."""
    allowed = only_from or tuple(s for s in ("pending", "running", "waiting", "paused", "blocked"))
    marks = ",".join("?" * len(allowed))
    cur = conn.execute(
        f"""UPDATE runs SET status = ?, output = ?, error = ?, waiting = NULL, wake_at = NULL,
            updated_at = ?, finished_at = ? WHERE id = ? AND status IN ({marks})""",
        (status, dumps(output) if output is not None else None, dumps(error) if error is not None else None,
         now, now, run_id, *allowed),
    )
    if cur.rowcount and status in TERMINAL:
        _wake_parent(conn, run_id, now)
    return bool(cur.rowcount)


def _wake_parent(conn: sqlite3.Connection, run_id: str, now: float) -> None:
    """A finished child makes its waiting parent runnable again."""
    row = conn.execute("SELECT parent_id FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None or row["parent_id"] is None:
        return
    conn.execute(
        "UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE id = ? AND status = 'waiting'",
        (now, now, row["parent_id"]),
    )


def record_usage(conn: sqlite3.Connection, tenant: str, provider: str, model: str, usage: dict[str, Any]) -> None:
    """Add one model call's tokens to the tenant's meter."""
    conn.execute(
        """INSERT INTO usage (tenant, provider, model, calls, input_tokens, output_tokens) VALUES (?, ?, ?, 1, ?, ?)
           ON CONFLICT (tenant, provider, model) DO UPDATE SET calls = calls + 1,
           input_tokens = input_tokens + excluded.input_tokens,
           output_tokens = output_tokens + excluded.output_tokens""",
        (tenant, provider, model, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
    )
