"""What a run's followers are told as it happens: "the run log changed" and model token deltas.

The run log itself (journal entries written, status changes) is in SQLite, so a follower
can resume from any sequence number; this module only wakes followers when it grows and
carries what is never stored: the text deltas of a model reply while it streams. A delta
reaches the followers connected at that moment; the assembled reply is journaled as the
``model.chat`` entry, which every follower gets, connected or not.

Publishers are activation threads; followers are tasks on the node's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgenode.agents.store import TERMINAL, entry_dict, run_dict
from edgenode.errors import Overloaded

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

#: Deltas a follower may have queued before it is dropped (a client that stopped reading).
MAX_QUEUED = 10_000
#: Followers one node serves at once (each is an open connection and a task).
MAX_FOLLOWERS = 1_000


class Follower:
    """One follower of one run: a queue of deltas and a flag for "read the run log again"."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deltas: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED)
        self.wake = asyncio.Event()
        #: Set when deltas were dropped because the follower fell behind.
        self.overflowed = False

    def _put(self, delta: dict[str, Any] | None) -> None:
        if delta is not None:
            try:
                self.deltas.put_nowait(delta)
            except asyncio.QueueFull:
                self.overflowed = True
        self.wake.set()


class RunFeed:
    """Followers by run key; ``changed`` and ``delta`` may be called from any thread."""

    def __init__(self, *, max_followers: int = MAX_FOLLOWERS) -> None:
        self.max_followers = max_followers
        self._followers: dict[str, set[Follower]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def follow(self, key: str) -> Iterator[Follower]:
        """Follow run ``key`` for the duration of the block (call on the event loop)."""
        self.check_capacity()
        follower = Follower(asyncio.get_running_loop())
        with self._lock:
            self._followers.setdefault(key, set()).add(follower)
        try:
            yield follower
        finally:
            with self._lock:
                followers = self._followers.get(key)
                if followers is not None:
                    followers.discard(follower)
                    if not followers:
                        del self._followers[key]

    def _publish(self, key: str, delta: dict[str, Any] | None) -> None:
        with self._lock:
            followers = list(self._followers.get(key, ()))
        for follower in followers:
            try:
                follower.loop.call_soon_threadsafe(follower._put, delta)
            except RuntimeError:
                pass  # the loop has closed: the node is stopping

    def changed(self, key: str) -> None:
        """The run's log grew: its followers read it again."""
        self._publish(key, None)

    def delta(self, key: str, position: int, text: str) -> None:
        """A piece of a model reply being streamed at journal ``position``."""
        if text:
            self._publish(key, {"position": position, "text": text})

    def check_capacity(self) -> None:
        """Overloaded (503) when this node serves as many followers as it may."""
        with self._lock:
            if sum(map(len, self._followers.values())) >= self.max_followers:
                raise Overloaded(f"this node already streams {self.max_followers} runs' events; try again later",
                                 retry_after=5)

    def following(self, key: str) -> bool:
        """Whether anyone follows run ``key`` now (a model call streams deltas only then)."""
        with self._lock:
            return bool(self._followers.get(key))


#: Log rows read per round trip to the database.
_BATCH = 500


@dataclass(frozen=True)
class RunEvent:
    """One event of a run's stream: ``id`` (``seq``, or ``seq.n`` for a delta), ``kind`` and its data."""

    id: str
    kind: str  # "journal", "status", "delta" or "end"
    data: dict[str, Any]


def _read(conn: sqlite3.Connection, key: str, after: int) -> tuple[list[RunEvent], str, dict[str, Any]]:
    """Log rows after ``after`` as events, the run's status now, and the run."""
    events: list[RunEvent] = []
    for row in conn.execute("SELECT * FROM run_log WHERE run_key = ? AND seq > ? ORDER BY seq LIMIT ?",
                            (key, after, _BATCH)):
        if row["kind"] == "journal":
            entry = conn.execute("SELECT * FROM journal WHERE run_id = ? AND position = ?",
                                 (key, row["position"])).fetchone()
            if entry is None:
                continue  # pruned, or a restart's copy that was never kept
            events.append(RunEvent(str(row["seq"]), "journal", entry_dict(entry)))
        else:
            events.append(RunEvent(str(row["seq"]), "status", {"status": row["status"], "at": row["created_at"]}))
    run = conn.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
    return events, (run["status"] if run is not None else "cancelled"), (run_dict(run) if run is not None else {})


async def stream(engine: Agents, key: str, after: int, *, keepalive_s: float = 15.0) -> AsyncIterator[RunEvent | None]:
    """A run's events from sequence ``after`` on, as they happen, until the run has finished.

    Journal entries and status changes come from the run log, so a follower that left
    resumes with ``after`` = the last id it saw and misses none. Token deltas are live
    only. ``None`` is a keep-alive: nothing happened for ``keepalive_s``.
    """
    with engine.feed.follow(key) as follower:
        sent = 0
        idle = 0.0
        while True:
            follower.wake.clear()
            pending: list[dict[str, Any]] = []
            while not follower.deltas.empty():
                pending.append(follower.deltas.get_nowait())
            events, status, run = await engine.db.read(functools.partial(_read, key=key, after=after))
            for event in events:
                if event.kind == "journal":
                    # A model call's deltas come before the entry that records its whole reply.
                    here = [d for d in pending if d["position"] == event.data["position"]]
                    pending = [d for d in pending if d["position"] != event.data["position"]]
                    for delta in here:
                        sent += 1
                        yield RunEvent(f"{after}.{sent}", "delta", delta)
                after = int(event.id)
                yield event
            for delta in pending:
                sent += 1
                yield RunEvent(f"{after}.{sent}", "delta", delta)
            if len(events) >= _BATCH:
                continue
            if status in TERMINAL:
                yield RunEvent(str(after), "end", {"status": status, "run": run})
                return
            try:
                await asyncio.wait_for(follower.wake.wait(), 1.0)
                idle = 0.0
            except TimeoutError:
                # Wakes are a shortcut; a change nobody announced is seen within a second.
                idle += 1.0
                if idle >= keepalive_s:
                    idle = 0.0
                    yield None
