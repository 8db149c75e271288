"""Acting on a run from outside: events, approvals, pause, resume, cancel, terminate, move.

Each control is one write transaction on the run's row (plus an event row), so a
control and the run's own progress never interleave halfway. A run that is
executing right now learns of pause, cancel and terminate at its next host call;
terminate also kills the activation at once.

A control on a fleet run is done where the run may be written (:func:`_route`): on this
node if it holds the run's lease or can claim it (a parked run holds none), else on the
node executing the run now, which gets it over NATS and runs the same function. So an
approval, event or cancel sent to any node reaches the run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from edgenode.agents.replay import APPROVAL_EVENT
from edgenode.agents.store import (
    TERMINAL,
    descendants,
    dumps,
    finish_run,
    get_run,
    load_entries,
    loads,
    run_dict,
    run_key,
    write_entry,
)
from edgenode.errors import Conflict, PayloadTooLarge, RunFinished, RunStateConflict, ValidationFailed

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents
    from edgenode.auth import Principal

T = TypeVar("T")


async def _route(engine: Agents, who: Principal, run_id: str, op: str, args: dict[str, Any],
                 here: Callable[[], Awaitable[T]], forwarded: bool) -> T:
    """Run the control ``here`` on this node, or on the node that owns the fleet run now."""
    fleet = engine.fleet
    if fleet is None:
        return await here()
    key = run_key(who.tenant, run_id)
    row = await engine.db.read(lambda c: c.execute("SELECT placement, status FROM runs WHERE key = ?",
                                                   (key,)).fetchone())
    if row is None or row["placement"] != "fleet" or row["status"] in TERMINAL:
        return await here()  # local, unknown (404) or finished (409): nothing to claim
    result: T = await fleet.act(key, who, op, args, here, forwarded=forwarded)
    return result


async def dispatch(engine: Agents, op: str, who: Principal, run_id: str, args: dict[str, Any], *,
                   forwarded: bool = False) -> Any:
    """A control by name (what another node forwards)."""
    if op == "event":
        return await send_event(engine, who, run_id, args.get("type"), args.get("payload"), forwarded=forwarded)
    if op == "decide":
        return await decide(engine, who, run_id, bool(args.get("approved")), str(args.get("comment") or ""),
                            args.get("approver"), forwarded=forwarded)
    if op == "pause":
        return await pause(engine, who, run_id, forwarded=forwarded)
    if op == "resume":
        return await resume(engine, who, run_id, forwarded=forwarded)
    if op in ("cancel", "terminate"):
        return await stop(engine, who, run_id, terminate=op == "terminate", cascade=bool(args.get("cascade", True)),
                          forwarded=forwarded)
    if op == "move":
        return await move(engine, who, run_id, args.get("version"), forwarded=forwarded)
    raise ValidationFailed(f"unknown control {op!r}", field="op")


def _checked(engine: Agents, conn: sqlite3.Connection, who: Principal, run_id: str) -> sqlite3.Row:
    row = get_run(conn, run_key(who.tenant, run_id))
    engine._owned(who, row, run_id)
    assert row is not None
    return row


def _open(row: sqlite3.Row, action: str) -> None:
    if row["status"] in TERMINAL:
        raise RunFinished(f"run {row['id']} has already finished ({row['status']}); cannot {action} it",
                          status=row["status"])


async def send_event(engine: Agents, who: Principal, run_id: str, type: Any, payload: Any, *,
                     forwarded: bool = False) -> dict[str, Any]:
    """Deliver an event to a run; it wakes the run if it waits for this type, else waits for it."""
    if not isinstance(type, str) or not type or len(type) > 200 or type.startswith("edgenode."):
        raise ValidationFailed("event type must be a non-empty string (not starting with 'edgenode.')",
                               field="type")
    text = dumps(payload)
    if len(text.encode()) > engine.settings.max_event_bytes:
        raise PayloadTooLarge(f"event payload exceeds {engine.settings.max_event_bytes} bytes",
                              limit=engine.settings.max_event_bytes)
    now = engine.now()

    def txn(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "send an event to")
        cur = conn.execute("INSERT INTO events (run_id, type, payload, sender, created_at) VALUES (?, ?, ?, ?, ?)",
                           (row["key"], type, text, who.tenant, now))
        waiting = loads(row["waiting"]) or {}
        woke = row["status"] == "waiting" and (
            (waiting.get("kind") == "event" and waiting.get("type") == type)
            or (waiting.get("kind") == "wait_any" and type in (waiting.get("types") or [])))
        if woke:
            conn.execute("UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE key = ?",
                         (now, now, row["key"]))
        return {"id": cur.lastrowid, "run": run_id, "type": type, "delivered": woke}

    async def here() -> dict[str, Any]:
        result: dict[str, Any] = await engine.db.write(txn)
        engine.feed.changed(run_key(who.tenant, run_id))
        engine.kick()
        return result

    return await _route(engine, who, run_id, "event", {"type": type, "payload": payload}, here, forwarded)


async def decide(engine: Agents, who: Principal, run_id: str, approved: bool, comment: str = "",
                 approver: str | None = None, *, forwarded: bool = False) -> dict[str, Any]:
    """Approve or reject the approval a run is waiting for; ``approver`` (a token's name) is recorded as its sender."""
    now = engine.now()

    def txn(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "decide on")
        waiting = loads(row["waiting"]) or {}
        if row["status"] not in ("waiting", "paused") or waiting.get("kind") != "approval":
            raise RunStateConflict(f"run {run_id} is not waiting for an approval", status=row["status"])
        pending = conn.execute("SELECT 1 FROM events WHERE run_id = ? AND type = ? AND consumed_position IS NULL",
                               (row["key"], APPROVAL_EVENT)).fetchone()
        if pending is not None:
            raise RunStateConflict(f"run {run_id}'s approval has already been decided")
        conn.execute("INSERT INTO events (run_id, type, payload, sender, created_at) VALUES (?, ?, ?, ?, ?)",
                     (row["key"], APPROVAL_EVENT, dumps({"approved": bool(approved), "comment": comment}),
                      approver or who.tenant, now))
        if row["status"] == "waiting":
            conn.execute("UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE key = ?",
                         (now, now, row["key"]))
        return {"run": run_id, "approved": bool(approved), "position": waiting.get("position"),
                "by": approver or who.tenant}

    async def here() -> dict[str, Any]:
        result: dict[str, Any] = await engine.db.write(txn)
        engine.feed.changed(run_key(who.tenant, run_id))
        engine.kick()
        return result

    args = {"approved": bool(approved), "comment": comment, "approver": approver}
    return await _route(engine, who, run_id, "decide", args, here, forwarded)


async def list_approvals(engine: Agents, tenant: str) -> list[dict[str, Any]]:
    """Runs of the tenant waiting for a human decision."""
    rows = await engine.db.read(lambda c: c.execute(
        "SELECT * FROM runs WHERE tenant = ? AND status IN ('waiting', 'paused') AND waiting LIKE '%\"approval\"%' "
        "ORDER BY updated_at", (tenant,)).fetchall())
    out = []
    for row in rows:
        run = run_dict(row)
        waiting = run["waiting"] or {}
        if waiting.get("kind") == "approval":
            out.append({"run": run["id"], "agent": run["agent"], "prompt": waiting.get("prompt"),
                        "data": waiting.get("data"), "deadline": waiting.get("deadline"),
                        "position": waiting.get("position"), "since": run["updated_at"]})
    return out


async def pause(engine: Agents, who: Principal, run_id: str, *, forwarded: bool = False) -> dict[str, Any]:
    """Stop scheduling a run; a running activation stops at its next host call."""
    def txn(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "pause")
        if row["status"] == "paused":
            return run_dict(row)
        conn.execute("UPDATE runs SET status = 'paused', updated_at = ? WHERE key = ?", (engine.now(), row["key"]))
        return run_dict(get_run(conn, row["key"]))  # type: ignore[arg-type]

    async def here() -> dict[str, Any]:
        run: dict[str, Any] = await engine.db.write(txn)
        engine.feed.changed(run_key(who.tenant, run_id))
        act = engine.active.get(run_key(who.tenant, run_id))
        if act is not None:
            act.stop_reason = "paused"
        return run

    return await _route(engine, who, run_id, "pause", {}, here, forwarded)


async def resume(engine: Agents, who: Principal, run_id: str, *, forwarded: bool = False) -> dict[str, Any]:
    """Make a paused (or blocked) run runnable again; it replays to where it stopped."""
    now = engine.now()

    def txn(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "resume")
        if row["status"] not in ("paused", "blocked"):
            raise RunStateConflict(f"run {run_id} is {row['status']}, not paused or blocked", status=row["status"])
        conn.execute("UPDATE runs SET status = 'pending', error = NULL, wake_at = ?, updated_at = ? WHERE key = ?",
                     (now, now, row["key"]))
        return run_dict(get_run(conn, row["key"]))  # type: ignore[arg-type]

    async def here() -> dict[str, Any]:
        run: dict[str, Any] = await engine.db.write(txn)
        engine.feed.changed(run_key(who.tenant, run_id))
        engine.kick()
        return run

    return await _route(engine, who, run_id, "resume", {}, here, forwarded)


async def stop(engine: Agents, who: Principal, run_id: str, *, terminate: bool, cascade: bool = True,
               forwarded: bool = False) -> dict[str, Any]:
    """Cancel (stop at the next host call) or terminate (kill now) a run; its outcome is final.

    The run's unfinished sub-agent runs, at any depth, get the same outcome in the same
    transaction: a parent that will never read their results leaves none running. Sub-runs
    of a fleet run have leases of their own: each is stopped after the parent, where it is owned.
    """
    status = "terminated" if terminate else "cancelled"

    def txn(conn: sqlite3.Connection) -> tuple[dict[str, Any], list[str]]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "cancel" if not terminate else "terminate")
        now = engine.now()
        children = descendants(conn, who.tenant, run_id) if cascade else []
        if row["placement"] == "fleet" and engine.fleet is not None:
            children = []  # stopped one by one below, each where it is owned
        finish_run(conn, row["key"], status, now, error={"code": status, "message": f"run {status} by {who.tenant}"})
        for child in children:
            finish_run(conn, child["key"], status, now, error={
                "code": status, "message": f"run {status} with its parent {run_id}"})
        return run_dict(get_run(conn, row["key"])), [row["key"], *(c["key"] for c in children)]  # type: ignore[arg-type]

    async def here() -> dict[str, Any]:
        run, keys = await engine.db.write(txn)
        for key in keys:
            engine.feed.changed(key)
            act = engine.active.get(key)
            if act is not None:
                act.stop_reason = status
                if terminate:
                    engine.runner.kill(act.handle)
        engine.kick()
        result: dict[str, Any] = run
        return result

    op = "terminate" if terminate else "cancel"
    run = await _route(engine, who, run_id, op, {"cascade": cascade}, here, forwarded)
    if cascade and engine.fleet is not None and run.get("placement") == "fleet":
        children = await engine.db.read(lambda c: descendants(c, who.tenant, run_id))
        for child in children:
            try:
                await stop(engine, who, child["id"], terminate=terminate, cascade=False)
            except RunFinished:
                pass
    return run


async def move(engine: Agents, who: Principal, run_id: str, version: Any, *,
               forwarded: bool = False) -> dict[str, Any]:
    """Pin a run to another version of its agent; it replays its journal against that code.

    If the new code makes the same journaled calls up to where the run stopped, the run
    carries on with the new code; if not, it is ``blocked`` with ``replay_mismatch`` and can
    be moved back.
    """
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValidationFailed("version must be an integer", field="version")
    now = engine.now()

    def txn(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _checked(engine, conn, who, run_id)
        _open(row, "move")
        if row["status"] == "running":
            raise RunStateConflict(f"run {run_id} is executing; pause it first", status=row["status"])
        if conn.execute("SELECT 1 FROM agent_versions WHERE tenant = ? AND name = ? AND version = ?",
                        (row["tenant"], row["agent"], version)).fetchone() is None:
            raise ValidationFailed(f"agent {row['agent']} has no version {version}", field="version")
        if row["status"] == "paused":
            conn.execute("UPDATE runs SET version = ?, updated_at = ? WHERE key = ?", (version, now, row["key"]))
        else:
            # Replay at once against the new code, so a mismatch shows now, not when the wait ends.
            conn.execute("UPDATE runs SET version = ?, status = 'pending', error = NULL, wake_at = ?, "
                         "updated_at = ? WHERE key = ?", (version, now, now, row["key"]))
        return run_dict(get_run(conn, row["key"]))  # type: ignore[arg-type]

    async def here() -> dict[str, Any]:
        run: dict[str, Any] = await engine.db.write(txn)
        engine.feed.changed(run_key(who.tenant, run_id))
        engine.kick()
        return run

    return await _route(engine, who, run_id, "move", {"version": version}, here, forwarded)


async def restart(engine: Agents, who: Principal, run_id: str, from_step: int, *, new_id: str | None = None,
                  version: int | None = None) -> tuple[dict[str, Any], bool]:
    """Start a new run of a finished run's agent that replays its journal up to ``from_step``.

    Journal positions ``0 .. from_step - 1`` are copied into the new run, which answers them
    from the copy and executes everything from ``from_step`` on (Temporal's reset, DBOS's
    fork). The old run and its history stay as they are; the new run names it in
    ``restarted_from``. It runs the agent's current version unless ``version`` is given, so
    a fix deployed after a failure is what the restart runs. With ``new_id``, restarting
    again with the same id and step returns the first restart (created False).
    """
    if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
        raise ValidationFailed("from_step must be a journal position (an integer >= 0)", field="from_step")

    def txn(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
        row = _checked(engine, conn, who, run_id)
        if row["status"] not in TERMINAL:
            raise RunStateConflict(f"run {run_id} is {row['status']}; only a finished run can be restarted "
                                   "(cancel it first)", status=row["status"])
        if new_id is not None:
            existing = get_run(conn, run_key(who.tenant, new_id))
            if existing is not None:
                if (existing["restarted_from"], existing["restart_step"]) == (run_id, from_step):
                    return run_dict(existing), False
                raise Conflict(f"run id {new_id!r} is already used by another run")
        if row["journal_pruned"]:
            raise RunStateConflict(f"run {run_id}'s journal has been pruned (agents.retention_days); "
                                   "it cannot be restarted", status=row["status"])
        entries = load_entries(conn, row["key"])
        if from_step > len(entries):
            raise ValidationFailed(f"from_step must be between 0 and {len(entries)} (the run's journal has "
                                   f"{len(entries)} entries)", field="from_step")
        kept = entries[:from_step]
        for entry in kept:
            if entry["status"] not in ("ok", "error"):
                raise ValidationFailed(f"the journal entry at position {entry['position']} never finished "
                                       f"({entry['status']}); restart from position {entry['position']} at the "
                                       "latest", field="from_step")
        run, _ = engine.create_run_txn(conn, tenant=who.tenant, agent=row["agent"], input=loads(row["input"]),
                                       run_id=new_id, version=version, restarted_from=(run_id, from_step),
                                       placement=row["placement"])
        now = engine.now()
        key = run_key(who.tenant, run["id"])
        for entry in kept:
            write_entry(conn, key, entry["position"], entry["kind"], entry["name"], dumps(entry["request"]),
                        dumps(entry["result"]), entry["status"], entry["attempts"], now)
        return run, True

    result = await engine.db.write(txn)
    engine.kick()
    return result


async def set_secret(engine: Agents, tenant: str, name: str, value: Any) -> None:
    """Store a tenant secret (model keys such as OPENAI_API_KEY); never shown back."""
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or len(name) > 100:
        raise ValidationFailed("a secret name is letters, digits and '_'", field="name")
    if not isinstance(value, str) or not value:
        raise ValidationFailed("field 'value' must be a non-empty string", field="value")
    await engine.db.write(lambda c: c.execute(
        "INSERT INTO secrets (tenant, name, value, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, name) "
        "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at", (tenant, name, value, engine.now())))
    await engine.changes.emit("secret", tenant, name)


async def usage(engine: Agents, tenant: str) -> list[dict[str, Any]]:
    """The tenant's model usage by provider and model."""
    return await engine.db.read(lambda c: [dict(r) for r in c.execute(
        "SELECT provider, model, calls, input_tokens, output_tokens FROM usage WHERE tenant = ? "
        "ORDER BY provider, model", (tenant,))])
