"""The fleet transport: what capabilities are handed to reach the rest of the fleet.

:class:`Transport` is the interface (publish, subscribe, request, JetStream streams
and buckets, members); :class:`NatsTransport` implements it on a nats-py
connection. Subjects are relative to the fleet's prefix (``edn.<fleet id>``):
``transport.subject("state", "changes")`` is ``edn.<fleet id>.state.changes``.

Fleet-wide streams and buckets live in the fleet's JetStream domain: the cluster's
own in the small-fleet shape, the hub's for leaf nodes. A :class:`Bucket` is a
key-value bucket kept on a stream of the fleet's own subjects (one message per
key, an age limit as the TTL), so it works the same across a leaf connection,
where NATS's ``$KV`` subjects do not pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]

#: JetStream's answers when a stream asks for more replicas than there are servers.
_TOO_FEW_SERVERS = {10005, 10074, 10023}


@dataclass(frozen=True)
class Entry:
    """One key of a bucket: its value, revision (stream sequence) and when it was written."""

    key: str
    value: bytes
    revision: int
    written_at: float


class Transport(Protocol):
    """What capabilities use to reach the fleet (state, artifacts, auth, workers, agents)."""

    prefix: str
    node_id: str

    def subject(self, *parts: str) -> str:
        """A subject of this fleet: the prefix and ``parts`` joined by dots."""

    async def publish(self, subject: str, data: bytes, *, headers: dict[str, str] | None = None) -> None:
        """Publish a core NATS message (at most once)."""

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> Subscription:
        """Call ``handler`` for every message on ``subject`` (one member of ``queue`` gets each)."""

    async def request(self, subject: str, data: bytes, *, timeout_s: float | None = None) -> Msg:
        """Send a request and wait for the first answer."""

    async def stream(self, name: str, subjects: list[str], **limits: Any) -> str:
        """Make sure a fleet-wide stream exists (created or updated); returns its full name."""

    async def bucket(self, name: str, *, ttl_s: float | None = None, history: int = 1) -> Bucket:
        """Make sure a fleet-wide key-value bucket exists; returns it."""

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the fleet's domain."""


class NatsTransport:
    """The transport on one nats-py connection (to the node's own server, or an operator's)."""

    def __init__(self, servers: list[str], *, node_id: str, prefix: str, stream_prefix: str,
                 user: str | None = None, password: str | None = None, domain: str | None = None,
                 replicas: int = 3, timeout_s: float = 2.0) -> None:
        self.servers = servers
        self.node_id = node_id
        self.prefix = prefix
        self.stream_prefix = stream_prefix
        self.domain = domain
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._user = user
        self._password = password
        self.nc: NatsClient = NatsClient()
        self._js: JetStreamContext | None = None
        self.disconnects = 0
        #: Called with True/False when the connection to NATS comes back or is lost.
        self.on_connection: Callable[[bool], None] = lambda up: None

    # -- connection --------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (retrying in the background forever once the first attempt is made)."""
        async def disconnected() -> None:
            self.disconnects += 1
            log.warning("lost the connection to NATS")
            self.on_connection(False)

        async def reconnected() -> None:
            log.info("connected to NATS again")
            self.on_connection(True)

        async def error(exc: Exception) -> None:
            log.debug("NATS client error", extra={"error": f"{type(exc).__name__}: {exc}"})

        await self.nc.connect(
            servers=self.servers, user=self._user, password=self._password, name=f"edgenode-{self.node_id}",
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1, connect_timeout=2,
            ping_interval=5, max_outstanding_pings=2, disconnected_cb=disconnected, reconnected_cb=reconnected,
            error_cb=error,
        )
        self._js = self.nc.jetstream(domain=self.domain, timeout=self.timeout_s)

    async def close(self) -> None:
        """Drain nothing; close the connection."""
        with contextlib.suppress(Exception):
            await self.nc.close()

    @property
    def connected(self) -> bool:
        """Whether the client is connected to a server now."""
        return bool(self.nc.is_connected)

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the fleet's domain."""
        assert self._js is not None, "connect() first"
        return self._js

    # -- core NATS -------------------------------------------------------------------

    def subject(self, *parts: str) -> str:
        """A subject of this fleet."""
        return ".".join((self.prefix, *parts))

    async def publish(self, subject: str, data: bytes, *, headers: dict[str, str] | None = None) -> None:
        """Publish a core NATS message."""
        await self.nc.publish(subject, data, headers=headers)

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> Subscription:
        """Subscribe ``handler`` to ``subject``; a handler that raises is logged, never kills the subscription."""
        async def guarded(msg: Msg) -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("handler for a fleet message failed", extra={"subject": msg.subject})

        return await self.nc.subscribe(subject, queue=queue, cb=guarded)

    async def request(self, subject: str, data: bytes, *, timeout_s: float | None = None) -> Msg:
        """A request; nats errors (timeout, no responders) propagate."""
        return await self.nc.request(subject, data, timeout=timeout_s or self.timeout_s)

    # -- JetStream --------------------------------------------------------------------

    def stream_name(self, name: str) -> str:
        """The full name of one of this fleet's streams."""
        return f"{self.stream_prefix}_{name}".upper()

    async def stream(self, name: str, subjects: list[str], **limits: Any) -> str:
        """Create the stream, or update it to these settings; fewer replicas while servers are few."""
        full = self.stream_name(name)
        replicas = max(1, min(self.replicas, int(limits.pop("num_replicas", self.replicas))))
        js = self.jetstream
        for r in sorted({replicas, 1}, reverse=True):
            config = api.StreamConfig(name=full, subjects=subjects, num_replicas=r, **limits)
            try:
                await js.add_stream(config)
                return full
            except BadRequestError as exc:
                if exc.err_code == 10058:  # exists with another config: bring it to this one
                    try:
                        await js.update_stream(config)
                        return full
                    except APIError as update_exc:
                        if update_exc.err_code not in _TOO_FEW_SERVERS:
                            raise
                        continue
                if exc.err_code not in _TOO_FEW_SERVERS:
                    raise
            except APIError as exc:
                if exc.err_code not in _TOO_FEW_SERVERS:
                    raise
        raise RuntimeError(f"could not create stream {full}")

    async def grow_streams(self) -> list[str]:
        """Give every stream of this fleet as many copies as the servers allow, up to ``replicas``.

        A stream made while the fleet had fewer servers (the first node makes the members bucket
        alone) keeps its one copy until someone asks for more; a node that keeps it alone takes
        it along when it dies. Returns the streams still short of ``replicas`` (too few servers).
        """
        prefix = f"{self.stream_prefix}_".upper()
        short: list[str] = []
        for info in await self.jetstream.streams_info():
            config = info.config
            if not config.name or not config.name.startswith(prefix):
                continue
            have = int(config.num_replicas or 1)
            for want in range(self.replicas, have, -1):
                try:
                    await self.jetstream.update_stream(config.evolve(num_replicas=want))
                except APIError as exc:
                    if exc.err_code not in _TOO_FEW_SERVERS:
                        raise
                    continue
                log.info("stream copies raised", extra={"stream": config.name, "replicas": want, "was": have})
                have = want
                break
            if have < self.replicas:
                short.append(config.name)
        return short

    async def stream_replicas(self, name: str) -> int:
        """How many replicas a stream has now."""
        info = await self.jetstream.stream_info(self.stream_name(name))
        return int(info.config.num_replicas or 1)

    async def bucket(self, name: str, *, ttl_s: float | None = None, history: int = 1) -> Bucket:
        """A key-value bucket on a stream of this fleet's subjects."""
        subject = self.subject("kv", name)
        full = await self.stream(f"KV_{name}", [f"{subject}.>"], max_msgs_per_subject=history,
                                 max_age=ttl_s, allow_direct=True, discard=api.DiscardPolicy.OLD)
        return Bucket(self, full, subject)


class HasJetStream(Protocol):
    """What a bucket needs of its owner: a JetStream context (a NatsTransport, or a plain holder)."""

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context the bucket's stream is on."""


class Bucket:
    """A key-value bucket: one stream, one subject per key, the last message per subject is the value."""

    def __init__(self, transport: HasJetStream, stream: str, subject: str) -> None:
        self.transport = transport
        self.stream = stream
        self.prefix = subject + "."

    async def put(self, key: str, value: bytes) -> int:
        """Set ``key``; returns its new revision."""
        ack = await self.transport.jetstream.publish(self.prefix + key, value, stream=self.stream)
        return int(ack.seq)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Compare-and-set: set ``key`` only if its revision is still ``last`` (0: only if absent).

        Raises nats.js.errors.APIError (wrong last sequence) when another writer came first.
        """
        ack = await self.transport.jetstream.publish(
            self.prefix + key, value, stream=self.stream,
            headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
        return int(ack.seq)

    async def get(self, key: str) -> Entry | None:
        """The value of ``key``, or None."""
        try:
            msg = await self.transport.jetstream.get_last_msg(self.stream, self.prefix + key, direct=True)
        except NotFoundError:
            return None
        if not msg.data:
            return None
        return Entry(key, msg.data, int(msg.seq or 0), msg.time.timestamp() if msg.time else time.time())

    async def delete(self, key: str) -> None:
        """Remove ``key`` and its history."""
        await self.transport.jetstream.purge_stream(self.stream, subject=self.prefix + key)

    async def entries(self, *, timeout_s: float = 5.0) -> list[Entry]:
        """Every key's current value, read once (an ordered consumer from each key's last message)."""
        info = await self.transport.jetstream.stream_info(self.stream)
        if not info.state.messages:
            return []
        sub = await self.transport.jetstream.subscribe(
            self.prefix + ">", stream=self.stream, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        out: list[Entry] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                meta = msg.metadata
                out.append(Entry(msg.subject[len(self.prefix):], msg.data, int(meta.sequence.stream),
                                 meta.timestamp.timestamp()))
                if not meta.num_pending:
                    return out
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def watch(self, handler: Callable[[Entry], None]) -> Subscription:
        """Call ``handler`` with every key's current value, then with every change (an ordered consumer)."""
        async def on_msg(msg: Msg) -> None:
            meta = msg.metadata
            handler(Entry(msg.subject[len(self.prefix):], msg.data, int(meta.sequence.stream),
                          meta.timestamp.timestamp()))

        return await self.transport.jetstream.subscribe(
            self.prefix + ">", stream=self.stream, cb=on_msg, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=2.0)


def dumps(data: Any) -> bytes:
    """Compact JSON bytes for the wire."""
    return json.dumps(data, separators=(",", ":")).encode()


def connected_within(transport: NatsTransport, timeout_s: float) -> Awaitable[bool]:
    """Wait until the transport is connected, at most ``timeout_s``; True if it is."""
    async def wait() -> bool:
        deadline = time.monotonic() + timeout_s
        while not transport.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return transport.connected
    return wait()
