"""Fleet membership from NATS: every node heartbeats into a bucket; nodes read it when they need it.

A heartbeat is a small JSON document under the node's id: its HTTP URL, its NATS
route, its version, how far it has applied the state stream, and how many
namespaces it cannot merge. A member whose last heartbeat is older than
``down_after_s`` is down, on every node at once (they all read the same bucket); one
silent for ``forget_after_s`` is gone (the bucket's age limit drops its entry).
A node that stops cleanly says so in a last heartbeat, so it is down at once.

Nodes read the bucket on demand (``GET /v1/cluster``, a catch-up choosing a member) and
otherwise every ``refresh_s``, rather than watching every heartbeat: a watch would cost
each node a message per member per interval, growing with the fleet; this way a node's
idle cost is its own heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgenode.cluster.transport import Bucket, Entry, NatsTransport, dumps

log = logging.getLogger(__name__)

BUCKET = "MEMBERS"


@dataclass
class Member:
    """One node of the fleet as the members bucket shows it."""

    node_id: str
    url: str = ""
    route: str = ""
    version: str = ""
    last_seen: float = 0.0
    stopped: bool = False
    applied: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def healthy(self, now: float, down_after_s: float) -> bool:
        """Heard from recently, and not stopped."""
        return not self.stopped and now - self.last_seen <= down_after_s


class Members:
    """This node's heartbeat and its live view of every member's."""

    def __init__(self, transport: NatsTransport, *, node_id: str, interval_s: float, down_after_s: float,
                 forget_after_s: float, refresh_s: float = 30.0, now: Callable[[], float] | None = None) -> None:
        self.transport = transport
        self.node_id = node_id
        self.interval_s = interval_s
        self.down_after_s = down_after_s
        self.forget_after_s = forget_after_s
        self.refresh_s = refresh_s
        self._refreshed = 0.0
        self._refresh_lock = asyncio.Lock()
        self._now = now or time.time
        self._members: dict[str, Member] = {}
        self._bucket: Bucket | None = None
        self._task: asyncio.Task[None] | None = None
        #: What this node says about itself in each heartbeat (set by the cluster and state).
        self.describe_self: Callable[[], dict[str, Any]] = dict
        #: Called when a member is first heard of, or comes back after being down.
        self.on_up: Callable[[Member], None] = lambda member: None
        self.heartbeats_sent = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        """Start heartbeating and watching (both retry until JetStream answers)."""
        self._task = asyncio.create_task(self._run(), name="members")

    async def stop(self) -> None:
        """Say this node stopped, then stop heartbeating and watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bucket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bucket.put(self.node_id, self._heartbeat(stopped=True)), 2.0)

    def _heartbeat(self, *, stopped: bool = False) -> bytes:
        body = dict(self.describe_self())
        body.update({"node_id": self.node_id, "at": round(self._now(), 3)})
        if stopped:
            body["stopped"] = True
        return dumps(body)

    async def _run(self) -> None:
        delay = 0.2
        while self._bucket is None:
            try:
                self._bucket = await self.transport.bucket(BUCKET, ttl_s=self.forget_after_s)
            except Exception as exc:  # noqa: BLE001 - JetStream not there yet (a lone first node, a cut leaf)
                self._bucket = None
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("members bucket not ready", extra={"error": self.last_error})
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 1.5)
        while True:
            started = time.monotonic()
            try:
                await self._bucket.put(self.node_id, self._heartbeat())
                self.heartbeats_sent += 1
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a cut-off node keeps trying
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("heartbeat failed", extra={"error": self.last_error})
            with contextlib.suppress(Exception):
                await self.refresh(self.refresh_s)
            self._forget()
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.05, self.interval_s * random.uniform(0.9, 1.1) - elapsed))

    async def refresh(self, max_age_s: float = 0.0) -> None:
        """Read the bucket if the view is older than ``max_age_s``; errors (cut off) propagate."""
        if self._bucket is None:
            return
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed < max_age_s:
                return
            for entry in await self._bucket.entries():
                self._seen(entry)
            self._refreshed = time.monotonic()

    def _seen(self, entry: Entry) -> None:
        try:
            data = json.loads(entry.value)
        except ValueError:
            return
        if not isinstance(data, dict) or data.get("node_id") != entry.key:
            return
        now = self._now()
        member = self._members.get(entry.key)
        was_healthy = member is not None and member.healthy(now, self.down_after_s)
        if member is None:
            member = self._members[entry.key] = Member(node_id=entry.key)
        member.url = str(data.get("url") or "")
        member.route = str(data.get("route") or "")
        member.version = str(data.get("version") or "")
        member.stopped = bool(data.get("stopped"))
        member.applied = data["applied"] if type(data.get("applied")) is int else 0
        member.info = data
        # The server's stamp, never later than our clock: a replayed old entry is not fresh.
        member.last_seen = min(entry.written_at, now)
        if entry.key != self.node_id and not was_healthy and member.healthy(now, self.down_after_s):
            self.on_up(member)

    def _forget(self) -> None:
        cutoff = self._now() - self.forget_after_s
        for node_id, member in list(self._members.items()):
            if member.last_seen < cutoff:
                del self._members[node_id]

    def members(self) -> list[Member]:
        """Every member heard of within ``forget_after_s``, this node included."""
        self._forget()
        return sorted(self._members.values(), key=lambda m: m.node_id)

    def healthy(self, member: Member) -> bool:
        """Whether ``member`` is up now."""
        return member.healthy(self._now(), self.down_after_s)

    @property
    def ready(self) -> bool:
        """Whether the bucket is reachable (heartbeats are going out)."""
        return self._bucket is not None and self.last_error is None
