"""A bounded, fair pool of isolate threads: a full pool answers 503, a tenant over its share 429, never a hang.

wasmtime releases the GIL while guest code runs, so a few threads keep the
cores busy without blocking the event loop.

Fairness: one tenant may hold at most ``tenant_threads`` threads at once (by
default all but one), so a tenant spinning its guests to their CPU limits leaves a
thread to the others; its further work waits in its own queue, at most
``tenant_queue_depth`` deep (429 beyond). When a thread frees, the next work is
taken from the tenants in turn, not in arrival order (``threads.FairQueue``), so a
burst from one tenant does not stand in front of another's single request.

Threads are not the only thing a spinning guest takes: on a node with few cores its
thread competes for the CPU with the event loop, the store and the other tenants'
guests. So the pool keeps each tenant's recent guest CPU time (decaying, see
:class:`GuestCpu`), and the work of a tenant that used more than an equal share of it
runs on threads of a lower OS priority (``over_share_nice`` added to their nice value;
Linux sets it per thread). Those threads keep their priority for good (an unprivileged
process cannot raise it back), so the pool has two lanes of threads, all started with the
pool by its creator (a thread inherits its creator's priority, so none may be born of a
lowered one); it still runs at most ``size`` guests at once. Where the priority cannot be
lowered, every guest runs on the normal lane and :meth:`IsolatePool.priority_status` says why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from edgenode.errors import Overloaded, TenantOverShare
from edgenode.threads import NODE, FairQueue

T = TypeVar("T")

log = logging.getLogger(__name__)

_Work = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]

#: Recent guest CPU below this (seconds, decayed) does not make a tenant active.
ACTIVE_CPU_S = 0.001


class GuestCpu:
    """Each tenant's recent guest CPU time, halving every ``half_life_s``; who used more than an equal share."""

    def __init__(self, half_life_s: float = 2.0, *, now: Callable[[], float] = time.monotonic) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, not {half_life_s}")
        self.half_life_s = half_life_s
        self._now = now
        self._used: dict[str, tuple[float, float]] = {}  # tenant -> (cpu seconds, as of)

    def _decayed(self, key: str, now: float) -> float:
        used, at = self._used.get(key, (0.0, now))
        return float(used * 0.5 ** ((now - at) / self.half_life_s))

    def add(self, key: str, cpu_s: float) -> None:
        """Count ``cpu_s`` seconds of guest CPU for ``key``."""
        now = self._now()
        self._used[key] = (self._decayed(key, now) + max(0.0, cpu_s), now)

    def recent(self) -> dict[str, float]:
        """Recent CPU seconds of every tenant still active (forgetting the others)."""
        now = self._now()
        out = {key: self._decayed(key, now) for key in self._used}
        for key, used in out.items():
            if used < ACTIVE_CPU_S:
                del self._used[key]
        return {key: used for key, used in out.items() if used >= ACTIVE_CPU_S}

    def over_share(self, key: str) -> bool:
        """Whether ``key`` used more than an equal share of the active tenants' recent CPU (a lone tenant never)."""
        recent = self.recent()
        if key == NODE or len(recent) < 2 or key not in recent:
            return False
        return recent[key] > sum(recent.values()) / len(recent)


class _Lane:
    """Threads of one OS priority, all started at once by the creator of the lane, running what they are given."""

    def __init__(self, name: str, count: int, on_start: Callable[[], None] | None = None) -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._on_start = on_start
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while (work := self._work.get()) is not None:
            work()

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on one of the lane's threads; RuntimeError once the lane is shut down."""
        if self._closed:
            raise RuntimeError("the lane is shut down")
        self._work.put(work)

    def shutdown(self) -> None:
        """Let the threads end once the work already given to them is done."""
        self._closed = True
        for _ in self._threads:
            self._work.put(None)


class IsolatePool:
    """Runs guest work on ``size`` threads with at most ``queue_depth`` invocations waiting."""

    def __init__(self, size: int = 0, queue_depth: int = 64, *, tenant_threads: int = 0,
                 tenant_queue_depth: int = 16, over_share_nice: int = 10,
                 cpu: GuestCpu | None = None) -> None:
        if not 0 <= over_share_nice <= 19:
            raise ValueError(f"over_share_nice must be between 0 and 19, not {over_share_nice}")
        self.size = size if size > 0 else max(2, os.cpu_count() or 2)
        self.queue_depth = queue_depth
        self.tenant_threads = tenant_threads if tenant_threads > 0 else max(1, self.size - 1)
        self.tenant_queue_depth = tenant_queue_depth
        self.over_share_nice = over_share_nice
        self.cpu = cpu or GuestCpu()
        self._lock = threading.Lock()
        self._normal = _Lane("isolate", self.size)
        self._low = _Lane("isolate-low", self.size, self._lower_priority) if over_share_nice else None
        self.in_flight = 0
        self.rejected = 0
        #: Invocations started on the lower-priority threads.
        self.lowered = 0
        self._priority_problem: str | None = None if over_share_nice else "off (workers.over_share_nice is 0)"
        self._queue: FairQueue[_Work] = FairQueue(self.tenant_threads)
        self._queued: dict[str, int] = {}  # in flight (running or waiting) per tenant
        self._closed = False

    async def run(self, fn: Callable[[], T], *, tenant: str | None = None) -> T:
        """Run ``fn`` on an isolate thread; Overloaded when the pool is full, TenantOverShare past a tenant's share.

        Work without a ``tenant`` has no share: it only counts towards the pool's bounds.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        key = tenant if tenant is not None else NODE
        with self._lock:
            if self._closed:
                raise Overloaded("the isolate pool is shutting down", retry_after=1)
            if self.in_flight >= self.size + self.queue_depth:
                self.rejected += 1
                raise Overloaded(
                    f"all {self.size} isolate threads are busy and {self.queue_depth} requests wait; retry shortly",
                    retry_after=1,
                )
            if tenant is not None and self._queued.get(key, 0) >= self.tenant_threads + self.tenant_queue_depth:
                self.rejected += 1
                raise TenantOverShare(
                    f"this tenant has {self.tenant_threads} isolate threads busy and {self.tenant_queue_depth} "
                    "requests waiting; retry shortly", retry_after=1)
            self.in_flight += 1
            self._queued[key] = self._queued.get(key, 0) + 1
            self._queue.put(key, (fn, future))
            self._dispatch()
        # The thread is released when its work is done, not when the caller stops waiting (a client
        # may disconnect while its guest still runs to its deadline); work not yet started is dropped.
        return await asyncio.wrap_future(future)

    def _dispatch(self) -> None:
        """Start waiting work on free threads, taking tenants in turn (the lock is held)."""
        while self._queue.running < self.size:
            taken = self._queue.take()
            if taken is None:
                return
            key, (fn, future) = taken
            if not future.set_running_or_notify_cancel():
                self._done(key, started=True)
                continue
            low = self._low is not None and self._priority_problem is None and self.cpu.over_share(key)
            lane = self._low if low and self._low is not None else self._normal
            try:
                lane.submit(functools.partial(self._call, key, fn, future))
            except RuntimeError:
                self._done(key, started=True)
                future.set_exception(Overloaded("the isolate pool is shutting down", retry_after=1))
                continue
            self.lowered += low

    def _call(self, key: str, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        began = time.thread_time()
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        # The CPU is counted and the thread given back before the caller hears back, so its next
        # request is weighed with this one and finds this thread free (not a spurious 503).
        used = time.thread_time() - began
        with self._lock:
            self.cpu.add(key, used)
            self._done(key, started=True)
            self._dispatch()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _done(self, key: str, *, started: bool) -> None:
        self.in_flight -= 1
        self._queued[key] -= 1
        if not self._queued[key]:
            del self._queued[key]
        if started:
            self._queue.finished(key)

    def _lower_priority(self) -> None:
        """Start-up of a lower-priority thread: add ``over_share_nice`` to its own nice value."""
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.over_share_nice))
        except (OSError, AttributeError) as exc:  # not Linux, or refused: such threads run at normal priority
            with self._lock:
                if self._priority_problem is None:
                    self._priority_problem = f"unavailable ({type(exc).__name__}: {exc})"
                    log.warning("cannot lower the priority of isolate threads; over-share tenants' guests run at "
                                "the node's priority", extra={"error": str(exc)})

    def priority_status(self) -> str:
        """How over-share tenants' guests run: at a lowered priority, or why not."""
        return self._priority_problem or f"guests of tenants over their CPU share run at nice +{self.over_share_nice}"

    def shutdown(self) -> None:
        """Stop taking work; running invocations finish on their own deadlines, waiting ones are cancelled."""
        with self._lock:
            self._closed = True
            for key, (_, future) in self._queue.drain():
                if future.cancel():
                    self._done(key, started=False)
        self._normal.shutdown()
        if self._low is not None:
            self._low.shutdown()
