"""Requests in flight per tenant: admission by share, and waiting for a tenant's requests to end.

Every authenticated request counts towards its tenant (an admin's towards the tenant it acts
for) while it runs. Two uses read the one count:

* **Admission.** While another tenant has a request in flight too, a tenant already at
  ``share`` requests is answered 429 with ``Retry-After`` before its request does any work,
  so a tenant keeping many requests open cannot fill the event loop, the store's bridges and
  the isolate queue in front of another tenant's few. A tenant alone on the node is not held
  to the share (nobody waits for it), and admins (the operator's own requests) are never
  refused.
* **Draining.** A tenant's deletion waits (bounded) for the tenant's requests already under
  way, so what they write after its first removal pass goes in a second one.

All calls come from the event loop (no lock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as CounterMetric

from edgenode.errors import TenantOverShare

__all__ = ["Admission"]


class Admission:
    """Requests in flight per tenant, on the event loop."""

    def __init__(self, share: int = 0, registry: CollectorRegistry | None = None) -> None:
        if share < 0:
            raise ValueError(f"a tenant's share of requests must be 0 (no limit) or more, not {share}")
        self.share = share
        self._in_flight: Counter[str] = Counter()
        self._ended: dict[str, asyncio.Event] = {}  # set, and replaced, whenever one of a tenant's ends
        self.refused = 0
        self._refused: CounterMetric | None = None
        if registry is not None:
            gauge = Gauge("edgenode_http_tenant_requests_in_flight",
                          "Authenticated requests being served now.", registry=registry)
            gauge.set_function(lambda: sum(self._in_flight.values()))
            self._refused = CounterMetric("edgenode_http_tenant_refused",
                                          "Requests refused because their tenant held its share of requests "
                                          "while another tenant had requests in flight.", registry=registry)

    def enter(self, tenant: str, *, limited: bool = True) -> None:
        """Count one request of ``tenant``; TenantOverShare if ``limited`` and it is at its share while
        another tenant is served."""
        held = self._in_flight[tenant]
        if limited and self.share and held >= self.share and len(self._in_flight) > 1:  # it and another
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
        ended = self._ended.pop(tenant, None)
        if ended is not None:
            ended.set()

    @contextlib.contextmanager
    def active(self, tenant: str) -> Iterator[None]:
        """Count one piece of the tenant's work while the block runs (never refused)."""
        self.enter(tenant, limited=False)
        try:
            yield
        finally:
            self.leave(tenant)

    def in_flight(self, tenant: str) -> int:
        """Requests of ``tenant`` being served now."""
        return self._in_flight.get(tenant, 0)

    async def idle(self, tenant: str, timeout_s: float, *, besides: int = 0) -> bool:
        """Wait until at most ``besides`` of the tenant's requests run (the caller's own); False on timeout."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while self.in_flight(tenant) > besides:
            left = until - loop.time()
            if left <= 0:
                return False
            ended = self._ended.setdefault(tenant, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), left)
        return True
