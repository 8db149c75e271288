"""Hybrid logical clocks (Kulkarni, Demirbas et al., 2014), packed into one sortable integer.

A timestamp is ``physical_ms << 16 | logical``: it never goes backwards, stays close
to wall time, and after a node sees a remote timestamp every later local one is
greater, so a write made after reading another's write wins over it even when the
two nodes' clocks disagree.

A remote timestamp further ahead of this node's wall clock than ``max_offset_ms``
is refused rather than followed (CockroachDB bounds clock offset the same way):
one node with a clock an hour fast would otherwise drag every node that hears it an
hour ahead, and their writes would win over every honest write for that hour.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edgenode.errors import ClockOffsetExceeded

LOGICAL_BITS = 16
#: How far a remote timestamp may be ahead of the local wall clock when none is configured, in ms.
DEFAULT_MAX_OFFSET_MS = 500


def pack(physical_ms: int, logical: int) -> int:
    """Pack a physical time in ms and a logical counter into one timestamp."""
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    """The physical part of a packed timestamp, in ms since the epoch."""
    return ts >> LOGICAL_BITS


class Hlc:
    """A thread-safe hybrid logical clock.

    ``now`` returns wall time in seconds (injectable for tests); ``offset_ms`` shifts
    it, which is how tests and operators simulate a skewed clock. ``max_offset_ms``
    bounds how far ahead a peer's timestamp may be (:meth:`observe_remote`).
    """

    def __init__(self, now: Callable[[], float] | None = None, *, offset_ms: int = 0,
                 max_offset_ms: int = DEFAULT_MAX_OFFSET_MS) -> None:
        self._now = now or time.time
        self.offset_ms = offset_ms
        self.max_offset_ms = max_offset_ms
        self._lock = threading.Lock()
        self._last = 0

    def _physical(self) -> int:
        return int(self._now() * 1000) + self.offset_ms

    def tick(self) -> int:
        """A new timestamp for a local event, greater than every one issued or seen."""
        with self._lock:
            # A full logical counter carries into the milliseconds by itself: the timestamp is one integer.
            self._last = max(self._last + 1, pack(self._physical(), 0))
            return self._last

    def observe(self, remote: int) -> int:
        """Merge a timestamp this node trusts (its own, read back from disk); returns the new local time."""
        with self._lock:
            self._last = max(self._last, remote, pack(self._physical(), 0))
            return self._last

    def observe_remote(self, remote: int) -> int:
        """Merge a peer's timestamp; ClockOffsetExceeded, leaving the clock alone, if it is too far ahead."""
        with self._lock:
            wall = self._physical()
            ahead = physical_ms(remote) - wall
            if ahead > self.max_offset_ms:
                raise ClockOffsetExceeded(
                    f"a peer's timestamp is {ahead} ms ahead of this node's clock, more than the "
                    f"{self.max_offset_ms} ms cluster.max_clock_offset_ms allows; fix the clock of the node "
                    "that wrote it (NTP)", ahead_ms=ahead, max_offset_ms=self.max_offset_ms)
            self._last = max(self._last, remote, pack(wall, 0))
            return self._last

    def peek(self) -> int:
        """The last timestamp issued or observed, without advancing."""
        with self._lock:
            return self._last

    def skew_ms(self, remote: int) -> int:
        """How far ``remote``'s physical part is ahead of this node's physical clock, in ms."""
        return physical_ms(remote) - self._physical()
