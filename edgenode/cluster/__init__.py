"""The fleet: peer membership, signed peer requests, health, and state replication."""

from __future__ import annotations

from edgenode.cluster.cluster import Cluster
from edgenode.cluster.hlc import Hlc
from edgenode.cluster.membership import Membership, Peer
from edgenode.cluster.ranges import RangeSet
from edgenode.cluster.signing import Verifier, sign

__all__ = ["Cluster", "Hlc", "Membership", "Peer", "RangeSet", "Verifier", "sign"]
