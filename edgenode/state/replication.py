"""State replication on JetStream: publish committed batches, consume everyone's, catch up on gaps.

* **Publish.** Every local commit that changed rows queues its version; a publisher
  task reads the rows of what accumulated and publishes one message per namespace to
  the fleet's change stream (``<prefix>.state.changes.<origin>``), waiting for
  JetStream's acknowledgement. The namespace databases are the outbox: what has been
  acknowledged is recorded in ``DATA/replication.json``; whatever was committed but not
  acknowledged (a node cut off from the stream, a restart) is published again later.
* **Consume.** A durable pull consumer per node reads the stream in order and applies
  each batch with the order-independent merge (last writer wins on HLC and origin), so
  a consumer's position is all the anti-entropy there is. Its own batches it skips.
* **Catch up.** When a node finds the stream has moved past what it read (retention
  dropped batches it never saw, or it is new to a stream that no longer starts at 1),
  it asks a healthy member for what its books lack (``<prefix>.state.sync.<member>``):
  the missing tail, or a snapshot of a namespace when the tail is long.
* **Collect tombstones.** Every ``tombstone_collect_s`` a node asks every member for its
  books (``<prefix>.state.books.<member>``); per namespace, the versions every member has
  seen (``merge.acknowledged_by_all``, this node's own book included) may lose their
  tombstones, if older than ``tombstone_grace_s``. A round in which any member heard of is
  down or does not answer collects nothing: that member may still hold the deleted row. A
  node silent for longer than ``forget_peer_after_s`` is no longer a member; it should come
  back restored or empty, as a database replica would (the grace covers a short absence).

A namespace whose batch cannot be merged (its table diverged, the clock bound, its file
is damaged) is blocked alone: ``State.merge`` refuses the batch and records it in
``state.blocked`` (listed in ``GET /v1/cluster`` and metrics), and every other namespace
goes on. The message is acknowledged, but what it carried is not forgotten: the
namespace's books do not have it, so a catch-up fetches it again, right after a batch of
that namespace applies (it cleared) and every ``BLOCKED_RETRY_S`` while it stays blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js import api
from prometheus_client import Counter, Gauge, Histogram

from edgenode.cluster.hlc import pack, physical_ms
from edgenode.cluster.ranges import RangeSet
from edgenode.cluster.transport import NatsTransport, dumps
from edgenode.errors import EdgenodeError, MalformedChanges, NamespaceDamaged
from edgenode.state.merge import acknowledged_by_all
from edgenode.state.names import NAMESPACE, ORIGIN
from edgenode.state.payload import Changes, parse_changes
from edgenode.threads import STORE

if TYPE_CHECKING:
    from edgenode.cluster.cluster import Cluster
    from edgenode.state.service import State

log = logging.getLogger(__name__)

STREAM = "STATE"
#: Catch-up rounds in a row with one member while it says there is more.
MAX_ROUNDS = 50
#: A blocked namespace is fetched again this often; one refused more recently is left out of a
#: catch-up answer, so it cannot crowd out the others.
BLOCKED_RETRY_S = 30.0


def _ns_key(tenant: str, namespace: str) -> str:
    return f"{tenant}/{namespace}"


class Replicator:
    """Moves this node's committed changes to the fleet's stream, and the fleet's into its namespaces."""

    def __init__(self, state: State, cluster: Cluster) -> None:
        self.state = state
        self.cluster = cluster
        self.settings = cluster.settings
        self.transport: NatsTransport | None = cluster.transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[tuple[str, str], RangeSet] = {}
        self._published: dict[tuple[str, str], RangeSet] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox_file = state.node.data_dir / "replication.json"
        self._dirty = False
        self.applied_seq = 0
        self._generation = 0
        self.stream_name: str | None = None
        #: Namespaces a merge refused or found damaged since the last catch-up: fetched again later.
        self._refetch: set[tuple[str, str]] = set()
        self._catch_up = asyncio.Event()
        self._stream_state: dict[str, Any] = {}
        #: Per namespace, what the last collection round found every member had seen.
        self._acknowledged: dict[tuple[str, str], dict[str, int]] = {}
        self.tombstones: dict[str, Any] = {"collected": 0, "last_round_at": None, "last_round": "not run yet"}
        registry = state.node.metrics.registry
        self.m_applied = Counter("edgenode_replication_rows_applied", "Peer rows that won and were applied.",
                                 registry=registry)
        self.m_refused = Counter("edgenode_replication_refused", "Batches from peers refused as malformed.",
                                 registry=registry)
        self.m_published = Counter("edgenode_replication_batches_published",
                                   "Change batches this node published to the fleet's stream.", registry=registry)
        self.m_snapshots = Counter("edgenode_replication_snapshots_sent", "Namespace snapshots sent to peers.",
                                   registry=registry)
        self.m_unpublished = Gauge("edgenode_replication_unpublished_versions",
                                   "Local versions committed but not yet acknowledged by the stream.",
                                   registry=registry)
        self.m_unpublished.set_function(lambda: sum(rs.count() for rs in self._pending.values()))
        self.m_stream = Gauge("edgenode_replication_stream", "The fleet's change stream (messages, bytes, "
                              "first_seq, last_seq) as last measured.", ["field"], registry=registry)
        self.m_collected = Counter("edgenode_replication_tombstones_collected",
                                   "Tombstones deleted because every member had seen them.", registry=registry)
        self.m_lag = Histogram(
            "edgenode_replication_lag_seconds", "From a change's HLC stamp at its origin to its apply here.",
            registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Hook local commits and start publishing, consuming and answering catch-up requests."""
        self._loop = asyncio.get_running_loop()
        if self.transport is None:
            return
        self.state.on_commit = self.notify
        self._load_outbox()
        self.cluster.heartbeat_info.append(self.heartbeat_info)
        self.cluster.reporters.append(self.report)
        self.cluster.on_peer_recovered = lambda peer: self._wake.set()
        subject = self.transport.subject("state", "sync", self.state.origin)
        await self.transport.subscribe(subject, self._answer_sync)
        await self.transport.subscribe(self.transport.subject("state", "books", self.state.origin),
                                       self._answer_books)
        for coro, name in ((self._publisher(), "state-publish"), (self._consumer(), "state-consume"),
                           (self._catch_up_loop(), "state-catch-up"), (self._measure_loop(), "state-measure"),
                           (self._refetch_loop(), "state-refetch"), (self._collect_loop(), "state-collect")):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        """Stop every task and save the outbox position."""
        self.state.on_commit = lambda tenant, namespace, version: None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._save_outbox(force=True)

    # -- the outbox ----------------------------------------------------------------

    def _load_outbox(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(self._outbox_file.read_text())
            self.applied_seq = int(data.get("applied_seq", 0))
            self._generation = int(data.get("consumer_generation", 0))
            for key, ranges in data.get("published", {}).items():
                tenant, _, namespace = key.partition("/")
                self._published[(tenant, namespace)] = RangeSet.from_json(ranges)
        me = self.state.origin
        for key, book in self.state.books().items():
            mine = book.get(me)
            if mine is not None:
                todo = mine.minus(self._published.get(key, RangeSet()))
                if len(todo):
                    self._pending[key] = todo
        if self._pending:
            self._wake.set()

    def _save_outbox(self, *, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        data = {"applied_seq": self.applied_seq, "consumer_generation": self._generation,
                "published": {_ns_key(t, ns): rs.to_json() for (t, ns), rs in self._published.items()}}
        tmp = self._outbox_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            tmp.replace(self._outbox_file)
            self._dirty = False
        except OSError as exc:
            log.warning("cannot save the replication outbox", extra={"error": str(exc)})

    def forget_tenant(self, tenant: str) -> None:
        """A purged tenant's namespaces start again: what was published of them says nothing now."""
        for key in [k for k in self._published if k[0] == tenant]:
            del self._published[key]
            self._dirty = True
        for key in [k for k in self._refetch if k[0] == tenant]:
            self._refetch.discard(key)

    # -- publish ---------------------------------------------------------------------

    def notify(self, tenant: str, namespace: str, version: int) -> None:
        """A local commit made ``version`` of this node's origin (callable from any thread)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the outbox has it for next time
            self._loop.call_soon_threadsafe(self._queue, tenant, namespace, version)

    def _queue(self, tenant: str, namespace: str, version: int) -> None:
        self._pending.setdefault((tenant, namespace), RangeSet()).add(version)
        self._wake.set()

    async def _publisher(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._pending:
                    key = next(iter(self._pending))
                    versions = self._pending.pop(key)
                    try:
                        sent = await self._publish(key, versions)
                    except BaseException:
                        self._pending.setdefault(key, RangeSet()).update(versions)
                        raise
                    rest = versions.minus(sent)
                    if len(rest):
                        self._pending.setdefault(key, RangeSet()).update(rest)
                delay = 0.1
                self._save_outbox()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - cut off from the stream: keep it and retry
                log.debug("publish failed; retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                self._save_outbox()
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(5.0, delay * 2)
                self._wake.set()

    async def _publish(self, key: tuple[str, str], versions: RangeSet) -> RangeSet:
        """Publish the rows of ``versions`` of one namespace; returns the versions the stream now holds."""
        assert self.transport is not None
        tenant, namespace = key
        me = self.state.origin
        budget = self.settings.sync_batch_rows
        while True:
            changes = await STORE.run(self.state.read_changes, tenant, namespace, {me: versions}, budget)
            if changes is None:  # the namespace is gone (its tenant was purged)
                return versions
            body = dumps({"origin": me, "namespaces": [changes.to_json()]})
            if len(body) <= self.settings.max_message_bytes or len(changes.rows) <= 1:
                break
            budget = max(1, len(changes.rows) // 2)
        sent = changes.seen.get(me, RangeSet())
        await self.transport.jetstream.publish(self.transport.subject("state", "changes", me), body,
                                               stream=self.stream_name, timeout=self.settings.push_timeout_s)
        self.m_published.inc()
        self._published.setdefault(key, RangeSet()).update(sent)
        self._dirty = True
        return sent

    # -- consume -------------------------------------------------------------------------

    async def _ensure_stream(self) -> str:
        assert self.transport is not None
        self.stream_name = await self.transport.stream(
            STREAM, [self.transport.subject("state", "changes", "*")],
            max_age=self.settings.stream_max_age_s, max_bytes=self.settings.stream_max_bytes,
            discard=api.DiscardPolicy.OLD, max_msg_size=-1)
        return self.stream_name

    async def _subscribe(self) -> Any:
        assert self.transport is not None
        js = self.transport.jetstream
        stream = await self._ensure_stream()
        durable = self._durable
        # One replica: a consumer's position is also kept here (DATA/replication.json), so a lost one is
        # made again from it, and a fleet does not pay a replication group per member to keep them.
        config = api.ConsumerConfig(
            durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=1024, ack_wait=30.0,
            num_replicas=1,
            inactive_threshold=self.settings.forget_peer_after_s,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if self.applied_seq else api.DeliverPolicy.ALL,
            opt_start_seq=self.applied_seq + 1 if self.applied_seq else None)
        try:
            await js.consumer_info(stream, durable)
        except Exception:  # noqa: BLE001 - absent (new node, or forgotten while away): create it
            await js.add_consumer(stream, config)
        info = await js.stream_info(stream)
        first = int(info.state.first_seq or 0)
        if first > self.applied_seq + 1 and int(info.state.last_seq or 0) >= first:
            # Batches this node never read are gone from the stream: fetch what its books lack.
            self._catch_up.set()
        return await js.pull_subscribe_bind(durable=durable, stream=stream)

    async def _consumer(self) -> None:
        delay = 0.2
        failures = 0
        while True:
            try:
                if failures >= 2:
                    # A consumer with one replica is gone with its server (a node killed for good):
                    # make it again from the position kept here, on a server that is up.
                    await self._drop_consumer()
                sub = await self._subscribe()
                failures = 0
                delay = 0.2
                idle = 0
                while True:
                    # One message per long poll (a poll for many waits for all of them or its expiry),
                    # then, while the consumer says more are pending, as many as are there at once.
                    try:
                        msgs = await sub.fetch(1, timeout=5.0)
                    except TimeoutError:
                        idle += 1
                        if idle % 2 == 0:
                            await self._check_consumer()  # a poll on a lost consumer only ever times out
                        continue
                    idle = 0
                    while msgs:
                        for msg in msgs:
                            await self._handle(msg)
                        pending = int(msgs[-1].metadata.num_pending or 0)
                        if not pending:
                            break
                        try:
                            msgs = await sub.fetch(min(256, pending), timeout=2.0)
                        except TimeoutError:
                            break
                    self._save_outbox()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no stream yet, cut off, or the consumer is lost: retry
                failures += 1
                log.debug("state consumer waiting", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(5.0, delay * 2)

    @property
    def _durable(self) -> str:
        # A new name per generation: a lost consumer may not even be deletable until its server is back.
        return f"state-{self.state.origin}" + (f"-{self._generation}" if self._generation else "")

    async def _check_consumer(self) -> None:
        """Raise unless this node's consumer answers and has a leader."""
        assert self.transport is not None and self.stream_name is not None
        info = await self.transport.jetstream.consumer_info(self.stream_name, self._durable)
        if info.cluster is not None and not info.cluster.leader:
            raise RuntimeError("the state consumer has no leader")

    async def _drop_consumer(self) -> None:
        assert self.transport is not None
        if self.stream_name is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.jetstream.delete_consumer(self.stream_name, self._durable), 2.0)
        self._generation += 1
        self._dirty = True
        log.info("state consumer made again", extra={"from_seq": self.applied_seq + 1,
                                                     "generation": self._generation})

    async def _handle(self, msg: Msg) -> None:
        seq = int(msg.metadata.sequence.stream)
        if self.applied_seq and seq > self.applied_seq + 1:
            self._catch_up.set()  # retention dropped batches between: a catch-up fills the hole
        origin = msg.subject.rsplit(".", 1)[-1]
        if seq > self.applied_seq and origin != self.state.origin:
            await self._apply_message(origin, msg.data)
        self.applied_seq = max(self.applied_seq, seq)
        self._dirty = True
        await msg.ack()

    async def _apply_message(self, origin: str, data: bytes) -> None:
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or not isinstance(body.get("namespaces"), list):
                raise MalformedChanges("expected {\"namespaces\": [...]}")
        except (ValueError, MalformedChanges) as exc:
            self.m_refused.inc()
            log.warning("refused a malformed batch", extra={"peer_node": origin, "reason": str(exc)})
            return
        for entry in body["namespaces"]:
            try:
                changes = parse_changes(entry)
            except MalformedChanges as exc:
                self.m_refused.inc()
                log.warning("refused a malformed batch", extra={"peer_node": origin, "reason": exc.message})
                continue
            await self._apply_one(origin, changes, measure_lag=True)

    async def _apply_one(self, origin: str, changes: Changes, *, measure_lag: bool = False) -> int:
        """Merge one namespace's changes; a refusal blocks that namespace only (``state.blocked``)."""
        key = (changes.tenant, changes.namespace)
        was_blocked = key in self.state.blocked
        try:
            applied = await STORE.run(self.state.merge, origin, changes)
        except NamespaceDamaged:
            self._refetch.add(key)  # it refuses its writes (its health says why); fetched again once repaired
            return 0
        except EdgenodeError as exc:  # not the batch's fault (the disk, a limit): fetched again later
            self._refetch.add(key)
            log.warning("a namespace could not apply a batch; it is fetched again later", extra={
                "peer_node": origin, "tenant": changes.tenant, "namespace": changes.namespace,
                "code": exc.code, "reason": exc.message})
            return 0
        if applied is None:
            self._refetch.add(key)
            return 0
        if was_blocked:
            self._catch_up.set()  # it merges again: fetch what it refused while blocked
        self.m_applied.inc(applied)
        if measure_lag:
            now_ms = time.time() * 1000
            for row in changes.rows:
                self.m_lag.observe(max(0.0, (now_ms - physical_ms(row.hlc)) / 1000))
        return applied

    async def _refetch_loop(self) -> None:
        """While a namespace stays blocked (or a batch failed), ask for what it lacks again now and then."""
        while True:
            await asyncio.sleep(BLOCKED_RETRY_S * random.uniform(0.8, 1.2))
            if self._refetch or len(self.state.blocked):
                self._refetch.clear()
                self._catch_up.set()

    # -- catch up (a member answers what this node's books lack) ----------------------------

    def _books_body(self) -> bytes:
        books = self.state.books()
        return dumps(self.wanted_body(books))

    def wanted_body(self, books: dict[tuple[str, str], dict[str, RangeSet]] | None = None) -> dict[str, Any]:
        """A catch-up request: this node's books, and the namespaces refused too recently to ask for again."""
        books = self.state.books() if books is None else books
        return {"books": {_ns_key(t, ns): {o: rs.to_json() for o, rs in book.items()}
                          for (t, ns), book in books.items()},
                "blocked": sorted(_ns_key(t, ns) for t, ns in self.state.blocked.recent(BLOCKED_RETRY_S))}

    async def _answer_sync(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            answer = await self.answer_sync(json.loads(msg.data))
        except (ValueError, MalformedChanges) as exc:
            answer = {"error": str(exc)}
        await msg.respond(dumps(answer))

    async def answer_sync(self, data: Any) -> dict[str, Any]:
        """What the asking node lacks: for each namespace, the missing tail or a snapshot."""
        theirs = self._parse_books(data)
        skip = {k for k in data.get("blocked", []) if isinstance(k, str)} if isinstance(data.get("blocked"), list) \
            else set()
        budget = self.settings.sync_batch_rows
        out: list[dict[str, Any]] = []
        more = False
        for (tenant, namespace), mine in sorted(self.state.books().items()):
            if _ns_key(tenant, namespace) in skip:
                continue  # it refused what it got last time: it must not eat the budget of the others
            if budget <= 0:
                more = True
                break
            their_book = theirs.get((tenant, namespace), {})
            missing = {o: rs.minus(their_book.get(o, RangeSet())) for o, rs in mine.items()}
            missing = {o: rs for o, rs in missing.items() if len(rs)}
            if not missing:
                continue
            if sum(rs.count() for rs in missing.values()) > self.settings.snapshot_threshold_versions:
                changes = await STORE.run(self.state.read_snapshot, tenant, namespace)
                self.m_snapshots.inc()
            else:
                changes = await STORE.run(self.state.read_changes, tenant, namespace, missing, budget)
                if changes is not None and any(changes.seen.get(o) != rs for o, rs in missing.items()):
                    more = True
            if changes is None:
                continue
            budget -= max(1, len(changes.rows))
            out.append(changes.to_json())
        return {"node_id": self.state.origin, "namespaces": out, "more": more}

    def _parse_books(self, data: Any) -> dict[tuple[str, str], dict[str, RangeSet]]:
        try:
            if not isinstance(data, dict) or not isinstance(data.get("books"), dict):
                raise ValueError("expected {\"books\": {...}}")
            out: dict[tuple[str, str], dict[str, RangeSet]] = {}
            for key, book in data["books"].items():
                tenant, _, namespace = key.partition("/")
                if not NAMESPACE.match(namespace) or not isinstance(book, dict):
                    raise ValueError(f"bad namespace key {key!r}")
                parsed: dict[str, RangeSet] = {}
                for origin, ranges in book.items():
                    if not ORIGIN.match(origin):
                        raise ValueError(f"bad origin {origin!r}")
                    parsed[origin] = RangeSet.from_json(ranges)
                out[(tenant, namespace)] = parsed
            return out
        except (ValueError, TypeError) as exc:
            self.m_refused.inc()
            raise MalformedChanges(f"malformed catch-up request: {exc}") from exc

    async def catch_up(self, member_id: str) -> int:
        """Fetch what this node's books lack from one member, until it has nothing more; rows applied."""
        assert self.transport is not None
        applied = 0
        subject = self.transport.subject("state", "sync", member_id)
        for _ in range(MAX_ROUNDS):
            reply = await self.transport.request(subject, self._books_body(),
                                                 timeout_s=max(10.0, self.settings.push_timeout_s))
            data = json.loads(reply.data)
            if not isinstance(data, dict) or not isinstance(data.get("namespaces"), list):
                raise MalformedChanges(f"catch-up answer from {member_id} is malformed")
            progressed = False
            for entry in data["namespaces"]:
                try:
                    changes = parse_changes(entry)
                except MalformedChanges as exc:
                    self.m_refused.inc()
                    log.warning("refused a malformed catch-up batch", extra={"peer_node": member_id,
                                                                            "reason": exc.message})
                    continue
                before = self.state.book(changes.tenant, changes.namespace)
                applied += await self._apply_one(member_id, changes)
                progressed = progressed or self.state.book(changes.tenant, changes.namespace) != before
            if not data.get("more") or not progressed:
                break
        return applied

    async def _catch_up_loop(self) -> None:
        while True:
            await self._catch_up.wait()
            self._catch_up.clear()
            members = self.cluster.members
            if members is not None:
                with contextlib.suppress(Exception):
                    await members.refresh(max_age_s=1.0)
            candidates = [m for m in (members.members() if members else [])
                          if m.node_id != self.state.origin and members is not None and members.healthy(m)]
            random.shuffle(candidates)
            done = False
            for member in candidates:
                try:
                    applied = await self.catch_up(member.node_id)
                    log.info("caught up", extra={"peer_node": member.node_id, "rows": applied})
                    done = True
                    break
                except Exception as exc:  # noqa: BLE001 - try the next member
                    log.debug("catch-up failed", extra={"peer_node": member.node_id, "error": str(exc)})
            if not done:
                await asyncio.sleep(2.0)
                self._catch_up.set()

    # -- tombstone collection (every member has seen the delete) ------------------------------

    async def _answer_books(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(dumps({"books": self.wanted_body()["books"]}))

    async def _collect_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tombstone_collect_s * random.uniform(0.8, 1.2))
            try:
                await self.collect_tombstones()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                self._round(f"failed: {type(exc).__name__}: {exc}")

    def _round(self, outcome: str) -> None:
        self.tombstones.update(last_round_at=round(time.time(), 3), last_round=outcome)
        log.debug("tombstone collection", extra={"outcome": outcome})

    async def collect_tombstones(self) -> int:
        """One round: ask every member for its books and delete what all of them have seen; how many went."""
        assert self.transport is not None
        members = self.cluster.members
        if members is None:
            self._round("skipped: no membership")
            return 0
        await members.refresh(max_age_s=1.0)
        others = [m for m in members.members() if m.node_id != self.state.origin]
        down = sorted(m.node_id for m in others if not members.healthy(m))
        if down:
            self._round(f"skipped: member(s) {', '.join(down)} down")
            return 0
        books = [self.state.books()]
        for member in others:
            try:
                reply = await self.transport.request(self.transport.subject("state", "books", member.node_id),
                                                     b"{}", timeout_s=max(5.0, self.settings.push_timeout_s))
                books.append(self._parse_books(json.loads(reply.data)))
            except Exception as exc:  # noqa: BLE001 - a member that cannot say what it has seen blocks the round
                self._round(f"skipped: member {member.node_id} did not answer ({type(exc).__name__})")
                return 0
        before = pack(int(time.time() * 1000 - self.settings.tombstone_grace_s * 1000), 0) \
            if self.settings.tombstone_grace_s > 0 else 0
        gone = 0
        for key, mine in books[0].items():
            acknowledged = acknowledged_by_all([mine, *(b.get(key, {}) for b in books[1:])])
            if not acknowledged or (before == 0 and self._acknowledged.get(key) == acknowledged):
                continue  # nothing every member has seen, or nothing new since the last round
            gone += await STORE.run(self.state.collect_tombstones, key[0], key[1], acknowledged, before)
            self._acknowledged[key] = acknowledged
        self.m_collected.inc(gone)
        self.tombstones["collected"] += gone
        self._round(f"collected {gone} of {len(books)} members' books")
        return gone

    # -- measuring and reporting ---------------------------------------------------------------

    async def _measure(self) -> dict[str, Any]:
        assert self.transport is not None
        if self.stream_name is None:
            return {}
        info = await self.transport.jetstream.stream_info(self.stream_name)
        state: dict[str, Any] = {"name": self.stream_name, "messages": int(info.state.messages or 0),
                 "bytes": int(info.state.bytes or 0), "first_seq": int(info.state.first_seq or 0),
                 "last_seq": int(info.state.last_seq or 0), "replicas": int(info.config.num_replicas or 1),
                 "max_age_s": self.settings.stream_max_age_s, "max_bytes": self.settings.stream_max_bytes}
        for name in ("messages", "bytes", "first_seq", "last_seq"):
            self.m_stream.labels(name).set(float(state[name]))
        self._stream_state = state
        return state

    async def _measure_loop(self) -> None:
        while True:
            await asyncio.sleep(10.0)
            with contextlib.suppress(Exception):
                await self._measure()  # (the cluster raises the stream's copies as servers join)

    def heartbeat_info(self) -> dict[str, Any]:
        """What this node's heartbeat says about replication."""
        return {"applied": self.applied_seq, "blocked_namespaces": len(self.state.blocked)}

    async def report(self) -> dict[str, Any]:
        """The stream's measured state, this node's position and its blocked namespaces."""
        stream: dict[str, Any] = dict(self._stream_state)
        with contextlib.suppress(Exception):
            stream = await asyncio.wait_for(self._measure(), 2.0)
        return {
            "stream": stream,
            "replication": {"applied_seq": self.applied_seq,
                            "unpublished_versions": sum(rs.count() for rs in self._pending.values())},
            "blocked_namespaces": self.state.blocked_namespaces(),
            "tombstones": dict(self.tombstones),
        }
