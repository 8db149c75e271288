"""Run leases: which node owns a fleet run that is executing, by compare-and-set in a fleet bucket.

One key per run (a hash of its key) in the ``LEASES`` bucket. A lease's value names the
holder and its *fence*: the bucket revision at which the holder acquired it. Acquiring is a
compare-and-set on the revision read (0: the key is absent), so of several nodes trying at
once exactly one wins. The holder renews by compare-and-set on its last revision every third
of the TTL; a renewal that fails means another node took the run (the lease had expired), and
the holder stops acting on it.

A lease is free when its key is absent, holds a release marker (``node`` null), was last
written more than ``ttl_s`` ago (the holder stopped renewing: it is gone, paused or cut off),
or names a node the membership view reports stopped. Only executing runs are held: a parked
run's lease is released, so parked runs cost no renewals. The bucket's age limit drops
release markers and dead holders' leases, so parked runs also cost no storage here.

The lease says who *should* write; the journal stream's expected-sequence check is what stops
a former holder that has not noticed yet (:mod:`edgenode.agents.fleetjournal`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import APIError

from edgenode.cluster.transport import Bucket, Entry, dumps

log = logging.getLogger(__name__)

#: JetStream's answer to a publish whose expected last sequence is stale.
WRONG_LAST_SEQUENCE = 10071


def token(key: str) -> str:
    """A run key as one subject token (run ids may hold dots, which separate subject tokens)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass
class Lease:
    """A lease this node holds on one run."""

    key: str
    fence: int
    revision: int
    #: Set when a renewal found another holder: this node must no longer act on the run.
    lost: bool = False


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lease now, as the bucket says."""

    node: str | None
    fence: int
    revision: int
    written_at: float


class Leases:
    """Acquire, renew and release run leases in one bucket."""

    def __init__(self, bucket: Bucket, node_id: str, *, ttl_s: float, stopped: Callable[[str], bool] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.bucket = bucket
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._stopped = stopped or (lambda node: False)
        self._now = now

    async def holder(self, key: str) -> tuple[Holder | None, int]:
        """The live holder of ``key``'s lease (None when free) and the revision to compare against."""
        entry = await self.bucket.get(token(key))
        if entry is None:
            return None, 0
        held = _parse(entry)
        if held.node is None or self._now() - entry.written_at > self.ttl_s or (
                held.node != self.node_id and self._stopped(held.node)):
            return None, entry.revision
        return held, entry.revision

    async def acquire(self, key: str) -> Lease | None:
        """Take ``key``'s lease if it is free; None if another node holds it or won the race."""
        held, last = await self.holder(key)
        if held is not None and held.node != self.node_id:
            return None
        try:
            revision = await self.bucket.update(token(key), self._value(None), last)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                log.debug("lost a lease race", extra={"run": key, "last": last, "error": exc.description})
                return None
            raise
        # The fence is the acquiring revision: written into the value at the next renewal.
        return Lease(key, revision, revision)

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False (and ``lost`` set) when another node has taken it."""
        try:
            lease.revision = await self.bucket.update(token(lease.key), self._value(lease.fence), lease.revision)
            return True
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            lease.lost = True
            return False

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` up (a release marker; it changes nothing if another node took it meanwhile)."""
        try:
            await self.bucket.update(token(lease.key), dumps({"node": None}), lease.revision)
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
        lease.lost = True

    def _value(self, fence: int | None) -> bytes:
        return dumps({"node": self.node_id, "fence": fence, "at": round(self._now(), 3)})


def _parse(entry: Entry) -> Holder:
    try:
        data = json.loads(entry.value)
    except ValueError:
        data = {}
    node = data.get("node") if isinstance(data, dict) else None
    fence = data.get("fence") if isinstance(data, dict) else None
    return Holder(node if isinstance(node, str) else None, fence if type(fence) is int else entry.revision,
                  entry.revision, entry.written_at)
