"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from edgenode.threads import register_metrics

__all__ = ["CONTENT_TYPE_LATEST", "PRIVATE_LABELS", "LoopLag", "Metrics"]

#: Labels that name what a tenant owns (or the tenant): shown only to admins.
PRIVATE_LABELS = frozenset({"tenant", "worker", "namespace", "agent", "repo", "sandbox"})


class Metrics:
    """The node's registry plus the HTTP metrics every request feeds.

    Capabilities register their own metrics on ``registry`` (``Counter(..., registry=metrics.registry)``).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgenode_http_requests", "HTTP requests served, by method, route and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "edgenode_http_request_duration_seconds", "Time to serve an HTTP request, by method and route.",
            ["method", "route"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.info = Gauge("edgenode_info", "Constant 1, labelled with node id and version.",
                          ["node", "version"], registry=self.registry)
        self.loop_lag = LoopLag(self.registry)
        register_metrics(self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self, *, labelled: bool = True) -> bytes:
        """The registry in Prometheus text format; without ``labelled``, tenant-naming labels summed away."""
        if labelled:
            return generate_latest(self.registry)
        anonymous = CollectorRegistry(auto_describe=False)
        anonymous.register(_WithoutPrivateLabels(self.registry))
        return generate_latest(anonymous)


class LoopLag:
    """How late the event loop runs a timer: the time a blocking call holds every request up.

    A task sleeps ``interval_s`` over and over and records how much later than asked it woke.
    The figures go to a histogram (``edgenode_event_loop_lag_seconds``) and, for the last
    ``window`` samples, to ``summary()`` (shown in ``/v1/status``).
    """

    def __init__(self, registry: CollectorRegistry, *, interval_s: float = 0.05, window: int = 1200) -> None:
        self.interval_s = interval_s
        self.samples: collections.deque[float] = collections.deque(maxlen=window)
        self._histogram = Histogram(
            "edgenode_event_loop_lag_seconds", "How much later than asked the event loop ran a timer.",
            registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - asked)
            self.samples.append(lag)
            self._histogram.observe(lag)

    def summary(self) -> dict[str, float | int]:
        """p50, p99 and max lag over the recent window, in milliseconds."""
        ordered = sorted(self.samples)
        if not ordered:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {"samples": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


class _WithoutPrivateLabels(Collector):
    """The metrics of a registry with ``PRIVATE_LABELS`` dropped and the samples they split summed."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in PRIVATE_LABELS))
                key = (sample.name, labels)
                if key not in sums:
                    sums[key] = sample.value
                elif sample.name.endswith("_created"):  # a timestamp: the earliest, not a sum
                    sums[key] = min(sums[key], sample.value)
                else:
                    sums[key] += sample.value
            out.samples = [Sample(name, dict(labels), value) for (name, labels), value in sums.items()]
            yield out
