"""A bounded pool of isolate threads: a full pool and queue answer 503, never hang.

wasmtime releases the GIL while guest code runs, so a few threads keep the
cores busy without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edgenode.errors import Overloaded

T = TypeVar("T")


class IsolatePool:
    """Runs guest work on ``size`` threads with at most ``queue_depth`` invocations waiting."""

    def __init__(self, size: int = 0, queue_depth: int = 64) -> None:
        self.size = size if size > 0 else max(2, os.cpu_count() or 2)
        self.queue_depth = queue_depth
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="isolate")
        self._lock = threading.Lock()
        self.in_flight = 0
        self.rejected = 0

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on an isolate thread; raise Overloaded when pool and queue are full."""
        with self._lock:
            if self.in_flight >= self.size + self.queue_depth:
                self.rejected += 1
                raise Overloaded(
                    f"all {self.size} isolate threads are busy and {self.queue_depth} requests wait; retry shortly",
                    retry_after=1,
                )
            self.in_flight += 1
        try:
            future = self._executor.submit(fn)
        except RuntimeError:
            self._release()
            raise Overloaded("the isolate pool is shutting down", retry_after=1) from None
        # Released when the thread is done, not when the caller stops waiting (a client may
        # disconnect while its guest still runs to its deadline).
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def shutdown(self) -> None:
        """Stop taking work; running invocations finish on their own deadlines."""
        self._executor.shutdown(wait=False, cancel_futures=True)
