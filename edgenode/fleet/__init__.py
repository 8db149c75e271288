"""The fleet-wide control plane and Git ref traffic, carried by NATS.

Capabilities only see :class:`ChangeFeed` (no NATS import): they tell it which record changed
after each local commit. The replicating classes (``edgenode.fleet.control``, ``edgenode.fleet.git``)
import the NATS client and are created only on nodes that are part of a fleet.
"""

from __future__ import annotations

from edgenode.fleet.changes import ChangeFeed

__all__ = ["ChangeFeed"]
