"""A bounded, fair pool of isolate threads: a full pool answers 503, a tenant over its share 429, never a hang.

wasmtime releases the GIL while guest code runs, so a few threads keep the
cores busy without blocking the event loop.

Fairness: one tenant may hold at most ``tenant_threads`` threads at once (by
default all but one), so a tenant spinning its guests to their CPU limits leaves a
thread to the others; its further work waits in its own queue, at most
``tenant_queue_depth`` deep (429 beyond). When a thread frees, the next work is
taken from the tenants in turn, not in arrival order, so a burst from one tenant
does not stand in front of another's single request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from edgenode.errors import Overloaded, TenantOverShare

T = TypeVar("T")

_Work = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class IsolatePool:
    """Runs guest work on ``size`` threads with at most ``queue_depth`` invocations waiting."""

    def __init__(self, size: int = 0, queue_depth: int = 64, *, tenant_threads: int = 0,
                 tenant_queue_depth: int = 16) -> None:
        self.size = size if size > 0 else max(2, os.cpu_count() or 2)
        self.queue_depth = queue_depth
        self.tenant_threads = tenant_threads if tenant_threads > 0 else max(1, self.size - 1)
        self.tenant_queue_depth = tenant_queue_depth
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="isolate")
        self._lock = threading.Lock()
        self.in_flight = 0
        self.rejected = 0
        self._running = 0
        self._by_tenant: dict[str, int] = {}  # running per tenant
        self._queued: dict[str, int] = {}  # in flight (running or waiting) per tenant
        self._waiting: OrderedDict[str, deque[_Work]] = OrderedDict()
        self._closed = False

    async def run(self, fn: Callable[[], T], *, tenant: str | None = None) -> T:
        """Run ``fn`` on an isolate thread; Overloaded when the pool is full, TenantOverShare past a tenant's share.

        Work without a ``tenant`` has no share: it only counts towards the pool's bounds.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        key = tenant if tenant is not None else ""
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
            self._waiting.setdefault(key, deque()).append((fn, future))
            self._dispatch()
        # The thread is released when its work is done, not when the caller stops waiting (a client
        # may disconnect while its guest still runs to its deadline); work not yet started is dropped.
        return await asyncio.wrap_future(future)

    def _may_run(self, key: str) -> bool:
        return key == "" or self._by_tenant.get(key, 0) < self.tenant_threads

    def _dispatch(self) -> None:
        """Start waiting work on free threads, taking tenants in turn (the lock is held)."""
        while self._running < self.size and self._waiting:
            key = next((k for k in self._waiting if self._may_run(k)), None)
            if key is None:
                return
            queue = self._waiting.pop(key)
            fn, future = queue.popleft()
            if queue:
                self._waiting[key] = queue  # to the back: the next tenant goes first
            if not future.set_running_or_notify_cancel():
                self._done(key, started=False)
                continue
            self._running += 1
            self._by_tenant[key] = self._by_tenant.get(key, 0) + 1
            try:
                self._executor.submit(self._call, key, fn, future)
            except RuntimeError:
                self._done(key, started=True)
                future.set_exception(Overloaded("the isolate pool is shutting down", retry_after=1))

    def _call(self, key: str, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._done(key, started=True)
                self._dispatch()

    def _done(self, key: str, *, started: bool) -> None:
        self.in_flight -= 1
        self._queued[key] -= 1
        if not self._queued[key]:
            del self._queued[key]
        if started:
            self._running -= 1
            self._by_tenant[key] -= 1
            if not self._by_tenant[key]:
                del self._by_tenant[key]

    def shutdown(self) -> None:
        """Stop taking work; running invocations finish on their own deadlines, waiting ones are cancelled."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, OrderedDict()
            for key, queue in waiting.items():
                for _, future in queue:
                    if future.cancel():
                        self._done(key, started=False)
        self._executor.shutdown(wait=False, cancel_futures=True)
