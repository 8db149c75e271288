"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["CONTENT_TYPE_LATEST", "PRIVATE_LABELS", "Metrics"]

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
