"""Checkpoints of sandbox workspaces into the fleet, and restoring them on another node.

A checkpoint is a manifest (see manifest.py: every file, directory and symlink with its mode,
size and content SHA-256) whose files are content-addressed blobs in the fleet's blob bucket,
one per 4 MiB piece. It is incremental twice over: a file whose size, mtime, ctime and inode are
those this node last uploaded is not read again (the local ``checkpoint_index``), and a piece
whose blob the fleet already holds is not sent again. The sandbox's latest checkpoint is a
control record ``checkpoint.<tenant>.<sandbox id>`` (HMAC-signed like every control record)
naming the manifest's blob, replicated to every node; this module keeps the node's copy of those
records in ``sandboxes.db`` and the fleet wiring (``edgenode.fleet.checkpoints``) replicates them.

Blobs are named per tenant: a blob's bytes start with the tenant's name, so two tenants never
share one and whether a piece was "reused" says nothing about another tenant's files.

Restoring makes the sandbox again on this node with the same id, name, network policy, limits
and image, its workspace written back from the manifest and every piece checked against its
digest. Only files come back: processes, ``/tmp`` and sessions are not restored (a restored
sandbox starts its processes afresh, as after an idle release). A checkpoint is consistent per
file, not across files: a process writing during a checkpoint may leave a mix of old and new files.

A node that is not part of a fleet has nowhere to keep checkpoints: the routes answer 409
``fleet_required`` and the agents' hooks do nothing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter

from edgenode.errors import (
    CheckpointInvalid,
    CheckpointNotFound,
    Conflict,
    FleetRequired,
    NotFound,
    SandboxNotFound,
    SandboxQuotaExceeded,
    Unavailable,
    ValidationFailed,
)
from edgenode.fleet.changes import ChangeFeed
from edgenode.sandboxes.limits import MIB, limits_from_json
from edgenode.sandboxes.manifest import Entry, PieceReader, Restorer, dump_manifest, parse_manifest, scan
from edgenode.sandboxes.store import SandboxRecord
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.auth import Principal
    from edgenode.sandboxes.manager import Sandboxes

log = logging.getLogger(__name__)

#: The kind of the control records naming each sandbox's latest checkpoint.
KIND = "checkpoint"
_SCOPE = b"edgenode-checkpoint-v1\x00"
#: Files read and sent (or fetched and written) at once: the fleet's round trips overlap.
PARALLEL_FILES = 4
Record = dict[str, Any]


class Blobs(Protocol):
    """Content-addressed blobs in the fleet (``edgenode.fleet.buckets.BlobStore``)."""

    async def add(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        """Store ``data`` once (``digest``: its SHA-256, if known); its name and whether it was new to the fleet."""

    async def get(self, digest: str) -> bytes | None:
        """The bytes named ``digest`` (checked against it), or None while they are not all there."""


def _scope(tenant: str) -> bytes:
    return _SCOPE + tenant.encode() + b"\x00"


class Checkpoints:
    """Makes, lists and restores the checkpoints of one node's sandboxes."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes
        self.db = sandboxes.db
        #: Told ``("checkpoint", tenant, sandbox_id)`` after each local change of a checkpoint record.
        self.changes = ChangeFeed()
        self.blobs: Blobs | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.counters = {"made": 0, "failed": 0, "restored": 0, "uploaded_bytes": 0, "reused_bytes": 0}
        self._metric = Counter("edgenode_sandbox_checkpoints", "Sandbox checkpoints made, failed and restored "
                               "on this node.", ["result"], registry=sandboxes.node.metrics.registry)

    def _count(self, result: str) -> None:
        self.counters[result] += 1
        self._metric.labels(result).inc()

    def attach(self, blobs: Blobs) -> None:
        """Keep checkpoints in ``blobs`` from now on (the fleet wiring calls this on a node in a fleet)."""
        self.blobs = _Reported(blobs)

    @property
    def enabled(self) -> bool:
        """Whether this node is part of a fleet, where checkpoints are kept."""
        return self.blobs is not None

    def _require(self) -> Blobs:
        if self.blobs is None:
            raise FleetRequired("checkpoints are kept in the fleet and this node is not part of one "
                                "(start it with --peer, --hub or --nats-url and a fleet secret)")
        return self.blobs

    def status(self) -> dict[str, Any]:
        """Whether checkpoints are available here, and counters since start."""
        return {"enabled": self.enabled, **self.counters}

    # -- making one ------------------------------------------------------------------

    async def make(self, record: SandboxRecord) -> dict[str, Any]:
        """Checkpoint ``record``'s workspace now; its manifest digest and what was uploaded or reused."""
        blobs = self._require()
        lock = self._locks.setdefault(record.id, asyncio.Lock())
        async with lock:
            try:
                result = await self._make(blobs, record)
            except BaseException:
                self._count("failed")
                raise
        self._count("made")
        return result

    async def _make(self, blobs: Blobs, record: SandboxRecord) -> dict[str, Any]:
        began = time.perf_counter()
        settings = self.sandboxes.settings
        root = self.sandboxes._dir(record.id) / "workspace"
        found = await FILES.run(lambda: scan(root, max_entries=settings.max_files))
        quota = limits_from_json(record.limits, settings).disk_mb * MIB
        if found.file_bytes > quota:
            raise SandboxQuotaExceeded(f"the workspace holds {found.file_bytes} bytes of files, more than its disk "
                                       f"quota of {quota} bytes: not checkpointed", limit=quota, used=found.file_bytes)
        index = await self.db.read(lambda c: {r["path"]: r for r in c.execute(
            "SELECT * FROM checkpoint_index WHERE sandbox_id = ?", (record.id,))})
        scope = _scope(record.tenant)
        uploaded = reused = 0
        fresh: list[Entry] = []
        changed: list[Entry] = []
        for entry in found.entries:
            if entry.type != "file":
                continue
            known = index.get(entry.path)
            if known is not None and (known["size"], known["mtime_ns"], known["ctime_ns"], known["ino"]) == entry.stamp:
                entry.digest, entry.blobs = known["digest"], json.loads(known["blobs"])
                reused += entry.size
                fresh.append(entry)
            else:
                changed.append(entry)
        gate = asyncio.Semaphore(PARALLEL_FILES)

        async def upload(entry: Entry) -> tuple[int, bool] | None:
            async with gate:
                return await self._upload(blobs, root, entry, scope)

        gone: set[str] = set()
        outcomes = await asyncio.gather(*map(upload, changed), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for entry, outcome in zip(changed, outcomes, strict=True):
            if outcome is None or isinstance(outcome, BaseException):
                gone.add(entry.path)
                continue
            up, steady = outcome
            uploaded += up
            reused += entry.size - up
            if steady:
                fresh.append(entry)
        hashed = len(changed) - len(gone)
        found.entries = [e for e in found.entries if e.path not in gone]
        manifest = dump_manifest(found.entries)
        name, new = await blobs.add(scope + manifest)
        if new:
            uploaded += len(manifest)
        now = time.time()
        files = sum(1 for e in found.entries if e.type == "file")
        body: Record = {"tenant": record.tenant, "id": record.id, "name": record.name, "manifest": name,
                        "network": record.network, "limits": record.limits, "image": record.image,
                        "files": files, "bytes": found.file_bytes, "entries": len(found.entries),
                        "checkpointed_at": now, "node": self.sandboxes.node.id}

        def store(c: Any) -> None:
            c.execute("DELETE FROM checkpoint_index WHERE sandbox_id = ?", (record.id,))
            c.executemany("INSERT INTO checkpoint_index VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (record.id, e.path, *e.stamp, e.digest, json.dumps(e.blobs)) for e in fresh])
            _put(c, body)

        await self.db.write(store)
        await self.changes.emit(KIND, record.tenant, record.id)
        self.counters["uploaded_bytes"] += uploaded
        self.counters["reused_bytes"] += reused
        return {**_public(body), "uploaded_bytes": uploaded, "reused_bytes": reused, "hashed_files": hashed,
                "skipped": found.skipped, "duration_ms": round((time.perf_counter() - began) * 1000, 1)}

    async def _upload(self, blobs: Blobs, root: Any, entry: Entry, scope: bytes) -> tuple[int, bool] | None:
        """Hash and upload ``entry``'s pieces: bytes sent, and whether the file stayed unchanged meanwhile.

        None when it is no longer a file of the workspace (removed, or swapped for a link, since the walk).
        """
        try:
            reader = await FILES.run(PieceReader, root, entry.path, scope)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                return None
            raise Unavailable(f"cannot read {entry.path!r} of the workspace: {exc.strerror}") from None
        names: list[str] = []
        sent = 0
        try:
            while True:
                blob, name, length = await FILES.run(reader.read)
                if not length and names:
                    break  # the end (an empty file is one empty piece)
                name, new = await blobs.add(blob, name)
                names.append(name)
                sent += length if new else 0
                if not length:
                    break
        finally:
            steady = await FILES.run(reader.close)
        entry.digest, entry.blobs, entry.size = reader.whole.hexdigest(), names, reader.size
        return sent, steady and reader.size == entry.stamp[0]

    # -- records -----------------------------------------------------------------------

    async def latest(self, tenant: str, ref: str) -> Record | None:
        """The latest checkpoint record of the tenant's sandbox ``ref`` (its id or name), or None."""
        row = await self.db.read(lambda c: c.execute(
            "SELECT record FROM checkpoints WHERE tenant = ? AND (sandbox_id = ? OR name = ?)"
            " ORDER BY sandbox_id = ? DESC, checkpointed_at DESC LIMIT 1", (tenant, ref, ref, ref)).fetchone())
        return json.loads(row[0]) if row else None

    async def describe(self, principal: Principal, ref: str) -> dict[str, Any]:
        """The latest checkpoint of ``ref``; 404 ``checkpoint_not_found`` when the fleet has none."""
        self._require()
        found = await self.latest(principal.tenant, ref)
        if found is None:
            raise CheckpointNotFound(f"the fleet holds no checkpoint of a sandbox {ref!r} of this tenant")
        return _public(found)

    async def delete(self, principal: Principal, ref: str) -> None:
        """Forget the latest checkpoint of ``ref`` fleet-wide; 404 when there is none."""
        self._require()
        found = await self.latest(principal.tenant, ref)
        if found is None:
            raise CheckpointNotFound(f"the fleet holds no checkpoint of a sandbox {ref!r} of this tenant")
        await self._remove(principal.tenant, str(found["id"]))

    async def _remove(self, tenant: str, sandbox_id: str) -> None:
        await self.db.write(lambda c: c.execute(
            "DELETE FROM checkpoints WHERE tenant = ? AND sandbox_id = ?", (tenant, sandbox_id)))
        await self.changes.emit(KIND, tenant, sandbox_id)

    async def forget(self, record: SandboxRecord) -> None:
        """A sandbox was destroyed here: drop its index, and its checkpoint if this node made the latest one.

        A node the sandbox has moved away from (restored elsewhere since) keeps the fleet's checkpoint.
        """
        await self.db.write(lambda c: c.execute("DELETE FROM checkpoint_index WHERE sandbox_id = ?", (record.id,)))
        held = await self.snapshot(record.tenant, record.id)
        if held is not None and held.get("node") == self.sandboxes.node.id:
            await self._remove(record.tenant, record.id)

    async def purge_tenant(self, tenant: str) -> None:
        """Forget every checkpoint record of ``tenant`` (the tenant is being deleted)."""
        ids = await self.db.read(lambda c: [r[0] for r in c.execute(
            "SELECT sandbox_id FROM checkpoints WHERE tenant = ?", (tenant,))])
        for sandbox_id in ids:
            await self._remove(tenant, sandbox_id)

    # -- the control record's side (edgenode.fleet.checkpoints) ---------------------------

    async def snapshot(self, tenant: str, sandbox_id: str) -> Record | None:
        """This node's copy of the record, or None."""
        row = await self.db.read(lambda c: c.execute(
            "SELECT record FROM checkpoints WHERE tenant = ? AND sandbox_id = ?", (tenant, sandbox_id)).fetchone())
        return json.loads(row[0]) if row else None

    async def apply(self, tenant: str, sandbox_id: str, record: Record | None) -> None:
        """Hold ``record`` (None: none) as the sandbox's latest checkpoint."""
        if record is None:
            await self.db.write(lambda c: c.execute(
                "DELETE FROM checkpoints WHERE tenant = ? AND sandbox_id = ?", (tenant, sandbox_id)))
            return
        if record.get("tenant") != tenant or record.get("id") != sandbox_id:
            raise ValueError("a checkpoint record names another tenant or sandbox than its key")
        created = await self.sandboxes.node.auth.db.read(lambda c: c.execute(
            "SELECT created_at FROM tenants WHERE name = ?", (tenant,)).fetchone())
        if created is not None and float(record["checkpointed_at"]) < float(created[0]):
            return  # made for an earlier tenant of this name, deleted since
        await self.db.write(lambda c: _put(c, record))

    async def keys(self) -> list[tuple[str, ...]]:
        """Every checkpoint record this node holds."""
        return await self.db.read(lambda c: [(r[0], r[1]) for r in c.execute(
            "SELECT tenant, sandbox_id FROM checkpoints")])

    # -- restoring ---------------------------------------------------------------------

    async def restore(self, principal: Principal, ref: str) -> dict[str, Any]:
        """Make the tenant's sandbox ``ref`` here from its latest checkpoint; its description."""
        blobs = self._require()
        boxes = self.sandboxes
        boxes._require()
        boxes.node.store.require_space("sandbox workspaces")
        found = await self.latest(principal.tenant, ref)
        if found is None:
            raise CheckpointNotFound(f"the fleet holds no checkpoint of a sandbox {ref!r} of this tenant")
        sandbox_id = str(found["id"])
        lock = self._locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            return await self._restore(blobs, principal, found)

    async def _restore(self, blobs: Blobs, principal: Principal, found: Record) -> dict[str, Any]:
        began = time.perf_counter()
        boxes = self.sandboxes
        tenant, sandbox_id, name = principal.tenant, str(found["id"]), found.get("name")
        try:
            await boxes.store.by_id(sandbox_id)
        except SandboxNotFound:
            pass
        else:
            raise Conflict(f"sandbox {sandbox_id} is on this node already; delete it first to restore its checkpoint")
        if name is not None and await _named(boxes, tenant, str(name)):
            raise Conflict(f"a sandbox named {name!r} already exists on this node")
        await boxes._check_count(tenant)
        if found.get("image"):
            await FILES.run(boxes.images.rootfs, str(found["image"]))  # 404 when this node lacks the image
        scope = _scope(tenant)
        data = await blobs.get(str(found["manifest"]))
        if data is None or not data.startswith(scope):
            raise Unavailable("the checkpoint's manifest has not reached this node yet; try again shortly")
        entries = parse_manifest(data[len(scope):], max_entries=boxes.settings.max_files)
        limits = dict(found.get("limits") or {})
        quota = limits_from_json(limits, boxes.settings).disk_mb * MIB
        total = sum(e.size for e in entries if e.type == "file")
        if total > quota:
            raise SandboxQuotaExceeded(f"the checkpoint holds {total} bytes of files, more than the sandbox's disk "
                                       f"quota of {quota} bytes", limit=quota, used=total)
        slot = await boxes.store.reserve_slot(boxes.reserved_slots)
        draft = SandboxRecord(sandbox_id, tenant, name, time.time(), time.time(), found.get("network"), limits, slot,
                              [], found.get("image"))
        index: list[tuple[Any, ...]] = []
        gate = asyncio.Semaphore(PARALLEL_FILES)
        failed: list[BaseException] = []

        async def write(entry: Entry) -> None:
            async with gate:
                if failed:
                    return  # another file failed: the restore is abandoned
                try:
                    stamp = await self._write_file(blobs, restorer, entry, scope)
                except Exception as exc:
                    failed.append(exc)
                    return
            index.append((sandbox_id, entry.path, *stamp, entry.digest, json.dumps(entry.blobs)))

        try:
            await FILES.run(boxes._make_dirs, draft)
            restorer = await FILES.run(Restorer, boxes._dir(sandbox_id) / "workspace", boxes._owner(draft))
            try:
                # Directories (parents first) and links, then the files, several at once.
                for entry in entries:
                    if entry.type == "directory":
                        await FILES.run(restorer.directory, entry)
                    elif entry.type == "symlink":
                        await FILES.run(restorer.symlink, entry)
                # Not cancelled on a failure: a file's thread may be writing to its descriptor.
                await asyncio.gather(*(write(e) for e in entries if e.type == "file"))
                if failed:
                    raise failed[0]
            finally:
                await FILES.run(restorer.close)
            record = await boxes.store.insert(id=sandbox_id, tenant=tenant, name=name, network=draft.network,
                                              limits=limits, uid_slot=slot, image=draft.image)
        except BaseException:
            await FILES.run(boxes._remove_dir, draft)
            raise
        finally:
            boxes.reserved_slots.discard(slot)
        await self.db.write(lambda c: c.executemany(
            "INSERT OR REPLACE INTO checkpoint_index VALUES (?, ?, ?, ?, ?, ?, ?, ?)", index))
        self._count("restored")
        boxes.start_warm(record)
        return {**boxes._describe(record), "pooled": False,
                "restored_from": {**_public(found), "restore_ms": round((time.perf_counter() - began) * 1000, 1)}}

    async def _write_file(self, blobs: Blobs, restorer: Restorer, entry: Entry, scope: bytes) -> tuple[int, ...]:
        fd = await FILES.run(restorer.create, entry)
        whole = hashlib.sha256()
        size = 0
        try:
            for name in entry.blobs:
                data = await blobs.get(name)
                if data is None or not data.startswith(scope):
                    raise Unavailable(f"a piece of {entry.path!r} has not reached this node yet; try again shortly")
                piece = memoryview(data)[len(scope):]
                size += len(piece)
                await FILES.run(restorer.write, fd, piece, whole)
        except BaseException:
            await FILES.run(os.close, fd)
            raise
        if whole.hexdigest() != entry.digest or size != entry.size:
            await FILES.run(os.close, fd)
            raise CheckpointInvalid(f"the content of {entry.path!r} does not match its digest", reason="digest",
                                    path=entry.path)
        return await FILES.run(restorer.finish, fd, entry)

    # -- the agents' hooks ---------------------------------------------------------------

    async def restore_if_missing(self, principal: Principal, ref: str) -> bool:
        """Before a run's sandbox call: restore ``ref`` when it is not on this node and the fleet has a checkpoint.

        Whether it restored. This is how a run taken over by another node gets its workspace back.
        """
        if not self.enabled or not ref:
            return False
        try:
            await self.sandboxes.store.get(principal.tenant, ref)
            return False
        except SandboxNotFound:
            pass
        if await self.latest(principal.tenant, ref) is None:
            return False
        try:
            await self.restore(principal, ref)
        except Conflict:
            return False  # restored meanwhile by a concurrent call
        log.info("restored a sandbox from its checkpoint for a run", extra={"sandbox": ref})
        return True

    async def after_step(self, principal: Principal, ref: str) -> dict[str, Any] | None:
        """After a run's sandbox step that may change files: checkpoint it (in a fleet); never raises.

        A failed checkpoint is logged and counted (``failed``), not the step's failure.
        """
        if not self.enabled or not ref:
            return None
        try:
            record = await self.sandboxes.store.get(principal.tenant, ref)
            return await self.make(record)
        except (NotFound, ValidationFailed):
            return None  # the step removed it, or there is nothing to checkpoint
        except Exception as exc:
            log.warning("a sandbox checkpoint after a run's step failed", extra={"sandbox": ref,
                                                                                 "error": repr(exc)[:300]})
            return None


class _Reported:
    """The fleet's blobs, their failures (NATS away, a timeout) answered as 503 ``unavailable``."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs

    async def add(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        try:
            return await self.blobs.add(data, digest)
        except Exception as exc:
            raise _unreachable(exc) from exc

    async def get(self, digest: str) -> bytes | None:
        try:
            return await self.blobs.get(digest)
        except Exception as exc:
            raise _unreachable(exc) from exc


def _unreachable(exc: Exception) -> Unavailable:
    return Unavailable(f"the fleet's blob store cannot be reached ({type(exc).__name__}: {str(exc)[:200]}); "
                       "try again shortly")


def _put(c: Any, record: Record) -> None:
    c.execute("INSERT INTO checkpoints (tenant, sandbox_id, name, manifest, record, checkpointed_at)"
              " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, sandbox_id) DO UPDATE SET name = excluded.name,"
              " manifest = excluded.manifest, record = excluded.record, checkpointed_at = excluded.checkpointed_at",
              (record["tenant"], record["id"], record.get("name"), record["manifest"], json.dumps(record),
               float(record["checkpointed_at"])))


def _public(record: Record) -> dict[str, Any]:
    return {"sandbox": record["id"], "name": record.get("name"), "manifest": record["manifest"],
            "files": record.get("files"), "entries": record.get("entries"), "bytes": record.get("bytes"),
            "checkpointed_at": record["checkpointed_at"], "node": record.get("node")}


async def _named(boxes: Sandboxes, tenant: str, name: str) -> bool:
    try:
        found = await boxes.store.get(tenant, name)
    except SandboxNotFound:
        return False
    return found.name == name


__all__ = ["KIND", "Blobs", "Checkpoints"]
