"""The fleet: NATS transport (a supervised nats-server or an operator's), membership, signed peer requests."""

from __future__ import annotations

from edgenode.cluster.cluster import Cluster
from edgenode.cluster.hlc import Hlc
from edgenode.cluster.members import Member, Members
from edgenode.cluster.membership import Membership, Peer
from edgenode.cluster.ranges import RangeSet
from edgenode.cluster.signing import Verifier, derive, sign
from edgenode.cluster.transport import Bucket, Entry, NatsTransport, Transport

__all__ = ["Bucket", "Cluster", "Entry", "Hlc", "Member", "Members", "Membership", "NatsTransport", "Peer",
           "RangeSet", "Transport", "Verifier", "derive", "sign"]
