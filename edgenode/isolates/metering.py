"""Metering: per invocation CPU, wall time, subrequests and outcome.

Each invocation updates Prometheus metrics at once and adds to in-memory
per-worker totals that are folded into ``workers.db`` about once a second
(one write per batch, not per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from edgenode.isolates.registry import Registry
    from edgenode.isolates.runtime import Usage
    from edgenode.metrics import Metrics

log = logging.getLogger(__name__)


class Meter:
    """Records usage; ``flush()`` persists the totals gathered since the last flush."""

    def __init__(self, metrics: Metrics, registry: Registry, *, interval_s: float = 1.0) -> None:
        self.registry = registry
        self.interval_s = interval_s
        r = metrics.registry
        self.invocations = Counter("edgenode_worker_invocations", "Worker invocations by tenant, worker and outcome.",
                                   ["tenant", "worker", "outcome"], registry=r)
        self.cpu = Counter("edgenode_worker_cpu_seconds", "Guest CPU time by tenant and worker.",
                           ["tenant", "worker"], registry=r)
        self.subrequests = Counter("edgenode_worker_subrequests", "Outbound fetches by tenant and worker.",
                                   ["tenant", "worker"], registry=r)
        self.duration = Histogram(
            "edgenode_worker_duration_seconds", "Wall time of an invocation, instantiation included.",
            ["tenant", "worker"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
        )
        self.instantiate = Histogram(
            "edgenode_worker_instantiate_seconds", "Time to instantiate a fresh isolate from compiled code.",
            registry=r, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )
        self.rejected = Counter("edgenode_worker_rejected", "Invocations refused because the pool was full.",
                                registry=r)
        self.builds = Counter("edgenode_worker_builds", "Python worker builds by result.", ["result"], registry=r)
        self.busy = Gauge("edgenode_worker_in_flight", "Invocations running or queued.", registry=r)
        self._totals: dict[tuple[str, str], dict[str, float]] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def record(self, tenant: str, worker: str, usage: Usage) -> None:
        """Account for one invocation (any thread)."""
        self.invocations.labels(tenant, worker, usage.outcome).inc()
        self.cpu.labels(tenant, worker).inc(usage.cpu_ms / 1000)
        if usage.subrequests:
            self.subrequests.labels(tenant, worker).inc(usage.subrequests)
        self.duration.labels(tenant, worker).observe(usage.wall_ms / 1000)
        if usage.instantiate_ms:
            self.instantiate.observe(usage.instantiate_ms / 1000)
        with self._lock:
            t = self._totals.setdefault((tenant, worker), {
                "requests": 0, "errors": 0, "cpu_ms": 0.0, "wall_ms": 0.0, "subrequests": 0,
                "memory_limit_mb": 0, "last_at": 0.0,
            })
            t["requests"] += 1
            t["errors"] += usage.outcome != "ok"
            t["cpu_ms"] += usage.cpu_ms
            t["wall_ms"] += usage.wall_ms
            t["subrequests"] += usage.subrequests
            t["memory_limit_mb"] = max(t["memory_limit_mb"], usage.memory_limit_mb)
            t["last_at"] = time.time()

    async def flush(self) -> None:
        """Write the totals gathered so far to the usage table."""
        with self._lock:
            totals, self._totals = self._totals, {}
        try:
            await self.registry.add_usage(totals)
        except Exception:
            log.exception("could not record worker usage; keeping it for the next flush")
            with self._lock:
                for key, t in totals.items():
                    mine = self._totals.setdefault(key, dict.fromkeys(t, 0))
                    for k, v in t.items():
                        mine[k] = max(mine[k], v) if k in ("memory_limit_mb", "last_at") else mine[k] + v

    def start(self) -> None:
        """Flush periodically until stopped."""
        self._task = asyncio.create_task(self._run(), name="worker-usage-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def stop(self) -> None:
        """Stop the periodic flush and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
