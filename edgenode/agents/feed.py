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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Deltas a follower may have queued before it is dropped (a client that stopped reading).
MAX_QUEUED = 10_000


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

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def follow(self, key: str) -> Iterator[Follower]:
        """Follow run ``key`` for the duration of the block (call on the event loop)."""
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

    def following(self, key: str) -> bool:
        """Whether anyone follows run ``key`` now (a model call streams deltas only then)."""
        with self._lock:
            return bool(self._followers.get(key))
