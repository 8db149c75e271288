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

Fairness: calls queue per tenant (the request's tenant, :data:`current_tenant`, which the API
sets for every authenticated request). When a thread frees, the next call is taken from the
tenants with waiting calls in turn, not in arrival order, and one tenant holds at most
``tenant_share`` of a bridge's threads; so a burst of one tenant's slow calls (namespace opens
on a slow disk, a large walk) makes another tenant's call wait behind at most one call of it,
never behind the whole burst. The node's own work (no tenant) has no share: it only takes turns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

T = TypeVar("T")
W = TypeVar("W")

__all__ = ["CPU", "FILES", "GIT", "NET", "STORE", "Bridge", "FairQueue", "current_tenant", "register_metrics"]

#: The tenant the running request acts for (None: the node's own work); set by the API middleware.
current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("edgenode_tenant", default=None)

#: The queue key of the node's own work (it has no share, only a turn).
NODE = ""


class FairQueue(Generic[W]):
    """Waiting work per tenant, taken tenant by tenant in turn, each tenant holding at most ``share`` running.

    Not thread-safe: its owner calls it under its own lock. Work under the key :data:`NODE`
    (the node's own) has no share.
    """

    def __init__(self, share: int) -> None:
        if share < 1:
            raise ValueError(f"a tenant's share must be at least one, not {share}")
        self.share = share
        self.waiting = 0
        self.running = 0
        self._running: dict[str, int] = {}
        self._queues: OrderedDict[str, deque[W]] = OrderedDict()

    def put(self, key: str, work: W) -> None:
        """Queue ``work`` behind the rest of ``key``'s."""
        self._queues.setdefault(key, deque()).append(work)
        self.waiting += 1

    def take(self) -> tuple[str, W] | None:
        """The next work that may start (counted as running until :meth:`finished`), or None."""
        key = next((k for k in self._queues if k == NODE or self._running.get(k, 0) < self.share), None)
        if key is None:
            return None
        queue = self._queues.pop(key)
        work = queue.popleft()
        if queue:
            self._queues[key] = queue  # to the back: the next tenant goes first
        self.waiting -= 1
        self.running += 1
        self._running[key] = self._running.get(key, 0) + 1
        return key, work

    def finished(self, key: str) -> None:
        """Work of ``key`` taken by :meth:`take` has ended."""
        self.running -= 1
        self._running[key] -= 1
        if not self._running[key]:
            del self._running[key]

    def running_of(self, key: str) -> int:
        """How much of ``key``'s work is running."""
        return self._running.get(key, 0)

    def drain(self) -> list[tuple[str, W]]:
        """Remove and return every waiting work."""
        out = [(key, work) for key, queue in self._queues.items() for work in queue]
        self._queues.clear()
        self.waiting = 0
        return out


_Call = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class Bridge:
    """A named, bounded pool of threads that event loops hand blocking calls to, fair between tenants."""

    def __init__(self, name: str, max_workers: int, *, tenant_share: int = 0) -> None:
        if max_workers < 1:
            raise ValueError(f"a bridge needs at least one thread, not {max_workers}")
        self.name = name
        self.max_workers = max_workers
        #: Threads one tenant may hold at once (by default all but a quarter, at least one left to others).
        self.tenant_share = tenant_share if tenant_share > 0 else max(1, max_workers - max(1, max_workers // 4))
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queue: FairQueue[_Call] = FairQueue(self.tenant_share)

    @property
    def busy(self) -> int:
        """Threads running a call now."""
        return self._queue.running

    @property
    def waiting(self) -> int:
        """Calls queued for a thread."""
        return self._queue.waiting

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on one of this bridge's threads and await its result.

        The call queues under the caller's tenant (:data:`current_tenant`); cancelling the
        awaiting task drops a call that has not started.
        """
        ctx = contextvars.copy_context()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._queue.put(current_tenant.get() or NODE, (lambda: ctx.run(fn, *args, **kwargs), future))
            self._dispatch()
        return await asyncio.wrap_future(future)

    def _dispatch(self) -> None:
        """Start waiting calls on free threads (the lock is held)."""
        while self._queue.running < self.max_workers:
            taken = self._queue.take()
            if taken is None:
                return
            key, (fn, future) = taken
            if not future.set_running_or_notify_cancel():
                self._queue.finished(key)
                continue
            try:
                self._executor.submit(self._call, key, fn, future)
            except RuntimeError as exc:  # the interpreter is shutting down
                self._queue.finished(key)
                future.set_exception(exc)

    def _call(self, key: str, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._queue.finished(key)
                self._dispatch()


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
