"""Namespaces whose peer changes cannot merge here: each blocks only itself, and says so.

A batch of changes that does not fit a namespace (its table is defined differently
here, a row collides with a different local row, the batch is stamped too far
ahead of this node's clock) is refused whole, as before; what is new is that the
refusal stays with that namespace. It is recorded here (which peer, why, since
when, how often), counted in metrics and listed in ``GET /v1/cluster``, while the
same peer's other namespaces go on being applied. The next batch of that
namespace that applies clears it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgenode.errors import ClockOffsetExceeded, EdgenodeError

log = logging.getLogger(__name__)


@dataclass
class Blocked:
    """One namespace's last refused batch."""

    tenant: str
    namespace: str
    peer: str
    code: str
    reason: str
    since: float
    last: float
    refusals: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, as ``GET /v1/cluster`` lists it."""
        return {"tenant": self.tenant, "namespace": self.namespace, "peer": self.peer, "code": self.code,
                "reason": self.reason, "since": round(self.since, 3), "last": round(self.last, 3),
                "refusals": self.refusals}


class BlockedNamespaces:
    """The namespaces of this node that a peer's changes could not be merged into, and the clock refusals."""

    def __init__(self, registry: CollectorRegistry | None = None, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._blocked: dict[tuple[str, str], Blocked] = {}
        self.clock_refusals = 0
        self._m_refused = Counter("edgenode_state_merge_refusals", "Peer change batches a namespace refused.",
                                  ["code"], registry=registry)
        self._m_clock = Counter("edgenode_state_clock_refusals",
                                "Peer change batches refused for timestamps past cluster.max_clock_offset_ms.",
                                registry=registry)
        self._m_blocked = Gauge("edgenode_state_blocked_namespaces",
                                "Namespaces whose latest peer changes could not be merged.", registry=registry)
        self._m_blocked.set_function(lambda: len(self._blocked))

    def record(self, tenant: str, namespace: str, peer: str, error: EdgenodeError) -> None:
        """A batch from ``peer`` for this namespace was refused with ``error``."""
        now = self._now()
        clock = isinstance(error, ClockOffsetExceeded)
        with self._lock:
            entry = self._blocked.get((tenant, namespace))
            first = entry is None or entry.code != error.code
            if entry is None:
                entry = self._blocked[(tenant, namespace)] = Blocked(tenant, namespace, peer, error.code,
                                                                     error.message, now, now)
            else:
                entry.peer, entry.code, entry.reason, entry.last = peer, error.code, error.message, now
                entry.refusals += 1
            if clock:
                self.clock_refusals += 1
        self._m_refused.labels(error.code).inc()
        if clock:
            self._m_clock.inc()
        # Once per cause, then quietly: a blocked namespace is retried on every sync round.
        (log.warning if first else log.debug)(
            "a namespace refused a peer's changes; its other namespaces go on", extra={
                "tenant": tenant, "namespace": namespace, "peer_node": peer, "code": error.code,
                "reason": error.message})

    def clear(self, tenant: str, namespace: str) -> None:
        """A batch for this namespace applied: it merges again."""
        with self._lock:
            entry = self._blocked.pop((tenant, namespace), None)
        if entry is not None:
            log.info("a blocked namespace merges again", extra={
                "tenant": tenant, "namespace": namespace, "refusals": entry.refusals})

    def forget_tenant(self, tenant: str) -> None:
        """Drop the entries of a purged tenant."""
        with self._lock:
            for key in [k for k in self._blocked if k[0] == tenant]:
                del self._blocked[key]

    def recent(self, within_s: float) -> set[tuple[str, str]]:
        """Namespaces refused within the last ``within_s`` seconds (a puller may skip them for now)."""
        cutoff = self._now() - within_s
        with self._lock:
            return {k for k, e in self._blocked.items() if e.last >= cutoff}

    def listing(self) -> list[dict[str, Any]]:
        """Every blocked namespace, oldest first."""
        with self._lock:
            return [e.as_dict() for e in sorted(self._blocked.values(), key=lambda e: (e.since, e.tenant,
                                                                                         e.namespace))]

    def __contains__(self, key: object) -> bool:
        """Whether ``(tenant, namespace)`` is blocked now."""
        with self._lock:
            return key in self._blocked

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocked)
