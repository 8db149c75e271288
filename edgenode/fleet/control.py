"""The fleet-wide control plane: one bucket (a JetStream stream, one message per key) of signed records.

Every replicated record (a tenant, a token's hash, a deployment, a sealed secret) is one key,
``<kind>.<part>...``, whose value is a signed envelope ``{key, stamp, origin, record}``; a deleted
record is an envelope whose ``record`` is null, never a removed key, so a deletion replays like any
other change.

Conflicts resolve by **last writer by hybrid logical clock stamp**: a writer reads the key's current
envelope, merges (a kind may keep what must not be undone, such as a revocation), stamps above both
its clock and the stamp it replaces, and writes with compare-and-set on the key's revision. So the
bucket's last revision of a key always carries its highest stamp, and a node that applies envelopes
only when their stamp is above the one it last applied for that key ends in the same state whatever
order, and however many times, it sees them (a node restarting replays the bucket).

Local changes come in through :class:`~edgenode.fleet.changes.ChangeFeed` notices; the key is marked
dirty in ``fleet.db`` first, so a change whose publish failed (NATS away, a crash) is published again
by the retry loop or at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from edgenode.artifacts.gossip import sign, verify
from edgenode.cluster.hlc import Hlc
from edgenode.fleet.buckets import Bucket, Entry
from edgenode.fleet.changes import ChangeFeed
from edgenode.store import Database, Migration

log = logging.getLogger(__name__)

SIGNING_DOMAIN = "edgenode-control-record-v1"
#: JetStream's answer to a compare-and-set that lost (wrong last sequence).
_WRONG_LAST_SEQUENCE = 10071
Record = dict[str, Any]


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE control_applied (
            key TEXT PRIMARY KEY,
            stamp INTEGER NOT NULL DEFAULT 0,
            dirty INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )


def _create_positions(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE stream_positions (name TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID")


#: Migrations of ``fleet.db``, the node's bookkeeping of what it applied and what it must still publish.
MIGRATIONS = [Migration("fleet-0001-control-applied", _create),
              Migration("fleet-0002-stream-positions", _create_positions)]


class Kind(Protocol):
    """One kind of replicated record: how to read it locally and how to apply a remote version."""

    #: The first part of its keys (``token``, ``tenant``, ...).
    name: str

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        """The record's current local state, or None when it is gone here."""

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        """Make local state match ``record`` (None: delete it); must be idempotent."""

    async def keys(self) -> list[tuple[str, ...]]:
        """Every record this node holds (published at start if the bucket has never seen it)."""

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        """What to write over ``current`` when publishing ``new`` (usually ``new``)."""


@dataclass(frozen=True)
class Envelope:
    """One verified value of the bucket."""

    key: str
    stamp: int
    origin: str
    record: Record | None


class ApplyPending(Exception):
    """A record cannot be applied yet (its content has not arrived); it is tried again later."""


class ControlPlane:
    """Publishes this node's control records to the fleet bucket and applies everyone else's."""

    name = "control"

    def __init__(self, js: JetStreamContext, bucket: Bucket, *, node_id: str, fleet_secret: bytes, db: Database,
                 kinds: Sequence[Kind] = (), hlc: Hlc | None = None, publish_timeout_s: float = 2.0,
                 retry_interval_s: float = 1.0, catch_up_timeout_s: float = 30.0) -> None:
        if not fleet_secret:
            raise ValueError("the control plane needs the fleet secret")
        self.js = js
        self.bucket = bucket
        self.node_id = node_id
        self.db = db
        self.catch_up_timeout_s = catch_up_timeout_s
        self.hlc = hlc or Hlc()
        self.publish_timeout_s = publish_timeout_s
        self.retry_interval_s = retry_interval_s
        self._secret = fleet_secret
        self._kinds: dict[str, Kind] = {k.name: k for k in kinds}
        self._started = False
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Any = None
        self._wake = asyncio.Event()
        self._feeds: list[ChangeFeed] = []
        self._pending: dict[str, Entry] = {}
        #: Set once the bucket's existing records have been applied (after a start).
        self.caught_up = asyncio.Event()
        self.counters = {"published": 0, "applied": 0, "skipped": 0, "rejected": 0, "pending": 0,
                         "publish_errors": 0, "apply_errors": 0}

    # -- wiring ----------------------------------------------------------------------

    def add(self, kind: Kind) -> None:
        """Replicate records of ``kind`` (before :meth:`start`)."""
        self._kinds[kind.name] = kind
        bind = getattr(kind, "bind", None)
        if bind is not None:
            bind(self)

    def follow(self, feed: ChangeFeed) -> None:
        """Publish every change ``feed`` announces."""
        feed.subscribe(self._on_change)
        self._feeds.append(feed)

    async def start(self) -> None:
        """Open (or create) the bucket, apply what it holds, publish what the fleet lacks, then follow it."""
        for kind in self._kinds.values():
            start = getattr(kind, "start", None)
            if start is not None:
                await start()
        try:
            # Every key's last message is delivered, so the stream's last one marks the end of the replay.
            last = int((await self.js.stream_info(self.bucket.stream)).state.last_seq or 0)
            self._tasks.append(asyncio.create_task(self._watch(last), name="control-watch"))
            if last == 0:
                self.caught_up.set()
            self._subscription = await self.bucket.watch(self._queue.put_nowait)
        except BaseException:
            await self._halt()  # a failed start can be tried again
            raise
        self._started = True
        try:
            await asyncio.wait_for(self.caught_up.wait(), self.catch_up_timeout_s)
        except TimeoutError:
            log.warning("the control bucket's replay did not end in time; going on", extra={"last": last})
        await self._export()
        self._tasks.append(asyncio.create_task(self._retry_loop(), name="control-retry"))

    async def stop(self) -> None:
        """Stop following the bucket and publishing."""
        for feed in self._feeds:
            feed.unsubscribe(self._on_change)
        self._feeds.clear()
        await self._halt()

    async def _halt(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def status(self) -> dict[str, Any]:
        """Counters and whether the bucket has been caught up with."""
        return {"stream": self.bucket.stream, "caught_up": self.caught_up.is_set(), **self.counters}

    # -- publishing ------------------------------------------------------------------

    async def _on_change(self, kind: str, parts: tuple[str, ...]) -> None:
        if kind not in self._kinds:
            return
        key = make_key(kind, parts)
        await self.db.write(lambda c: c.execute(
            "INSERT INTO control_applied (key, dirty) VALUES (?, 1)"
            " ON CONFLICT (key) DO UPDATE SET dirty = dirty + 1", (key,)))
        if not self._started:
            return  # published by the export when the plane starts
        try:
            await asyncio.wait_for(self.publish(key), self.publish_timeout_s)
        except Exception as exc:  # kept dirty: the retry loop publishes it
            self.counters["publish_errors"] += 1
            log.warning("control record not published yet", extra={"key": key, "error": str(exc)[:200]})
            self._wake.set()

    async def publish(self, key: str) -> None:
        """Write the local state of ``key`` to the bucket (merged over what it holds), then mark it clean."""
        if not self._started:
            raise RuntimeError("the control plane is not started")
        kind, parts = self._split(key)
        async with self._lock(key):
            dirty = await self.db.read(lambda c: (c.execute(
                "SELECT dirty FROM control_applied WHERE key = ?", (key,)).fetchone() or [0])[0])
            record = await kind.snapshot(parts)
            for _ in range(20):
                entry = await self.bucket.get(key)
                revision = entry.revision if entry is not None else 0
                current = self._current(entry, key)
                merged = kind.merge(current.record if current else None, record)
                stamp = max(self.hlc.tick(), (current.stamp if current else 0) + 1)
                envelope = sign(self._secret, {"v": 1, "key": key, "stamp": stamp, "origin": self.node_id,
                                               "record": merged}, SIGNING_DOMAIN)
                data = json.dumps(envelope, separators=(",", ":")).encode()
                try:
                    await self.bucket.update(key, data, last=revision)
                except APIError as exc:
                    if exc.err_code != _WRONG_LAST_SEQUENCE:
                        raise
                    continue  # someone wrote in between: merge over theirs
                break
            else:
                raise RuntimeError(f"could not publish {key}: the key kept changing")
            if merged != record:
                await self._apply_local(kind, parts, merged)
            await self.db.write(lambda c: c.execute(
                "UPDATE control_applied SET stamp = ?, deleted = ?,"
                " dirty = CASE WHEN dirty = ? THEN 0 ELSE dirty END WHERE key = ?",
                (stamp, int(merged is None), dirty, key)))
        self.counters["published"] += 1

    async def _export(self) -> None:
        """Publish what is dirty, and every local record the bucket has never had (a node joining the fleet)."""
        known = await self.db.read(lambda c: {r[0]: r[1] for r in c.execute(
            "SELECT key, dirty FROM control_applied")})
        todo = [k for k, dirty in known.items() if dirty]
        for kind in self._kinds.values():
            for parts in await kind.keys():
                key = make_key(kind.name, parts)
                if key not in known:
                    todo.append(key)
                    await self.db.write(lambda c, key=key: c.execute(  # type: ignore[misc]
                        "INSERT OR IGNORE INTO control_applied (key, dirty) VALUES (?, 1)", (key,)))
        for key in todo:
            try:
                await self.publish(key)
            except Exception as exc:
                log.warning("control record not published at start", extra={"key": key, "error": str(exc)[:200]})

    async def _retry_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_interval_s)
            self._wake.clear()
            dirty = await self.db.read(lambda c: [r[0] for r in c.execute(
                "SELECT key FROM control_applied WHERE dirty > 0")])
            for key in dirty:
                try:
                    await self.publish(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.info("control record still not published", extra={"key": key, "error": str(exc)[:200]})
            for key, entry in list(self._pending.items()):
                self._pending.pop(key, None)
                await self._receive(entry)

    # -- applying --------------------------------------------------------------------

    async def _watch(self, last: int) -> None:
        while True:
            entry = await self._queue.get()
            if entry.value:
                try:
                    await self._receive(entry)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.counters["apply_errors"] += 1
                    log.exception("could not apply a control record", extra={"key": entry.key})
            if entry.revision >= last:
                self.caught_up.set()

    async def _receive(self, entry: Entry) -> None:
        key = entry.key
        try:
            envelope = self._open(entry.value, key)
            kind, parts = self._split(key)
        except ValueError as exc:
            self.counters["rejected"] += 1
            log.warning("control record refused", extra={"key": key, "error": str(exc)})
            return
        async with self._lock(key):
            row = await self.db.read(lambda c: c.execute(
                "SELECT stamp, dirty FROM control_applied WHERE key = ?", (key,)).fetchone())
            if row is not None and row["dirty"]:
                self._wake.set()  # a local change waits to be published over this one; it wins
                return
            if row is not None and row["stamp"] >= envelope.stamp:
                self.counters["skipped"] += 1
                return
            try:
                await self._apply_local(kind, parts, envelope.record)
            except ApplyPending as exc:
                self.counters["pending"] += 1
                log.info("control record waits for its content", extra={"key": key, "reason": str(exc)})
                self._pending[key] = entry
                return
            await self.db.write(lambda c: c.execute(
                "INSERT INTO control_applied (key, stamp, deleted) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET stamp = excluded.stamp, deleted = excluded.deleted",
                (key, envelope.stamp, int(envelope.record is None))))
        self.counters["applied"] += 1

    async def _apply_local(self, kind: Kind, parts: tuple[str, ...], record: Record | None) -> None:
        with ChangeFeed.quiet():
            await kind.apply(parts, record)

    async def deleted(self, key: str) -> bool:
        """Whether the last record this node applied or published for ``key`` was a deletion."""
        row = await self.db.read(lambda c: c.execute(
            "SELECT deleted FROM control_applied WHERE key = ?", (key,)).fetchone())
        return bool(row and row[0])

    # -- helpers ---------------------------------------------------------------------

    def _current(self, entry: Entry | None, key: str) -> Envelope | None:
        if entry is None:
            return None
        try:
            return self._open(entry.value, key)
        except ValueError:  # not the fleet's: written over
            self.counters["rejected"] += 1
            return None

    def _open(self, data: bytes, key: str) -> Envelope:
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(payload, dict) or not verify(self._secret, payload, SIGNING_DOMAIN):
            raise ValueError("the signature is missing or is not the fleet key's")
        if payload.get("key") != key or not isinstance(payload.get("stamp"), int):
            raise ValueError("the envelope names another key or has no stamp")
        record = payload.get("record")
        if record is not None and not isinstance(record, dict):
            raise ValueError("the record is not an object")
        return Envelope(key, payload["stamp"], str(payload.get("origin", "")), record)

    def _split(self, key: str) -> tuple[Kind, tuple[str, ...]]:
        name, _, rest = key.partition(".")
        kind = self._kinds.get(name)
        if kind is None or not rest:
            raise ValueError(f"no kind of record {name!r} on this node")
        return kind, tuple(rest.split("."))

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


def make_key(kind: str, parts: Sequence[str]) -> str:
    """The bucket key of a record: its kind and parts joined by dots (each part a valid key token)."""
    for part in parts:
        if not part or "." in part or not all(c.isalnum() or c in "-_=" for c in part):
            raise ValueError(f"{part!r} cannot be part of a control key")
    return ".".join([kind, *parts])


__all__ = ["MIGRATIONS", "ApplyPending", "ControlPlane", "Envelope", "Kind", "Record", "make_key"]
