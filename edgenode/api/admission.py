"""Per-tenant admission: a tenant holding its share of the node's requests is told to come back later.

Each authenticated, non-admin request counts towards its tenant's requests in flight. While
another tenant has a request in flight too, a tenant already at ``share`` requests is answered
429 with ``Retry-After`` before its request does any work, so a tenant keeping many requests
open cannot fill the event loop, the store's bridges and the isolate queue in front of another
tenant's few. A tenant alone on the node is not held to the share (nobody waits for it), and
admins (the operator's own requests) are never refused.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as CounterMetric

from edgenode.errors import TenantOverShare

__all__ = ["Admission"]


class Admission:
    """Requests in flight per tenant, on the event loop (no lock: every call comes from the loop)."""

    def __init__(self, share: int, registry: CollectorRegistry | None = None) -> None:
        if share < 0:
            raise ValueError(f"a tenant's share of requests must be 0 (no limit) or more, not {share}")
        self.share = share
        self._in_flight: Counter[str] = Counter()
        self.refused = 0
        self._refused: CounterMetric | None = None
        if registry is not None:
            gauge = Gauge("edgenode_http_tenant_requests_in_flight",
                          "Requests of tenants (admins aside) being served now.", registry=registry)
            gauge.set_function(lambda: sum(self._in_flight.values()))
            self._refused = CounterMetric("edgenode_http_tenant_refused",
                                          "Requests refused because their tenant held its share of requests "
                                          "while another tenant had requests in flight.", registry=registry)

    def enter(self, tenant: str) -> None:
        """Count one request of ``tenant``; TenantOverShare if it is at its share while another tenant is served."""
        held = self._in_flight[tenant]
        if self.share and held >= self.share and len(self._in_flight) > 1:  # it and another tenant
            self.refused += 1
            if self._refused is not None:
                self._refused.inc()
            raise TenantOverShare(
                f"this tenant has {held} requests in flight, its share while other tenants are served; "
                "retry shortly", retry_after=1, limit=self.share)
        self._in_flight[tenant] += 1

    def leave(self, tenant: str) -> None:
        """A request counted by :meth:`enter` is answered."""
        self._in_flight[tenant] -= 1
        if self._in_flight[tenant] <= 0:
            del self._in_flight[tenant]

    def in_flight(self, tenant: str) -> int:
        """Requests of ``tenant`` being served now."""
        return self._in_flight.get(tenant, 0)
