"""One activation of a run: the agent code runs from the top, its host calls meet the journal.

Each host call takes the next journal position. A position that is already
journaled is answered from the journal (the effect is not repeated); the first
position past the journal's end performs the effect and journals its result.
A call whose kind or name differs from the journaled one at its position stops
the run with ``replay_mismatch``, naming both: no silent divergence.

Waiting calls (sleep, events, approvals, sub-agents, step back-off) write a
``waiting`` entry and the run's wake-up row in one transaction, then tell the
guest to unwind; the activation ends and nothing stays behind but rows.

For a fleet run, every write is appended to the fleet journal before the guest hears of it
(:meth:`Activation._replicate`); a refused append stops the activation (``fenced``). Once
this node's lease is lost, the activation starts no new effect.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgenode.agents.store import TERMINAL, dumps, loads, run_key, write_entry
from edgenode.errors import EdgenodeError, RunFenced

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

log = logging.getLogger(__name__)

#: Host calls that wait for something outside the run.
WAITS = frozenset({"sleep", "event", "approval", "agent.call", "wait_any"})
#: The event type approvals are delivered as (not accepted from clients).
APPROVAL_EVENT = "edgenode.approval"
#: Longest step back-off, in seconds.
MAX_BACKOFF_S = 3600.0


def describe_call(kind: str, name: str) -> dict[str, str]:
    """A call as shown in a mismatch report."""
    return {"kind": kind, "name": name}


class Activation:
    """Answers one activation's host calls; created per activation, dropped after it."""

    def __init__(self, engine: Agents, run: dict[str, Any], entries: list[dict[str, Any]],
                 config: dict[str, Any], files: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.run = run
        self.run_id: str = run["id"]
        #: Where the run is stored: ``tenant/id`` (journal and events refer to it).
        self.key: str = run.get("key") or run_key(run["tenant"], run["id"])
        self.config = config
        #: The agent version's source files.
        self.files: dict[str, str] = files or {}
        self.entries: dict[int, dict[str, Any]] = {e["position"]: e for e in entries}
        self.cursor = 0
        #: Set by the engine (paused, cancelled, terminated); the next host call stops the guest.
        self.stop_reason: str | None = None
        #: Set when the code diverged from the journal.
        self.mismatch: dict[str, Any] | None = None
        #: The runner's handle, so terminate can kill it.
        self.handle: Any = None
        self.calls = 0
        self._name_at_begin = ""
        #: The step whose body runs now, if it has a timeout: (position, name, options).
        self.open_step: tuple[int, str, dict[str, Any]] | None = None
        #: A fleet run: its writes go to the fleet journal too.
        self.fleet = run.get("placement") == "fleet"

    # -- the one entry point --------------------------------------------------

    def call(self, kind: str, name: str, request: Any) -> dict[str, Any]:
        """Answer one host call from the guest (see ``edgenode_guest.agent`` for replies)."""
        self.calls += 1
        if kind == "log":
            # "message" is a LogRecord attribute of its own: an extra by that name would raise.
            log.info("agent log", extra={"run": self.run_id,
                                         "agent_message": str((request or {}).get("message"))[:2000]})
            return {"ok": None}
        if self.stop_reason is not None:
            return {"stop": self.stop_reason}
        if not isinstance(name, str) or not isinstance(kind, str):
            return {"error": {"code": "validation_failed", "message": "call kind and name must be strings"}}
        position = self.cursor
        if position >= self.engine.settings.max_journal_entries:
            self.stop_reason = "journal_full"
            return {"stop": "journal_full"}
        entry = self.entries.get(position)
        if kind != "step.end" and self.fleet and self.engine.fleet is not None and self.engine.fleet.lost(self.key):
            # Another node owns the run: start nothing new (a finished step's result is still offered
            # to the journal, which refuses it if the new owner has claimed the run).
            self.stop_reason = "fenced"
            return {"stop": "fenced"}
        journal_kind = "step" if kind in ("step.begin", "step.end") else kind
        if entry is not None and (entry["kind"], entry["name"]) != (journal_kind, name):
            return self._diverged(position, entry, journal_kind, name)
        try:
            if kind == "step.begin":
                self._name_at_begin = name
                return self._step_begin(position, entry, request or {})
            if kind == "step.end":
                if self.open_step is not None:
                    self.open_step = None
                    getattr(self.engine.runner, "step_timeout", lambda h, t: None)(self.handle, None)
                return self._step_end(position, entry, name, request or {})
            if entry is not None and entry["status"] in ("ok", "error"):
                return self._replayed(entry)
            if kind in WAITS:
                return self._wait(position, entry, kind, name, request or {})
            return self._perform(position, kind, name, request)
        except RunFenced:
            self.stop_reason = "fenced"
            return {"stop": "fenced"}
        except EdgenodeError as exc:
            # Only storage failures get here; the guest unwinds and the run is retried later.
            log.warning("host call failed", extra={"run": self.run_id, "kind": kind, "error": exc.message})
            self.stop_reason = "host_error"
            return {"stop": "host_error"}

    def unconsumed(self) -> dict[str, Any] | None:
        """The first journaled entry this activation never reached, if the code finished early."""
        entry = self.entries.get(self.cursor)
        return entry

    # -- replay ---------------------------------------------------------------

    def _replayed(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.cursor += 1
        if entry["status"] == "error":
            return {"error": entry["result"]}
        return {"ok": entry["result"]}

    def _diverged(self, position: int, entry: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
        self.mismatch = {
            "position": position,
            "expected": describe_call(entry["kind"], entry["name"]),
            "actual": describe_call(kind, name),
        }
        self.stop_reason = "replay_mismatch"
        return {"stop": "replay_mismatch"}

    # -- steps ----------------------------------------------------------------

    def _step_begin(self, position: int, entry: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
        if entry is not None and entry["status"] in ("ok", "error"):
            return self._replayed(entry)
        if entry is not None:
            # A retrying step: run the next attempt once its back-off is over.
            retry_at = float((entry["result"] or {}).get("retry_at") or 0)
            if self.engine.now() < retry_at:
                return self._suspend_until(position, retry_at, {"kind": "retry", "step": entry["name"]})
        timeout = options.get("timeout")
        bound = getattr(self.engine.runner, "step_timeout", None)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and bound is not None:
            # A guest without threads cannot time its own step; the runner's budget does.
            self.open_step = (position, self._name_at_begin, options)
            bound(self.handle, float(timeout))
        return {"run": True, "attempt": (entry["attempts"] + 1) if entry is not None else 1}

    def step_timed_out(self) -> None:
        """Record a timed-out attempt of the open step (the runner killed the activation)."""
        if self.open_step is None:
            return
        position, name, options = self.open_step
        self.open_step = None
        self._step_end(position, self.entries.get(position), name, {
            **options, "error": {"type": "TimeoutError", "message": f"step timed out after {options['timeout']}s"}})

    def _step_end(self, position: int, entry: dict[str, Any] | None, name: str,
                  outcome: dict[str, Any]) -> dict[str, Any]:
        if entry is not None and entry["status"] in ("ok", "error"):
            return self._replayed(entry)  # the guest ran a step that was already journaled: keep the first
        now = self.engine.now()
        attempts = (entry["attempts"] if entry is not None else 0) + 1
        request = {k: outcome.get(k) for k in ("retries", "timeout", "backoff")}
        if "error" not in outcome:
            result = outcome.get("ok")
            limit = self.engine.settings.max_result_bytes
            if len(dumps(result)) > limit:
                outcome = {"error": {"type": "PayloadTooLarge",
                                     "message": f"step result exceeds the limit of {limit} bytes"}}
            else:
                self._write(position, "step", name, request, result, "ok", attempts)
                self.cursor += 1
                return {"ok": result}
        error = outcome["error"] if isinstance(outcome.get("error"), dict) else {"message": str(outcome["error"])}
        retries = max(0, int(outcome.get("retries") or 0))
        if attempts <= retries:
            backoff = max(0.0, float(outcome.get("backoff") or 0.0))
            retry_at = now + min(MAX_BACKOFF_S, backoff * 2 ** (attempts - 1))
            self._write(position, "step", name, request, {"error": error, "retry_at": retry_at}, "retrying", attempts)
            return self._suspend_until(position, retry_at, {"kind": "retry", "step": name, "attempts": attempts})
        self._write(position, "step", name, request, error, "error", attempts)
        self.cursor += 1
        return {"error": error}

    # -- immediate effects ----------------------------------------------------

    def _perform(self, position: int, kind: str, name: str, request: Any) -> dict[str, Any]:
        try:
            result = self.engine.effects.perform(self, kind, name, request)
        except EdgenodeError as exc:
            error = {"code": exc.code, "message": exc.message}
        except Exception as exc:  # a tool's own bug: the agent sees it, the node goes on
            log.exception("agent host call failed", extra={"run": self.run_id, "kind": kind})
            error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
        else:
            self._write(position, kind, name, request, result, "ok", 1)
            self.cursor += 1
            return {"ok": result}
        self._write(position, kind, name, request, error, "error", 1)
        self.cursor += 1
        return {"error": error}

    # -- waits ----------------------------------------------------------------

    def _wait(self, position: int, entry: dict[str, Any] | None, kind: str, name: str,
              request: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine
        if entry is None:
            try:
                spec = engine.effects.wait_spec(self, position, kind, name, request)
            except EdgenodeError as exc:
                error = {"code": exc.code, "message": exc.message}
                self._write(position, kind, name, request, error, "error", 1)
                self.cursor += 1
                return {"error": error}
        else:
            spec = entry["request"]

        def txn(conn: sqlite3.Connection) -> tuple[str, Any]:
            now = engine.now()
            if entry is None:
                engine.effects.begin_wait(conn, self, position, kind, spec)
                write_entry(conn, self.key, position, kind, name, dumps(spec), None, "waiting", 1, now)
            resolved, result = _resolve(conn, self.run["tenant"], self.key, position, kind, name, spec, now)
            if resolved:
                write_entry(conn, self.key, position, kind, name, dumps(spec), dumps(result), "ok", 1, now)
                return "ok", result
            waiting = {"kind": kind, "name": name, "position": position, **_public_spec(spec)}
            conn.execute(
                "UPDATE runs SET status = 'waiting', waiting = ?, wake_at = ?, updated_at = ? "
                "WHERE key = ? AND status = 'running'",
                (dumps(waiting), _wake_at(kind, spec), now, self.key),
            )
            return "wait", None

        outcome, result = engine.db.write_sync(txn)
        engine.feed.changed(self.key)
        self._replicate(events=True)
        self.entries[position] = {"position": position, "kind": kind, "name": name, "request": spec,
                                  "result": result, "status": "ok" if outcome == "ok" else "waiting", "attempts": 1}
        if outcome == "ok":
            self.cursor += 1
            return {"ok": result}
        return {"suspend": kind}

    def _suspend_until(self, position: int, until: float, waiting: dict[str, Any]) -> dict[str, Any]:
        now = self.engine.now()
        self.engine.db.write_sync(lambda c: c.execute(
            "UPDATE runs SET status = 'waiting', waiting = ?, wake_at = ?, updated_at = ? "
            "WHERE key = ? AND status = 'running'",
            (dumps({**waiting, "position": position, "until": until}), until, now, self.key),
        ))
        self.engine.feed.changed(self.key)
        self._replicate()
        return {"suspend": waiting["kind"]}

    # -- journal writes -------------------------------------------------------

    def _write(self, position: int, kind: str, name: str, request: Any, result: Any, status: str,
               attempts: int) -> None:
        now = self.engine.now()
        req, res = dumps(request), dumps(result)
        self.engine.db.write_sync(lambda c: write_entry(c, self.key, position, kind, name, req, res, status,
                                                        attempts, now))
        self.engine.feed.changed(self.key)
        self._replicate()
        self.entries[position] = {"position": position, "kind": kind, "name": name, "request": json.loads(req),
                                  "result": json.loads(res), "status": status, "attempts": attempts}

    def _replicate(self, *, events: bool = False) -> None:
        """Append this run's change to the fleet journal (RunFenced if another node owns the run now)."""
        fleet = self.engine.fleet
        if self.fleet and fleet is not None:
            fleet.append_sync(self.key, events=events)


def _public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items()
            if k in ("until", "deadline", "type", "prompt", "data", "child", "waits", "types")}


def _wake_at(kind: str, spec: dict[str, Any]) -> float | None:
    """When the scheduler must look at a waiting run again without being told (its earliest timer)."""
    if kind == "wait_any":
        timers = [float(w["until"]) for w in spec["waits"] if w["kind"] == "timer"]
        return min(timers) if timers else None
    at = spec.get("until") or spec.get("deadline")
    return None if at is None else float(at)


def _take_event(conn: sqlite3.Connection, key: str, types: list[str], position: int) -> sqlite3.Row | None:
    """The oldest unconsumed event of any of ``types``, marked consumed by the wait at ``position``."""
    marks = ",".join("?" * len(types))
    event: sqlite3.Row | None = conn.execute(
        f"SELECT id, type, payload, sender FROM events WHERE run_id = ? AND type IN ({marks}) "
        "AND consumed_position IS NULL ORDER BY id LIMIT 1", (key, *types)).fetchone()
    if event is not None:
        conn.execute("UPDATE events SET consumed_position = ? WHERE id = ?", (position, event["id"]))
    return event


def _resolve_any(conn: sqlite3.Connection, key: str, position: int, spec: dict[str, Any],
                 now: float) -> tuple[bool, Any]:
    """The first of several events or timers: an event already sent wins over a timer that is due."""
    waits: list[dict[str, Any]] = spec["waits"]
    types = [w["type"] for w in waits if w["kind"] == "event"]
    event = _take_event(conn, key, types, position) if types else None
    if event is not None:
        index = next(i for i, w in enumerate(waits) if w["kind"] == "event" and w["type"] == event["type"])
        return True, {"index": index, "kind": "event", "type": event["type"], "payload": loads(event["payload"]),
                      "sender": event["sender"]}
    due = [(float(w["until"]), i) for i, w in enumerate(waits) if w["kind"] == "timer" and now >= float(w["until"])]
    if due:
        until, index = min(due)
        return True, {"index": index, "kind": "timer", "until": until}
    return False, None


def _resolve(conn: sqlite3.Connection, tenant: str, key: str, position: int, kind: str, name: str,
             spec: dict[str, Any], now: float) -> tuple[bool, Any]:
    """Whether a wait is over, and its result."""
    if kind == "sleep":
        return (now >= float(spec["until"]), None)
    if kind == "wait_any":
        return _resolve_any(conn, key, position, spec, now)
    if kind == "agent.call":
        child = conn.execute("SELECT * FROM runs WHERE key = ?", (run_key(tenant, spec["child"]),)).fetchone()
        if child is None or child["status"] not in TERMINAL:
            return False, None
        return True, {"id": child["id"], "status": child["status"], "output": loads(child["output"]),
                      "error": loads(child["error"])}
    event = _take_event(conn, key, [APPROVAL_EVENT if kind == "approval" else name], position)
    if event is not None:
        payload = loads(event["payload"])
        if kind == "approval":
            return True, {**payload, "by": event["sender"]}
        return True, {"payload": payload, "sender": event["sender"]}
    deadline = spec.get("deadline")
    if deadline is not None and now >= float(deadline):
        return True, ({"approved": False, "timed_out": True} if kind == "approval" else None)
    return False, None


Clock = Callable[[], float]
