"""Fleet runs: a replicated journal per run, ownership by lease, takeover, controls from any node.

**The stream.** Every fleet run has one subject in the fleet stream ``AGENTS``
(``<prefix>.agents.run.<hash of the run key>``). Each message is a *record*
(:mod:`edgenode.agents.records`): the run's row as it is after a change, the journal
entries that changed since the writer's previous record, and (when they changed) the
run's events. The stream is the truth; each node's
SQLite journal is its applied copy, fed by one durable consumer per node, and replay reads
that copy exactly as it does for a local run. So ``GET /v1/agents/runs``, the approvals page
and a run's history answer from any node, and every node knows every parked run's timer.

**Fencing.** A record is appended with ``Nats-Expected-Last-Subject-Sequence`` set to the
last sequence the writer saw on the run's subject, and carries the writer's fence (the
revision at which it acquired the lease, :mod:`edgenode.agents.lease`). A node that claims a
run catches its copy up from the subject and appends a claim record at once, so from then
on an append from the former owner (paused, partitioned, or slow to notice) names a stale
sequence and is refused: it raises :class:`~edgenode.errors.RunFenced`, the former owner
stops the run locally and re-reads its copy from the stream. A journal position is settled
(``ok`` or ``error``) in at most one record fleet-wide, and the run's outcome likewise:
only the lease holder appends, one at a time per run.

**Order of a write.** The holder commits the change to its SQLite copy, then appends the
record, and only then answers the guest (or the client). A change whose append is refused
or unanswered is dropped by the re-read; the guest never sees it, so no step result is used
that the fleet does not have. Effects inside a step may run again on the new owner (as after
any crash): steps are at-least-once, their recorded results exactly once.

**Leases only while executing.** A run holds its lease from claim to the end of the
activation; a run that parks (approval, event, timer, sub-agent) releases it. A wake-up
(an approval, event or cancel sent to any node, or a timer that every node sees due in its
copy) claims the lease by compare-and-set: exactly one node wins and executes the wake.
A control for a run another live node executes now is forwarded to that node over NATS
(``<prefix>.agents.control.<node id>``).

**Takeover.** Each scheduler tick looks at the fleet runs its copy shows pending, running,
or waiting and due, that no node here executes; for those another node should be
running it checks the lease at most every half TTL. An expired lease (not renewed for
``agents.lease_ttl_s``, or its holder reported stopped) is claimed; the run goes back to
pending in the new owner's copy and replays from its last record.

Known limits: a record carries all of a run's events when they change, so a run with very
many events makes large records; records of finished runs stay on the stream until a node
prunes the run (then its subject is purged); records are authenticated by the fleet's NATS
credentials, not signed one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from edgenode.agents.lease import WRONG_LAST_SEQUENCE, Lease, Leases, token
from edgenode.agents.records import apply_record, build_record
from edgenode.agents.store import TERMINAL
from edgenode.cluster.transport import Bucket, NatsTransport, dumps
from edgenode.errors import EdgenodeError, RunFenced, Unavailable

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents
    from edgenode.auth import Principal

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM = "AGENTS"
LEASES = "LEASES"
#: Records applied per transaction by the consumer.
BATCH = 256
#: Tries of one append that is not answered (each bounded by the transport's request timeout).
APPEND_ATTEMPTS = 3
class FleetJournal:
    """This node's side of fleet runs: leases it holds, its appends, its applied copy, forwarded controls."""

    def __init__(self, engine: Agents, transport: NatsTransport, *, stopped: Callable[[str], bool] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.transport = transport
        self.node_id = transport.node_id
        self.ttl_s = engine.settings.lease_ttl_s
        self._stopped = stopped
        self._now = now
        self.stream = ""
        self.leases: Leases | None = None
        #: Leases this node holds, by run key.
        self.held: dict[str, Lease] = {}
        #: The last sequence this node knows on each held run's subject (the next append's expectation).
        self._seq: dict[str, int] = {}
        #: The run-log mark up to which each held run's entries have been appended.
        self._mark: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._apply_lock = asyncio.Lock()
        #: Runs not to look at again before a time (another node holds them).
        self._skip: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._control: Subscription | None = None
        self._columns: frozenset[str] = frozenset()
        self.joined = asyncio.Event()
        self.counters = {"appends": 0, "appends_refused": 0, "claims": 0, "takeovers": 0, "leases_lost": 0,
                         "applied": 0, "forwarded": 0}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Join the stream and the lease bucket in the background (retrying until JetStream answers)."""
        self._columns = frozenset(await self.engine.db.read(
            lambda c: [r[1] for r in c.execute("PRAGMA table_info(runs)")]))
        self._tasks.append(asyncio.create_task(self._join(), name="agents-fleet-join"))

    async def _join(self) -> None:
        delay = 0.2
        while True:
            try:
                bucket = await self._ensure_streams()
                self.leases = Leases(bucket, self.node_id, ttl_s=self.ttl_s, stopped=self._stopped, now=self._now)
                self._control = await self.transport.subscribe(
                    self.transport.subject("agents", "control", self.node_id), self._on_control)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("the fleet's agent journal is not reachable yet", extra={"error": repr(exc)[:200]})
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        await self._recover()
        self._tasks.append(asyncio.create_task(self._consume(), name="agents-fleet-consume"))
        self._tasks.append(asyncio.create_task(self._renew(), name="agents-fleet-renew"))
        self.joined.set()
        self.engine.kick()
        log.info("joined the fleet's agent journal")

    async def _recover(self) -> None:
        """Re-read the runs this node was executing when it stopped: a change committed here but never
        appended (the node died in between) must not stay in this copy."""
        keys = await self.engine.db.read(lambda c: [r[0] for r in c.execute(
            "SELECT r.key FROM runs r JOIN fleet_runs f ON f.key = r.key WHERE r.placement = 'fleet' "
            "AND r.status IN ('pending', 'running') AND f.owner = ?", (self.node_id,))])
        if keys:
            log.info("re-reading the fleet runs this node was executing", extra={"runs": len(keys)})
        for key in keys:
            try:
                await self.resync(key)
            except Exception as exc:  # noqa: BLE001 - the consumer and a later claim bring it up to date
                log.info("could not re-read a fleet run at start", extra={"run": key, "error": repr(exc)[:200]})

    async def _ensure_streams(self) -> Bucket:
        self.stream = await self.transport.stream(
            STREAM, [self.transport.subject("agents", "run", ">")], allow_direct=True, discard=api.DiscardPolicy.NEW)
        return await self.transport.bucket(LEASES, ttl_s=max(60.0, 6 * self.ttl_s))

    async def stop(self) -> None:
        """Release the leases still held (another node takes those runs at once), stop the tasks."""
        if self.leases is not None:
            for lease in list(self.held.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.leases.release(lease), 2.0)
        self.held.clear()
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def ready(self, timeout_s: float = 5.0) -> None:
        """Wait until joined; Unavailable if the fleet cannot be reached."""
        if self.joined.is_set():
            return
        try:
            await asyncio.wait_for(self.joined.wait(), timeout_s)
        except TimeoutError:
            raise Unavailable("the fleet cannot be reached, so a fleet run cannot start; start it with "
                              "\"placement\": \"local\" to run it on this node only", retry_after=5) from None

    def status(self) -> dict[str, Any]:
        """Leases held and counters."""
        return {"joined": self.joined.is_set(), "held": len(self.held), **self.counters}

    # -- subjects and the lock per run ---------------------------------------------------

    def subject(self, key: str) -> str:
        """The stream subject of run ``key``."""
        return self.transport.subject("agents", "run", token(key))

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def lost(self, key: str) -> bool:
        """Whether this node must stop acting on ``key`` (its lease is gone)."""
        lease = self.held.get(key)
        return lease is None or lease.lost

    # -- appending -------------------------------------------------------------------

    async def append(self, key: str, *, events: bool = False, first: bool = False) -> int:
        """Append run ``key``'s record; RunFenced if this node no longer owns the run."""
        lease = self.held.get(key)
        if lease is None or self.leases is None:
            raise RunFenced(f"this node does not hold the lease of run {key}")
        js = self.transport.jetstream
        async with self._lock(key):
            since = self._mark.get(key, 0)
            record, mark = await self.engine.db.read(
                lambda c: build_record(c, key, since, events=events or first, with_input=first))
            record.update(node=self.node_id, fence=lease.fence)
            expected = self._seq.get(key, 0)
            # One id per (run, fence, position in the subject): a retry after an unanswered append is
            # deduplicated by the stream instead of refused as if another node had written.
            headers = {"Nats-Expected-Last-Subject-Sequence": str(expected),
                       "Nats-Msg-Id": f"{token(key)}:{lease.fence}:{expected}"}
            ack = None
            for attempt in range(APPEND_ATTEMPTS):
                try:
                    ack = await js.publish(self.subject(key), dumps(record), stream=self.stream, headers=headers)
                    break
                except APIError as exc:
                    if exc.err_code != WRONG_LAST_SEQUENCE:
                        raise
                    self.counters["appends_refused"] += 1
                    log.warning("the fleet journal refused an append: another node owns the run",
                                extra={"run": key, "expected": expected})
                    self._drop(key)
                    raise RunFenced(f"run {key} is owned by another node now; its journal refused this append",
                                    run=key) from None
                except (NatsTimeout, TimeoutError, OSError) as exc:
                    log.info("an append to the fleet journal was not answered", extra={
                        "run": key, "attempt": attempt + 1, "error": repr(exc)[:200]})
            if ack is None:
                # Unknown whether it was stored: act as fenced, and re-read the stream.
                self._drop(key)
                raise RunFenced(f"the fleet journal did not answer an append of run {key}", run=key)
            self._seq[key] = int(ack.seq)
            self._mark[key] = mark
            self.counters["appends"] += 1
            return int(ack.seq)

    def append_sync(self, key: str, *, events: bool = False) -> None:
        """:meth:`append` from an activation thread."""
        self.engine.run_async(lambda: self.append(key, events=events), timeout_s=30.0)

    def _drop(self, key: str) -> None:
        lease = self.held.pop(key, None)
        if lease is not None:
            lease.lost = True
        self._seq.pop(key, None)
        self._mark.pop(key, None)

    # -- claiming ----------------------------------------------------------------------

    async def adopt(self, key: str) -> bool:
        """Publish a run created here; False when the fleet already had a run under this key."""
        assert self.leases is not None
        lease = await self.leases.acquire(key)
        if lease is None:
            return False
        self.held[key] = lease
        self._seq[key], self._mark[key] = 0, 0
        try:
            await self.append(key, first=True)
        except RunFenced:
            return False
        return True

    async def claim(self, key: str, *, to_run: bool = False) -> bool:
        """Take run ``key``'s lease if it is free, bring the copy up to date and fence the former owner.

        False if another node holds the lease, or the up-to-date copy shows the run finished (or,
        with ``to_run``, not due): then the lease is given back untouched and nothing is appended.
        """
        if key in self.held:
            return not self.held[key].lost
        if self.leases is None:
            return False
        lease = await self.leases.acquire(key)
        if lease is None:
            return False
        self.held[key] = lease
        try:
            for _ in range(5):
                self._seq[key] = await self.catch_up(key)
                if not await self.engine.db.read(functools.partial(_wanted, key=key, now=self._now(),
                                                                   to_run=to_run)):
                    await self.release(key)
                    return False
                self._mark[key] = await self.engine.db.read(lambda c: c.execute(
                    "SELECT MAX(seq) FROM run_log WHERE run_key = ?", (key,)).fetchone()[0] or 0)
                try:
                    await self.append(key)
                    break
                except RunFenced:
                    # A former owner appended after our catch-up: read it and try again.
                    self.held[key] = lease
                    lease.lost = False
            else:
                raise RunFenced(f"could not claim run {key}")
            previous = await self.engine.db.write(lambda c: _reclaim(c, key, self._now()))
        except BaseException:
            self._drop(key)
            with contextlib.suppress(Exception):
                await self.leases.release(lease)
            raise
        self.counters["claims"] += 1
        if previous == "running" and key not in self.engine.active:
            self.counters["takeovers"] += 1
            log.info("took over a fleet run", extra={"run": key})
        return True

    async def release(self, key: str) -> None:
        """Give up ``key``'s lease (the run parked or finished)."""
        lease = self.held.pop(key, None)
        self._seq.pop(key, None)
        self._mark.pop(key, None)
        self._locks.pop(key, None)
        if lease is not None and self.leases is not None:
            await self.leases.release(lease)

    async def settle(self, key: str, *, events: bool = False) -> None:
        """After a change here: append it, and release the lease unless the run is to execute here now."""
        await self.append(key, events=events)
        status = await self.engine.db.read(lambda c: c.execute(
            "SELECT status FROM runs WHERE key = ?", (key,)).fetchone())
        if key not in self.engine.active and (status is None or status[0] not in ("pending", "running")):
            await self.release(key)

    # -- the applied copy ------------------------------------------------------------------

    async def catch_up(self, key: str, *, own: bool = False) -> int:
        """Apply every record of ``key`` this copy lacks; the subject's last sequence."""
        js = self.transport.jetstream
        subject = self.subject(key)
        async with self._apply_lock:
            try:
                last = int((await js.get_last_msg(self.stream, subject, direct=True)).seq or 0)
            except NotFoundError:
                return 0
            row = await self.engine.db.read(lambda c: c.execute(
                "SELECT seq FROM fleet_runs WHERE key = ?", (key,)).fetchone())
            done = row[0] if row is not None else 0
            while done < last:
                msg = await js.get_msg(self.stream, done + 1, subject=subject, next=True, direct=True)
                seq, record = int(msg.seq or 0), json.loads(msg.data or b"{}")
                await self.engine.db.write(functools.partial(
                    apply_record, record=record, seq=seq, node_id=self.node_id, run_columns=self._columns, own=own))
                done = seq
        self.engine.feed.changed(key)
        return last

    async def resync(self, key: str) -> None:
        """Drop this node's copy of ``key`` and read it again from the stream (after a refused append)."""
        async with self._apply_lock:
            await self.engine.db.write(lambda c: (
                c.execute("DELETE FROM journal WHERE run_id = ?", (key,)),
                c.execute("DELETE FROM events WHERE run_id = ?", (key,)),
                c.execute("DELETE FROM fleet_runs WHERE key = ?", (key,))))
        await self.catch_up(key, own=True)

    async def _consume(self) -> None:
        js = self.transport.jetstream
        durable = f"agents_{self.node_id}"
        sub = None
        while True:
            try:
                if sub is None:
                    sub = await js.pull_subscribe(self.transport.subject("agents", "run", ">"), durable=durable,
                                                  stream=self.stream,
                                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.ALL))
                try:
                    msgs = await sub.fetch(BATCH, timeout=1.0)
                except (NatsTimeout, TimeoutError):
                    continue
                if not msgs:
                    continue
                batch = [(int(m.metadata.sequence.stream), json.loads(m.data)) for m in msgs]

                async with self._apply_lock:
                    changed = await self.engine.db.write(functools.partial(self._apply_batch, batch=batch))
                await msgs[-1].ack()
                self.counters["applied"] += len(changed)
                for key in changed:
                    self.engine.feed.changed(key)
                if changed:
                    self.engine.kick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("applying the fleet agent journal failed; retrying", extra={"error": repr(exc)[:300]},
                            exc_info=True)
                sub = None
                await asyncio.sleep(1.0)

    def _apply_batch(self, conn: sqlite3.Connection, batch: list[tuple[int, dict[str, Any]]]) -> list[str]:
        return [r["key"] for seq, r in batch
                if apply_record(conn, r, seq, node_id=self.node_id, run_columns=self._columns)]

    # -- leases of executing runs ---------------------------------------------------------

    async def _renew(self) -> None:
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            for key, lease in list(self.held.items()):
                try:
                    if lease.lost:
                        if key not in self.engine.active:
                            self._drop(key)
                        continue
                    if not await self.leases.renew(lease):
                        self.counters["leases_lost"] += 1
                        log.warning("lost the lease of a fleet run to another node", extra={"run": key})
                        # An executing run keeps its place until its activation ends: it starts nothing
                        # new, and its next append is refused once the new owner has claimed the run.
                        if key not in self.engine.active:
                            self._drop(key)
                except Exception as exc:  # noqa: BLE001 - cut off: the TTL decides, the journal fences
                    log.info("could not renew a run lease", extra={"run": key, "error": repr(exc)[:200]})

    async def take_due(self, now: float, slots: int) -> None:
        """Claim fleet runs this copy shows runnable that no node executes: due timers, orphans."""
        if self.leases is None or slots <= 0:
            return
        rows = await self.engine.db.read(lambda c: c.execute(
            """SELECT r.key, r.status, f.owner FROM runs r LEFT JOIN fleet_runs f ON f.key = r.key
               WHERE r.placement = 'fleet' AND (r.status IN ('pending', 'running')
                     OR (r.status = 'waiting' AND r.wake_at <= ?))
               ORDER BY r.wake_at LIMIT ?""", (now, 4 * slots + len(self.held))).fetchall())
        for row in rows:
            key = row["key"]
            if key in self.held or key in self.engine.active or self._skip.get(key, 0.0) > now:
                continue
            try:
                won = await self.claim(key, to_run=True)
            except RunFenced:
                won = False
            except Exception as exc:  # noqa: BLE001 - the fleet is unreachable now: try on a later tick
                log.info("could not claim a fleet run", extra={"run": key, "error": repr(exc)[:200]})
                return
            if won:
                slots -= 1
                if slots <= 0:
                    return
            else:
                self._skip[key] = now + self.ttl_s / 2
        for key, until in list(self._skip.items()):
            if until <= now:
                del self._skip[key]

    async def adopt_unpublished(self) -> None:
        """Publish fleet runs created here inside other transactions (sub-agents, schedules, restarts)."""
        keys = await self.engine.db.read(lambda c: [r[0] for r in c.execute(
            "SELECT key FROM runs WHERE placement = 'fleet' AND key NOT IN (SELECT key FROM fleet_runs) "
            "AND status = 'pending' LIMIT 100")])
        for key in keys:
            if key not in self.held and not await self.adopt(key):
                await self.catch_up(key)

    async def forget(self, keys: list[str]) -> None:
        """Purge pruned runs' records from the stream."""
        for key in keys:
            with contextlib.suppress(Exception):
                await self.transport.jetstream.purge_stream(self.stream, subject=self.subject(key))

    # -- controls from any node ---------------------------------------------------------

    async def act(self, key: str, who: Principal, op: str, args: dict[str, Any],
                  here: Callable[[], Awaitable[Any]], *, forwarded: bool = False) -> Any:
        """Do a control on fleet run ``key`` where it may be done: here (claiming it) or on its holder."""
        await self.ready()
        assert self.leases is not None
        for _ in range(3):
            if await self._through_elections(lambda: self.claim(key)):
                try:
                    result = await here()
                finally:
                    if key in self.held:
                        await self.settle(key, events=True)
                return result
            finished = await self.engine.db.read(lambda c: not _wanted(c, key, self._now(), False))
            if finished:
                return await here()  # finished meanwhile: the control says so (run_finished)
            holder, _ = await self._through_elections(functools.partial(self.leases.holder, key))
            if holder is None or holder.node is None or holder.node == self.node_id:
                continue  # freed meanwhile: claim again
            if forwarded:
                break
            self.counters["forwarded"] += 1
            request = {"op": op, "tenant": who.tenant, "admin": who.admin, "token_id": who.token_id,
                       "run": key.split("/", 1)[1], "args": args}
            try:
                msg = await self.transport.request(self.transport.subject("agents", "control", holder.node),
                                                   dumps(request), timeout_s=30.0)
            except Exception:  # noqa: BLE001 - the holder went away: its lease expires, claim again
                await asyncio.sleep(0.2)
                continue
            reply = json.loads(msg.data)
            if "error" in reply:
                raise remote_error(reply["error"])
            return reply.get("ok")
        raise Unavailable(f"run {key.split('/', 1)[1]} is busy on another node; try again", retry_after=1)

    async def _through_elections(self, call: Callable[[], Awaitable[T]], patience_s: float = 20.0) -> T:
        """``call()``, tried again while JetStream does not answer (a stream electing its leader after
        a server's loss takes a few seconds); Unavailable (503, Retry-After) past ``patience_s``."""
        deadline = time.monotonic() + patience_s
        delay = 0.1
        while True:
            try:
                return await call()
            except (TimeoutError, NatsError) as exc:
                if isinstance(exc, APIError) and exc.code is not None and exc.code < 500:
                    raise  # a refusal, not an absence
                if time.monotonic() >= deadline:
                    raise Unavailable(f"the fleet's journal does not answer ({type(exc).__name__}); try again",
                                      retry_after=2) from exc
                log.debug("journal not answering, trying again", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def _on_control(self, msg: Msg) -> None:
        from edgenode.agents import controls
        from edgenode.auth import Principal

        try:
            req = json.loads(msg.data)
            who = Principal(str(req["tenant"]), bool(req.get("admin")), req.get("token_id"))
            result = await controls.dispatch(self.engine, req["op"], who, str(req["run"]), req.get("args") or {},
                                             forwarded=True)
            reply: dict[str, Any] = {"ok": result}
        except EdgenodeError as exc:
            reply = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        except Exception as exc:
            log.exception("a forwarded agent control failed")
            reply = {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}
        await msg.respond(dumps(reply))


def _wanted(conn: sqlite3.Connection, key: str, now: float, to_run: bool) -> bool:
    """Whether a freshly caught-up run is worth holding: unfinished, and (``to_run``) due now."""
    row = conn.execute("SELECT status, wake_at FROM runs WHERE key = ?", (key,)).fetchone()
    if row is None or row["status"] in TERMINAL:
        return False
    if not to_run:
        return True
    return row["status"] in ("pending", "running") or (
        row["status"] == "waiting" and row["wake_at"] is not None and row["wake_at"] <= now)


def _reclaim(conn: sqlite3.Connection, key: str, now: float) -> str | None:
    """A claimed run left running by its former owner goes back to pending here (it replays)."""
    row = conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] == "running":
        conn.execute("UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE key = ?", (now, now, key))
    return None if row is None else str(row[0])


def _error_classes(base: type[EdgenodeError] = EdgenodeError) -> dict[str, type[EdgenodeError]]:
    out: dict[str, type[EdgenodeError]] = {}
    for cls in base.__subclasses__():
        out.update(_error_classes(cls))
        out.setdefault(cls.code, cls)
    return out


def remote_error(error: dict[str, Any]) -> EdgenodeError:
    """The error another node answered a forwarded control with, as the same class here."""
    cls = _error_classes().get(str(error.get("code")), EdgenodeError)
    details = error.get("details")
    return cls(str(error.get("message") or "the owning node refused"), **(details if isinstance(details, dict) else {}))
