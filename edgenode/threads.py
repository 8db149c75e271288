"""The node's bridges from the event loop to threads: one named, bounded pool per kind of work.

Blocking work never runs on the event loop; it goes to the bridge of its kind, so a slow kind
(a large git pack, a workspace being removed) queues behind its own kind only and never holds
up the store, or the other way round:

- ``STORE``: SQLite reads, namespace opens and other short store calls;
- ``FILES``: workspace and cache file system work (writes, walks, removals, disk measures);
- ``GIT``: repository work (dulwich, git subprocesses);
- ``NET``: blocking network calls: name resolution, a model provider's reply;
- ``CPU``: short pure-Python work too large for the loop (parsing a big body, hashing).

Waits that last as long as what they wait for (a supervised child's exit, a pool's shutdown)
stay on asyncio's own threads: they would hold a bounded bridge's thread for that long.
Isolates and agent runs have pools of their own, with per-tenant shares (``isolates.pool``,
``agents.engine``). Each bridge copies the caller's context (the request id reaches the
thread's log lines) and reports its busy threads and queued calls as metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

T = TypeVar("T")

__all__ = ["CPU", "FILES", "GIT", "NET", "STORE", "Bridge", "register_metrics"]


class Bridge:
    """A named, bounded pool of threads that event loops hand blocking calls to."""

    def __init__(self, name: str, max_workers: int) -> None:
        self.name = name
        self.max_workers = max_workers
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.busy = 0
        self.waiting = 0

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on one of this bridge's threads and await its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        with self._lock:
            self.waiting += 1
        return await loop.run_in_executor(self._executor, functools.partial(self._call, ctx, fn, args, kwargs))

    def _call(self, ctx: contextvars.Context, fn: Callable[..., T], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> T:
        with self._lock:
            self.waiting -= 1
            self.busy += 1
        try:
            return ctx.run(fn, *args, **kwargs)
        finally:
            with self._lock:
                self.busy -= 1


#: SQLite calls (the store's writers have threads of their own; these serve reads and opens).
STORE = Bridge("store", 32)
#: File system work on workspaces, caches and data directories.
FILES = Bridge("files", 8)
#: Git repositories and git subprocesses.
GIT = Bridge("git", 8)
#: Blocking network calls: name resolution, synchronous provider clients.
NET = Bridge("net", 16)
#: Short CPU-bound work too large for the event loop.
CPU = Bridge("cpu", 4)

BRIDGES = (STORE, FILES, GIT, NET, CPU)


class _BridgeCollector(Collector):
    def collect(self) -> Any:
        busy = GaugeMetricFamily("edgenode_thread_bridge_busy", "Threads of a bridge running a call.",
                                 labels=["bridge"])
        waiting = GaugeMetricFamily("edgenode_thread_bridge_waiting",
                                    "Calls queued for a bridge's threads.", labels=["bridge"])
        size = GaugeMetricFamily("edgenode_thread_bridge_threads", "Threads a bridge may use.",
                                 labels=["bridge"])
        for bridge in BRIDGES:
            busy.add_metric([bridge.name], bridge.busy)
            waiting.add_metric([bridge.name], bridge.waiting)
            size.add_metric([bridge.name], bridge.max_workers)
        yield from (busy, waiting, size)


def register_metrics(registry: CollectorRegistry) -> None:
    """Report every bridge's busy threads and queued calls in ``registry``."""
    registry.register(_BridgeCollector())
