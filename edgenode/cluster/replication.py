"""State replication between peers: push right after commit, pull anti-entropy, snapshots.

* **Push.** Every local commit that changed rows notifies the replicator; a
  sender task per peer batches what accumulated while its previous request was
  in flight and posts the rows of those versions to ``/v1/peer/state/push``.
* **Pull.** Every ``sync_interval_s`` (randomised 0.5-1.5x) the node picks a
  random peer and posts what it has seen, per namespace and origin, to
  ``/v1/peer/state/sync``; the answer holds exactly what it lacks, gaps included,
  in batches. A peer that fails is retried after a random, growing back-off.
* **Snapshot.** When a node lacks more versions of a namespace than
  ``snapshot_threshold_versions``, it gets the namespace's whole state and book
  in one consistent read instead of the tail.

Whatever order changes arrive in, applying is last-writer-wins on (HLC, origin),
so every node converges on the same rows. Malformed data from a peer is refused
whole, logged, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import Counter, Histogram

from edgenode.cluster.hlc import physical_ms
from edgenode.cluster.ranges import RangeSet
from edgenode.errors import EdgenodeError, MalformedChanges, NamespaceDamaged
from edgenode.state.names import NAMESPACE, ORIGIN
from edgenode.state.payload import Changes, parse_changes

if TYPE_CHECKING:
    from edgenode.cluster.cluster import Cluster
    from edgenode.cluster.membership import Peer
    from edgenode.state.service import State

log = logging.getLogger(__name__)

PUSH_PATH = "/v1/peer/state/push"
SYNC_PATH = "/v1/peer/state/sync"
#: Sync rounds in a row with one peer while it says there is more.
MAX_ROUNDS = 50
#: A namespace that refused a peer's changes is left out of pulls this long, so it cannot crowd out the others.
BLOCKED_RETRY_S = 30.0


def _ns_key(tenant: str, namespace: str) -> str:
    return f"{tenant}/{namespace}"


class Replicator:
    """Moves changes between this node's namespaces and its peers'."""

    def __init__(self, state: State, cluster: Cluster) -> None:
        self.state = state
        self.cluster = cluster
        self.settings = cluster.settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, dict[tuple[str, str], RangeSet]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_now: asyncio.Queue[str] = asyncio.Queue()
        self._sync_queued: set[str] = set()
        registry = state.node.metrics.registry
        self.m_applied = Counter("edgenode_replication_rows_applied", "Peer rows that won and were applied.",
                                 registry=registry)
        self.m_refused = Counter("edgenode_replication_refused", "Peer replication requests refused as malformed.",
                                 registry=registry)
        self.m_snapshots = Counter("edgenode_replication_snapshots_sent", "Namespace snapshots sent to peers.",
                                   registry=registry)
        self.m_lag = Histogram(
            "edgenode_replication_lag_seconds", "From a change's HLC stamp at its origin to its apply here.",
            registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the anti-entropy loop and hook local commits."""
        self._loop = asyncio.get_running_loop()
        self.state.on_commit = self.notify
        self.cluster.on_peer_recovered = self._peer_recovered
        if self.cluster.fleet_enabled:
            self._tasks.append(asyncio.create_task(self._anti_entropy_loop(), name="state-anti-entropy"))

    async def stop(self) -> None:
        """Stop every task."""
        self.state.on_commit = lambda tenant, namespace, version: None
        self.cluster.on_peer_recovered = lambda peer: None
        tasks = self._tasks + list(self._senders.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._senders.clear()

    # -- push --------------------------------------------------------------------

    def notify(self, tenant: str, namespace: str, version: int) -> None:
        """A local commit made ``version`` of this node's origin (callable from any thread)."""
        if self._loop is None or not self.cluster.fleet_enabled:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue_push, tenant, namespace, version)
        except RuntimeError:  # the loop is closed: the node is stopping; anti-entropy covers it
            pass

    def _queue_push(self, tenant: str, namespace: str, version: int) -> None:
        for peer in self.cluster.peers():
            if not (peer.healthy or peer.failures == 0):
                continue  # anti-entropy will catch it up once it answers again
            pending = self._pending.setdefault(peer.url, {})
            pending.setdefault((tenant, namespace), RangeSet()).add(version)
            self._wake.setdefault(peer.url, asyncio.Event()).set()
            sender = self._senders.get(peer.url)
            if sender is None or sender.done():
                self._senders[peer.url] = asyncio.create_task(self._sender(peer.url), name=f"push:{peer.url}")

    async def _sender(self, url: str) -> None:
        wake = self._wake.setdefault(url, asyncio.Event())
        while True:
            await wake.wait()
            wake.clear()
            batch = self._pending.pop(url, {})
            if not batch:
                continue
            try:
                await self._push(url, batch)
            except Exception as exc:  # noqa: BLE001 - a failed push is repaired by anti-entropy
                log.debug("push failed", extra={"peer": url, "error": f"{type(exc).__name__}: {exc}"})

    async def _push(self, url: str, batch: dict[tuple[str, str], RangeSet]) -> None:
        me = self.state.origin
        payloads: list[dict[str, Any]] = []
        for (tenant, namespace), versions in batch.items():
            # Past one batch, the rest is left to the peer's next pull.
            changes = await asyncio.to_thread(self.state.read_changes, tenant, namespace, {me: versions},
                                              self.settings.sync_batch_rows)
            if changes is not None and changes.seen:
                payloads.append(changes.to_json())
        if payloads:
            response = await self.cluster.send(url, "POST", PUSH_PATH, json={"namespaces": payloads})
            if response.status_code != 200:
                log.warning("peer refused a push", extra={"peer": url, "status": response.status_code,
                                                          "body": response.text[:300]})

    async def receive_push(self, sender: str, data: Any) -> dict[str, Any]:
        """Apply changes a peer pushed; refuse the whole request if any of it is malformed."""
        all_changes = self._parse_namespaces(sender, data)
        applied = await self._apply_all(sender, all_changes, measure_lag=True)
        for c in all_changes:
            book = self.state.book(c.tenant, c.namespace)
            if any(len(book[o].gaps()) for o in c.seen if o in book):
                self.request_sync(sender)  # a gap: pull from the sender now, not at the next round
                break
        return {"applied": applied}

    def request_sync(self, node_id: str) -> None:
        """Pull from the peer with ``node_id`` as soon as the anti-entropy loop is free (deduplicated)."""
        peer = self.cluster.membership.by_node(node_id)
        if peer is not None:
            self._queue_sync(peer.url)

    def _queue_sync(self, url: str) -> None:
        if url not in self._sync_queued:
            self._sync_queued.add(url)
            self._sync_now.put_nowait(url)

    def _peer_recovered(self, peer: Peer) -> None:
        """A peer answers again after failing: pull from it now rather than after its grown back-off."""
        log.info("peer answers again; pulling from it", extra={"peer": peer.url, "peer_node": peer.node_id})
        self._queue_sync(peer.url)

    # -- applying ----------------------------------------------------------------------

    def _parse_namespaces(self, sender: str, data: Any) -> list[Changes]:
        try:
            if not isinstance(data, dict) or not isinstance(data.get("namespaces"), list):
                raise MalformedChanges("expected {\"namespaces\": [...]}")
            return [parse_changes(entry) for entry in data["namespaces"]]
        except MalformedChanges as exc:
            self.m_refused.inc()
            log.warning("refused malformed changes from a peer", extra={"peer_node": sender, "reason": exc.message})
            raise

    def _refused(self, sender: str, changes: Changes, exc: EdgenodeError) -> None:
        """Count and log a peer's batch of changes that was refused (nothing of it is applied)."""
        self.m_refused.inc()
        log.warning("refused changes from a peer", extra={
            "peer_node": sender, "tenant": changes.tenant, "namespace": changes.namespace,
            "reason": exc.message})

    async def _apply_all(self, sender: str, all_changes: list[Changes], *, measure_lag: bool = False) -> int:
        applied = 0
        now_ms = time.time() * 1000
        for changes in all_changes:
            try:
                # A namespace that cannot merge (or is damaged) blocks only itself; state records why.
                won = await asyncio.to_thread(self.state.merge, sender, changes)
            except NamespaceDamaged:
                continue  # it refuses its writes, the rest go on
            except EdgenodeError as exc:
                self._refused(sender, changes, exc)
                raise
            if won is None:
                continue
            applied += won
            for row in changes.rows if measure_lag else ():
                # Lag is measured on the wall clock; a node's clock_offset_ms skews it, as it should.
                lag = max(0.0, (now_ms - physical_ms(row.hlc)) / 1000)
                self.m_lag.observe(lag)
                peer = self.cluster.membership.by_node(row.origin)
                if peer is not None:
                    peer.lag_s = lag
        self.m_applied.inc(applied)
        return applied

    # -- pull (anti-entropy) --------------------------------------------------------------

    def _wanted_body(self) -> dict[str, Any]:
        books = self.state.books()
        return {"books": {_ns_key(t, ns): {o: rs.to_json() for o, rs in book.items()}
                          for (t, ns), book in books.items()},
                "blocked": sorted(_ns_key(t, ns) for t, ns in self.state.blocked.recent(BLOCKED_RETRY_S))}

    async def answer_sync(self, sender: str, data: Any) -> dict[str, Any]:
        """What the asking peer lacks: for each namespace, the missing tail or a snapshot."""
        theirs = self._parse_books(sender, data)
        skip = data.get("blocked") if isinstance(data.get("blocked"), list) else []
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
            total = sum(rs.count() for rs in missing.values())
            if total > self.settings.snapshot_threshold_versions:
                changes = await asyncio.to_thread(self.state.read_snapshot, tenant, namespace)
                self.m_snapshots.inc()
            else:
                changes = await asyncio.to_thread(self.state.read_changes, tenant, namespace, missing, budget)
                if changes is not None and any(changes.seen.get(o) != rs for o, rs in missing.items()):
                    more = True
            if changes is None:
                continue
            budget -= len(changes.rows)
            out.append(changes.to_json())
        return {"node_id": self.state.origin, "namespaces": out, "more": more}

    def _parse_books(self, sender: str, data: Any) -> dict[tuple[str, str], dict[str, RangeSet]]:
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
            log.warning("refused a malformed sync request", extra={"peer_node": sender, "reason": str(exc)})
            raise MalformedChanges(f"malformed sync request: {exc}") from exc

    async def pull(self, peer: Peer) -> int:
        """Catch up from one peer until it has nothing more; returns rows applied."""
        applied = 0
        for _ in range(MAX_ROUNDS):
            response = await self.cluster.send(peer.url, "POST", SYNC_PATH, json=self._wanted_body(),
                                               timeout=max(10.0, self.settings.push_timeout_s))
            if response.status_code != 200:
                raise RuntimeError(f"sync answered HTTP {response.status_code}: {response.text[:200]}")
            data = response.json()
            sender = data.get("node_id") if isinstance(data, dict) else None
            applied += await self._apply_all(str(sender), self._parse_namespaces(str(sender), data))
            if not data.get("more"):
                break
        return applied

    async def _sync_with(self, peer: Peer) -> None:
        try:
            await self.pull(peer)
            peer.next_sync_at = 0.0
        except (httpx.HTTPError, RuntimeError, EdgenodeError, ValueError) as exc:
            # Random, growing back-off so a fleet does not stampede a peer that comes back.
            peer.next_sync_at = time.monotonic() + random.uniform(0.5, 1.0) * min(60.0, 2.0 ** min(peer.failures, 6))
            log.debug("sync failed", extra={"peer": peer.url, "error": f"{type(exc).__name__}: {exc}"})

    async def _anti_entropy_loop(self) -> None:
        interval = self.settings.sync_interval_s
        while True:
            url: str | None = None
            with contextlib.suppress(asyncio.TimeoutError):
                url = await asyncio.wait_for(self._sync_now.get(), interval * random.uniform(0.5, 1.5))
            try:
                if url is not None:
                    self._sync_queued.discard(url)
                    peer = self.cluster.membership.get(url)
                else:
                    now = time.monotonic()
                    ready = [p for p in self.cluster.peers() if p.next_sync_at <= now]
                    healthy = [p for p in ready if p.healthy]
                    peer = random.choice(healthy or ready) if (healthy or ready) else None
                if peer is not None:
                    await self._sync_with(peer)
            except Exception:
                log.exception("anti-entropy round failed")
