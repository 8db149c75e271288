"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


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

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
