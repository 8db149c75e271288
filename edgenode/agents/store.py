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


def _tenant_run_ids(conn: sqlite3.Connection) -> None:
    """Run ids become per tenant: a run's ``key`` is ``tenant/id``; journal and events refer to the key.

    Also adds what a restart records (``restarted_from``, ``restart_step``) and the run log that
    ``GET .../events`` streams: one row per journal entry written and per status change, kept
    by triggers so every writer is covered.
    """
    conn.execute("ALTER TABLE runs RENAME TO runs_0001")
    for index in ("runs_due", "runs_agent", "runs_finished"):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    conn.execute(
        """CREATE TABLE runs (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
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
            restarted_from TEXT,
            restart_step INTEGER,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            UNIQUE (tenant, id)
        )"""
    )
    columns = ("id, tenant, agent, version, status, input, output, error, waiting, wake_at, parent_id, schedule, "
               "activations, journal_pruned, created_at, updated_at, finished_at")
    conn.execute(f"INSERT INTO runs (key, {columns}) SELECT tenant || '/' || id, {columns} FROM runs_0001")
    for table in ("journal", "events"):
        conn.execute(f"UPDATE {table} SET run_id = (SELECT r.tenant || '/' || r.id FROM runs_0001 r "
                     f"WHERE r.id = {table}.run_id) WHERE run_id IN (SELECT id FROM runs_0001)")
    conn.execute("DROP TABLE runs_0001")
    conn.execute("CREATE INDEX runs_due ON runs(status, wake_at)")
    conn.execute("CREATE INDEX runs_agent ON runs(tenant, agent, created_at)")
    conn.execute("CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL")
    conn.execute("CREATE INDEX runs_parent ON runs(tenant, parent_id) WHERE parent_id IS NOT NULL")
    # AUTOINCREMENT: a sequence number is never handed out twice, even after pruning, so a
    # client resuming from Last-Event-ID never skips or repeats an entry.
    conn.execute(
        """CREATE TABLE run_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            run_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            position INTEGER,
            status TEXT NOT NULL,
            created_at REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX run_log_run ON run_log(run_key, seq)")
    conn.execute(
        """CREATE TRIGGER run_log_journal_insert AFTER INSERT ON journal BEGIN
            INSERT INTO run_log (run_key, kind, position, status, created_at)
            VALUES (new.run_id, 'journal', new.position, new.status, new.updated_at); END"""
    )
    conn.execute(
        """CREATE TRIGGER run_log_journal_update AFTER UPDATE ON journal
            WHEN old.status IS NOT new.status OR old.result IS NOT new.result OR old.attempts IS NOT new.attempts
            BEGIN INSERT INTO run_log (run_key, kind, position, status, created_at)
            VALUES (new.run_id, 'journal', new.position, new.status, new.updated_at); END"""
    )
    conn.execute(
        """CREATE TRIGGER run_log_run_insert AFTER INSERT ON runs BEGIN
            INSERT INTO run_log (run_key, kind, position, status, created_at)
            VALUES (new.key, 'status', NULL, new.status, new.updated_at); END"""
    )
    conn.execute(
        """CREATE TRIGGER run_log_run_status AFTER UPDATE OF status ON runs WHEN old.status IS NOT new.status
            BEGIN INSERT INTO run_log (run_key, kind, position, status, created_at)
            VALUES (new.key, 'status', NULL, new.status, new.updated_at); END"""
    )


def _fleet_runs(conn: sqlite3.Connection) -> None:
    """Runs get a placement (``local``: this node only; ``fleet``: owned by lease, journal replicated).

    ``fleet_runs`` is this node's bookkeeping of each fleet run's replicated journal: the stream
    sequence of the last record applied here, and the owner and fence that record named.
    Existing runs stay ``local``: they were started before the node was in a fleet.
    """
    conn.execute("ALTER TABLE runs ADD COLUMN placement TEXT NOT NULL DEFAULT 'local'")
    conn.execute(
        """CREATE TABLE fleet_runs (
            key TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            owner TEXT,
            fence INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX runs_placement ON runs(placement, status, wake_at) WHERE placement = 'fleet'")


MIGRATIONS = [Migration("agents-0001-tables", _create_tables),
              Migration("agents-0002-tenant-run-ids", _tenant_run_ids),
              Migration("agents-0003-fleet-runs", _fleet_runs)]

#: Where a run executes: ``local`` (pinned to the node that started it) or ``fleet`` (any node, by lease).
PLACEMENTS = ("local", "fleet")


def run_key(tenant: str, run_id: str) -> str:
    """The key a run is stored under: its id is unique only within its tenant."""
    return f"{tenant}/{run_id}"


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
        "restarted_from": (None if row["restarted_from"] is None
                           else {"run": row["restarted_from"], "step": row["restart_step"]}),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
        "placement": row["placement"],
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


def load_entries(conn: sqlite3.Connection, key: str) -> list[dict[str, Any]]:
    """A run's journal, by position."""
    return [entry_dict(r) for r in conn.execute("SELECT * FROM journal WHERE run_id = ? ORDER BY position", (key,))]


def write_entry(conn: sqlite3.Connection, key: str, position: int, kind: str, name: str, request: str,
                result: str | None, status: str, attempts: int, now: float) -> None:
    """Record the journal entry at ``position`` (new, or a waiting or retrying one settled).

    Every journal write of this node goes through here. For a fleet run the caller then
    appends the change to the run's replicated journal (``edgenode.agents.fleetjournal``)
    before the guest learns of it; entries other nodes wrote arrive through that journal's
    consumer, which applies them to this same table.
    """
    conn.execute(
        """INSERT INTO journal (run_id, position, kind, name, request, result, status, attempts, created_at,
           updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (run_id, position) DO UPDATE SET kind = excluded.kind, name = excluded.name,
           request = excluded.request, result = excluded.result, status = excluded.status,
           attempts = excluded.attempts, updated_at = excluded.updated_at""",
        (key, position, kind, name, request, result, status, attempts, now, now),
    )


def get_run(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    """The run row stored under ``key`` (``run_key(tenant, id)``), or None."""
    row: sqlite3.Row | None = conn.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
    return row


def finish_run(conn: sqlite3.Connection, key: str, status: str, now: float, *, output: Any = None,
               error: Any = None, only_from: tuple[str, ...] | None = None) -> bool:
    """Record a run's outcome once: a run already finished is never changed (returns False).

    The status check in the UPDATE is the exactly-once guard: a cancel and a completing
    activation may race, and whichever commits second changes nothing.
    """
    allowed = only_from or tuple(s for s in ("pending", "running", "waiting", "paused", "blocked"))
    marks = ",".join("?" * len(allowed))
    cur = conn.execute(
        f"""UPDATE runs SET status = ?, output = ?, error = ?, waiting = NULL, wake_at = NULL,
            updated_at = ?, finished_at = ? WHERE key = ? AND status IN ({marks})""",
        (status, dumps(output) if output is not None else None, dumps(error) if error is not None else None,
         now, now, key, *allowed),
    )
    if cur.rowcount and status in TERMINAL:
        _wake_parent(conn, key, now)
    return bool(cur.rowcount)


def _wake_parent(conn: sqlite3.Connection, key: str, now: float) -> None:
    """A finished child makes its waiting parent runnable again."""
    row = conn.execute("SELECT tenant, parent_id FROM runs WHERE key = ?", (key,)).fetchone()
    if row is None or row["parent_id"] is None:
        return
    conn.execute(
        "UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE key = ? AND status = 'waiting'",
        (now, now, run_key(row["tenant"], row["parent_id"])),
    )


def descendants(conn: sqlite3.Connection, tenant: str, run_id: str) -> list[sqlite3.Row]:
    """Every unfinished sub-agent run below ``run_id``, at any depth (children before their children)."""
    marks = ",".join("?" * len(TERMINAL))
    rows: list[sqlite3.Row] = conn.execute(
        f"""WITH RECURSIVE below(id, depth) AS (
               SELECT id, 1 FROM runs WHERE tenant = ? AND parent_id = ?
               UNION SELECT r.id, below.depth + 1 FROM runs r JOIN below ON r.tenant = ? AND r.parent_id = below.id)
            SELECT runs.* FROM below JOIN runs ON runs.tenant = ? AND runs.id = below.id
            WHERE runs.status NOT IN ({marks}) ORDER BY below.depth""",
        (tenant, run_id, tenant, tenant, *TERMINAL)).fetchall()
    return rows


def record_usage(conn: sqlite3.Connection, tenant: str, provider: str, model: str, usage: dict[str, Any]) -> None:
    """Add one model call's tokens to the tenant's meter."""
    conn.execute(
        """INSERT INTO usage (tenant, provider, model, calls, input_tokens, output_tokens) VALUES (?, ?, ?, 1, ?, ?)
           ON CONFLICT (tenant, provider, model) DO UPDATE SET calls = calls + 1,
           input_tokens = input_tokens + excluded.input_tokens,
           output_tokens = output_tokens + excluded.output_tokens""",
        (tenant, provider, model, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
    )
