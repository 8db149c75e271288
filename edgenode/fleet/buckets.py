"""Key-value buckets on plain JetStream streams of the fleet's own subjects, and chunked blobs on one.

A bucket is one stream keeping the last message of each subject ``<subject>.<key>``; its revision
is the stream sequence and compare-and-set is JetStream's expected-last-subject-sequence. Using the
fleet's own subjects (not ``$KV``/``$O``) keeps it working across a leaf node's connection to a hub.
The bucket is the fleet transport's own (``edgenode.cluster.transport.Bucket``); :func:`open_bucket`
makes one on a bare JetStream context (tests, benchmarks), :class:`Bucket` is what the control
plane needs of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError

from edgenode.cluster.transport import Bucket as FleetBucket
from edgenode.cluster.transport import Entry

#: Bytes per message of a chunked blob (well under NATS's default 1 MiB payload limit).
CHUNK_BYTES = 256 * 1024


class Bucket(Protocol):
    """What the control plane needs of a bucket."""

    stream: str

    async def put(self, key: str, value: bytes) -> int:
        """Set ``key``; returns its new revision."""

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Set ``key`` only if its revision is still ``last`` (0: only if absent); APIError otherwise."""

    async def get(self, key: str) -> Entry | None:
        """The value of ``key``, or None."""

    async def watch(self, handler: Callable[[Entry], None]) -> Subscription:
        """Call ``handler`` with every key's current value, then with every change."""


@dataclass(frozen=True)
class _JetStream:
    jetstream: JetStreamContext


async def open_bucket(js: JetStreamContext, *, stream: str, subject: str, replicas: int = 1) -> FleetBucket:
    """The fleet transport's bucket on ``stream`` (``<subject>.>``, one message per key), created if missing."""
    config = api.StreamConfig(name=stream, subjects=[f"{subject}.>"], max_msgs_per_subject=1,
                              allow_direct=True, discard=api.DiscardPolicy.OLD, num_replicas=replicas)
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != 10058:  # exists already (with this or an operator's config)
            raise
    return FleetBucket(_JetStream(js), stream, subject)


class DeferredBucket:
    """A bucket opened later (once JetStream answers): until then every call fails with ConnectionError."""

    def __init__(self) -> None:
        self.target: Bucket | None = None
        self.stream = ""

    def set(self, bucket: Bucket) -> None:
        """From now on, calls go to ``bucket``."""
        self.target = bucket
        self.stream = bucket.stream

    def _ready(self) -> Bucket:
        if self.target is None:
            raise ConnectionError("the fleet's bucket is not open yet")
        return self.target

    async def put(self, key: str, value: bytes) -> int:
        return await self._ready().put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        return await self._ready().update(key, value, last)

    async def get(self, key: str) -> Entry | None:
        return await self._ready().get(key)

    async def watch(self, handler: Callable[[Entry], None]) -> Subscription:
        return await self._ready().watch(handler)


class BlobStore:
    """Content-addressed blobs in a bucket: ``<sha256>`` holds a manifest, ``<sha256>.<n>`` its chunks."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    async def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its name, the SHA-256 of its bytes."""
        return (await self.add(data))[0]

    async def add(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        """Store ``data`` (once): its name, the SHA-256 of its bytes, and whether it was new to the bucket.

        ``digest`` is that SHA-256 when the caller has it already (hashed off the event loop).
        """
        digest = digest or hashlib.sha256(data).hexdigest()
        if await self.bucket.get(digest) is not None:
            return digest, False
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        for n, chunk in enumerate(chunks):
            await self.bucket.put(f"{digest}.{n}", chunk or b"\0")
        # the manifest last: whoever sees it finds every chunk
        await self.bucket.put(digest, json.dumps({"size": len(data), "chunks": len(chunks)}).encode())
        return digest, True

    async def get(self, digest: str) -> bytes | None:
        """The bytes named ``digest``, or None while they are not all there (or do not match their name)."""
        manifest = await self.bucket.get(digest)
        if manifest is None:
            return None
        info: dict[str, Any] = json.loads(manifest.value)
        parts = []
        for n in range(int(info["chunks"])):
            chunk = await self.bucket.get(f"{digest}.{n}")
            if chunk is None:
                return None
            parts.append(chunk.value)
        data = b"".join(parts)[: int(info["size"])]
        return data if hashlib.sha256(data).hexdigest() == digest else None


__all__ = ["CHUNK_BYTES", "BlobStore", "Bucket", "DeferredBucket", "Entry", "open_bucket"]
