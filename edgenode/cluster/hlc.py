"""Hybrid logical clocks (Kulkarni, Demirbas et al., 2014), packed into one sortable integer.

A timestamp is ``physical_ms << 16 | logical``: it never goes backwards, stays close
to wall time, and after a node sees a remote timestamp every later local one is
greater, so a write made after reading another's write wins over it even when the
two nodes' clocks disagree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LOGICAL_BITS = 16
_LOGICAL_MAX = (1 << LOGICAL_BITS) - 1


def pack(physical_ms: int, logical: int) -> int:
    """Pack a physical time in ms and a logical counter into one timestamp."""
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    """The physical part of a packed timestamp, in ms since the epoch."""
    return ts >> LOGICAL_BITS


class Hlc:
    """A thread-safe hybrid logical clock.

    ``now`` returns wall time in seconds (injectable for tests); ``offset_ms`` shifts
    it, which is how tests and operators simulate a skewed clock.
    """

    def __init__(self, now: Callable[[], float] | None = None, *, offset_ms: int = 0) -> None:
        self._now = now or time.time
        self.offset_ms = offset_ms
        self._lock = threading.Lock()
        self._last = 0

    def _physical(self) -> int:
        return int(self._now() * 1000) + self.offset_ms

    def tick(self) -> int:
        """A new timestamp for a local event, greater than every one issued or seen."""
        with self._lock:
            self._last = max(self._last + 1, pack(self._physical(), 0))
            if self._last & _LOGICAL_MAX == _LOGICAL_MAX:  # logical overflow: borrow the next ms
                self._last = pack(physical_ms(self._last) + 1, 0)
            return self._last

    def observe(self, remote: int) -> int:
        """Merge a timestamp received from another node; returns the new local time."""
        with self._lock:
            self._last = max(self._last, remote, pack(self._physical(), 0))
            return self._last

    def peek(self) -> int:
        """The last timestamp issued or observed, without advancing."""
        with self._lock:
            return self._last

    def skew_ms(self, remote: int) -> int:
        """How far ``remote``'s physical part is ahead of this node's physical clock, in ms."""
        return physical_ms(remote) - self._physical()
