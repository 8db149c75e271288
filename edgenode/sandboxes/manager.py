"""The sandboxes capability: records, tenancy, files, execs, background processes and the idle reaper.

Files and the record persist (SQLite plus ``DATA/sandboxes/<id>/workspace``);
processes do not: they are released when a sandbox is idle for
``idle_timeout_s``, when it is destroyed, and when the node stops. The next exec
starts the sandbox's processes again, with an empty ``/tmp``. In a fleet, a
workspace can be checkpointed into the fleet and restored on another node
(checkpoint.py); files come back, processes do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from edgenode.auth import Principal
from edgenode.egress import AddressPolicy
from edgenode.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Overloaded,
    SandboxCheckoutFailed,
    SandboxNotFound,
    SandboxPortNotExposed,
    SandboxPortUnreachable,
    SandboxProcessNotFound,
    SandboxQuotaExceeded,
    SandboxUnavailable,
    TenantOverShare,
    TenantQuotaExceeded,
    Unavailable,
    ValidationFailed,
)
from edgenode.sandboxes import bwrap as bw
from edgenode.sandboxes.acl import grant_group_search, has_group_search
from edgenode.sandboxes.cgroups import CgroupTree, CgroupUnavailable, node_key, open_tree
from edgenode.sandboxes.checkout import TOKEN_TTL_S, node_clone, parse_checkout
from edgenode.sandboxes.checkpoint import Checkpoints
from edgenode.sandboxes.egress import NODE_ALIAS, EgressPolicy, parse_policy
from edgenode.sandboxes.execution import ExecSpec, Execution, parse_exec
from edgenode.sandboxes.guest import Command, GuestSpec, guest_python
from edgenode.sandboxes.images import Images, check_image_name
from edgenode.sandboxes.layers import MAX_LAYERS, LayerStore, overlay_supported
from edgenode.sandboxes.limits import (
    MIB,
    Limits,
    disk_usage,
    enforcement,
    limits_from_json,
    resolve_limits,
)
from edgenode.sandboxes.paths import Workspace
from edgenode.sandboxes.pool import Prestarted, WarmPool, process_tree_rss
from edgenode.sandboxes.ports import SandboxPortBackend
from edgenode.sandboxes.runtime import BackgroundProcess, SandboxRuntime, reset_dir
from edgenode.sandboxes.seccomp import RULES, compile_filter, native_arch
from edgenode.sandboxes.store import MIGRATIONS, SandboxRecord, SandboxStore
from edgenode.sandboxes.watch import Watch
from edgenode.store.faults import storage_fault
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
PROXY_URL = "http://127.0.0.1:3128"
#: How much of a refused upload is read and dropped so the client sees the error, in bytes.
DRAIN_LIMIT = 64 * MIB
#: Sessions one sandbox may hold.
MAX_SESSIONS = 32
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Sandboxes:
    """Persistent Linux workspaces run under bubblewrap."""

    name = "sandboxes"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.config.sandboxes
        self.root = node.data_dir / "sandboxes"
        self.db = node.database("sandboxes.db", MIGRATIONS)
        self.store = SandboxStore(self.db)
        self.addresses = AddressPolicy(node.config.egress.allow_networks)
        self.runtimes: dict[str, SandboxRuntime] = {}
        #: The tenant of every sandbox that runs or starts (for shares of the running slots).
        self._owners: dict[str, str] = {}
        self._starting: dict[str, asyncio.Task[SandboxRuntime]] = {}
        #: Warm starts after create run one at a time, so a burst of creates is not slowed by them.
        self._warming = asyncio.Semaphore(1)
        self._warm_tasks: dict[str, asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.bwrap: bw.BwrapInfo | None = None
        self.python: str | None = None
        self.unavailable: str | None = None
        self.seccomp = b""
        self.as_root = os.geteuid() == 0
        #: The node's subtree of per-sandbox cgroups (None: rlimits only), and why this one or none.
        self.cgroups: CgroupTree | None = None
        self.cgroups_why = "not set up yet"
        #: Directories where the sandboxes' group was granted search permission (see acl.py).
        self.search_granted: list[str] = []
        #: Running slots taken by pooled sandboxes whose record is being written.
        self._claiming = 0
        #: uid slots held by pooled sandboxes that have no record yet.
        self.reserved_slots: set[int] = set()
        self.pool = WarmPool(self.settings.pool_size, self._prestart, self._discard_prestarted)
        #: Checkpoints of workspaces into the fleet (enabled by the fleet wiring on a node in a fleet).
        self.checkpoints = Checkpoints(self)
        self.layers = LayerStore(self.root / "layers")
        self.images = Images(self.root / "images")
        self.forks_unavailable = overlay_supported()
        self._fork_locks: dict[str, asyncio.Lock] = {}
        #: Per sandbox, its sessions' cwd and env (kept while the node runs, as processes are).
        self._sessions: dict[str, dict[str, tuple[str, dict[str, str]]]] = {}
        registry = node.metrics.registry
        self._pool_takes = Counter("edgenode_sandbox_pool_takes", "Sandbox creates by whether the pool served "
                                   "them (hit), had none ready (miss) or the tenant was over its share.",
                                   ["result"], registry=registry)
        Gauge("edgenode_sandbox_pool_ready", "Pooled sandboxes started and waiting for a create.",
              registry=registry).set_function(lambda: len(self.pool.ready))
        Gauge("edgenode_sandbox_pool_rss_bytes", "Resident memory of the pooled sandboxes' processes.",
              registry=registry).set_function(self._pool_rss)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open the database, find bwrap and python3, start the idle reaper."""
        self.db.open()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.bwrap = bw.find_bwrap(self.settings.bwrap)
            self.python = guest_python()
            self.seccomp = compile_filter()
            if self.as_root:
                await FILES.run(self._open_path_to_root)
            await FILES.run(self._remove_orphans)
            await FILES.run(self._mount_stacked)
            self.cgroups, self.cgroups_why = await FILES.run(
                lambda: open_tree(self.settings.cgroups, node_key(self.node.data_dir)))
        except CgroupUnavailable as exc:
            # Asked for one cgroup version by name: not bounding sandboxes as asked would be worse than none.
            self.unavailable = self.cgroups_why = str(exc)
            log.warning("sandboxes unavailable", extra={"reason": self.unavailable})
        except (Unavailable, RuntimeError, OSError) as exc:
            self.unavailable = str(exc)
            log.warning("sandboxes unavailable", extra={"reason": self.unavailable})
        log.info("sandbox limits", extra={"mode": self.enforced_by, "reason": self.cgroups_why})
        self._reaper = asyncio.create_task(self._reap_idle())

    async def stop(self) -> None:
        """Release every sandbox's processes and close the database."""
        await self.pool.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        for warm in list(self._warm_tasks.values()):
            warm.cancel()
        for task in [*self._warm_tasks.values(), *self._starting.values()]:
            with contextlib.suppress(BaseException):
                await task
        await asyncio.gather(*(self._release(sid) for sid in list(self.runtimes)), return_exceptions=True)
        if self.forks_unavailable is None:
            with contextlib.suppress(Exception):
                await FILES.run(self._unmount_stacked)
        if self.cgroups is not None:
            with contextlib.suppress(Exception):
                await FILES.run(self.cgroups.close)
        self.db.close()

    def status(self) -> dict[str, Any]:
        """bwrap in use, how limits are enforced, seccomp, and counts."""
        arch = native_arch()
        return {
            "available": self.unavailable is None,
            "reason": self.unavailable,
            "bwrap": self.bwrap.path if self.bwrap else None,
            "bwrap_version": self.bwrap.version_text if self.bwrap else None,
            "bwrap_source": self.bwrap.source if self.bwrap else None,
            "limits": f"{self.enforced_by}+disk-accounting",
            "cgroups": self.settings.cgroups,
            "cgroup": self.cgroups.describe() if self.cgroups is not None else None,
            # Said plainly: whether memory and pids hold per sandbox here, or per process only, and why.
            "enforcement": enforcement(self.cgroups, self.cgroups_why),
            "seccomp": f"bpf {arch.name if arch else '?'} {len(RULES)} rules",
            "per_sandbox_uid": self.as_root,
            "search_granted": self.search_granted,
            "running": len(self.runtimes),
            "max_running": self.settings.max_running,
            "pool": self.pool.status(),
            "forks": "overlayfs" if self.forks_unavailable is None else f"unavailable: {self.forks_unavailable}",
            "idle_timeout_s": self.settings.idle_timeout_s,
            "checkpoints": self.checkpoints.status(),
        }

    @property
    def enforced_by(self) -> str:
        """``cgroup-v2``, ``cgroup-v1`` or ``rlimits``: what bounds a sandbox's memory and processes."""
        return f"cgroup-{self.cgroups.version}" if self.cgroups is not None else "rlimits"

    @property
    def group(self) -> int:
        """The supplementary group every sandbox's bwrap runs with, to reach ``DATA/sandboxes``."""
        return self.settings.uid_base - 1

    def _open_path_to_root(self) -> None:
        """Let the sandboxes' group search its way to ``DATA/sandboxes`` (bwrap resolves paths as the sandbox).

        Only directories that others cannot already search get an ACL entry, and only
        ``--x``: nothing becomes listable or readable, and sandboxed processes never see
        host paths at all (their mount namespace holds none of these directories).
        """
        os.chown(self.root, 0, self.group)
        os.chmod(self.root, 0o710)
        path = self.root.parent
        while True:
            if not os.stat(path).st_mode & 0o001 and not has_group_search(path, self.group):
                grant_group_search(path, self.group)
                if str(path) not in self.search_granted:
                    self.search_granted.append(str(path))
                log.info("granted the sandboxes' group search on a directory", extra={"path": str(path)})
            if path.parent == path:
                return
            path = path.parent

    def _remove_orphans(self) -> None:
        """Remove sandbox directories without a record: pooled sandboxes of a node that did not stop cleanly."""
        known = {r.id for r in self.store.all_sync()}
        for entry in self.root.iterdir():
            if entry.name.startswith("sb_") and entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)

    def _stacked(self) -> list[SandboxRecord]:
        return [r for r in self.store.all_sync() if r.layers]

    def _mount_stacked(self) -> None:
        """Mount the workspaces stacked on layers (forks and their sources); mounts do not outlive the node."""
        for record in self._stacked():
            if not os.path.ismount(self._dir(record.id) / "workspace"):
                try:
                    self.layers.mount(self._dir(record.id), record.layers, self._owner(record))
                except (OSError, SandboxUnavailable) as exc:
                    log.warning("cannot mount a forked workspace", extra={"sandbox": record.id, "error": str(exc)})

    def _unmount_stacked(self) -> None:
        for record in self._stacked():
            self.layers.unmount(self._dir(record.id))

    def _pool_rss(self) -> float:
        return float(sum(process_tree_rss(e.runtime.guest.proc.pid) for e in list(self.pool.ready)
                         if e.runtime.guest.proc is not None))

    async def _prestart(self) -> Prestarted:
        """Start a sandbox for the pool: default limits, no network, an id and uid slot of its own."""
        self._require()
        slot = await self.store.reserve_slot(self.reserved_slots)
        limits = resolve_limits(None, self.settings)
        policy = parse_policy(None)
        record = SandboxRecord("sb_" + secrets.token_hex(8), "", None, time.time(), time.time(),
                               policy.as_json(), limits.as_dict(), slot)
        began = time.perf_counter()
        runtime: SandboxRuntime | None = None
        try:
            async with self._warming:
                spec = await FILES.run(self._prepare, record, policy)
                spec.preload = True
                runtime = self._runtime_for(record, policy, spec)
                await runtime.start()
        except BaseException:
            # Cancelled by the node's stop mid-start too: nothing of it may outlive the node.
            with contextlib.suppress(BaseException):
                if runtime is not None:
                    await asyncio.shield(runtime.stop())
                self.reserved_slots.discard(slot)
                await asyncio.shield(FILES.run(shutil.rmtree, self._dir(record.id), True))
            raise
        return Prestarted(record.id, slot, self._dir(record.id), runtime, (time.perf_counter() - began) * 1000)

    async def _discard_prestarted(self, entry: Prestarted) -> None:
        await entry.runtime.stop()
        self.reserved_slots.discard(entry.uid_slot)
        await FILES.run(shutil.rmtree, entry.root, True)

    async def _create_from_pool(self, principal: Principal, policy: EgressPolicy,
                                limits: Limits) -> SandboxRecord | None:
        """A new sandbox from a pooled one, when the request fits what the pool holds."""
        if policy.enabled or limits != resolve_limits(None, self.settings):
            return None
        if self._slots_used() >= self.settings.max_running:
            return None  # a pooled sandbox runs at once: only in a free slot, as a warm start after create
        entry = self.pool.take(principal.tenant)
        if entry is None:
            self._pool_takes.labels("over_share" if self.pool.ready else "miss").inc()
            return None
        self._claiming += 1  # the slot is this create's from here: no start may take it while it awaits
        try:
            record = await self.store.insert(id=entry.id, tenant=principal.tenant, name=None,
                                             network=policy.as_json(), limits=limits.as_dict(),
                                             uid_slot=entry.uid_slot)
        except BaseException:
            self.pool.give_back(entry, principal.tenant)
            raise
        finally:
            self._claiming -= 1
        self.reserved_slots.discard(entry.uid_slot)
        self._owners[record.id] = principal.tenant
        self.runtimes[record.id] = entry.runtime
        self._pool_takes.labels("hit").inc()
        return record

    def _slots_used(self) -> int:
        """Sandboxes with processes, starting, or being handed out by the pool (against ``max_running``)."""
        return len(self.runtimes) + len(self._starting) + self._claiming

    def _require(self) -> None:
        if self.unavailable is not None:
            raise SandboxUnavailable(f"sandboxes are not available on this node: {self.unavailable}")

    # -- records -------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def _owner(self, record: SandboxRecord) -> tuple[int, int] | None:
        if not self.as_root:
            return None
        uid = self.settings.uid_base + record.uid_slot
        return uid, uid

    def _limits(self, record: SandboxRecord) -> Limits:
        return limits_from_json(record.limits, self.settings)

    def _describe(self, record: SandboxRecord) -> dict[str, Any]:
        runtime = self.runtimes.get(record.id)
        running = runtime is not None and runtime.alive
        last_used = max(record.last_used_at, runtime.last_used if runtime else 0)
        return {
            "id": record.id,
            "name": record.name,
            "tenant": record.tenant,
            "created_at": record.created_at,
            "last_used_at": last_used,
            "network": record.network,
            "limits": self._limits(record).as_dict(),
            "limits_enforced_by": self.enforced_by,
            "state": "running" if running else "stopped",
            # Files and the record survive restarts and idle release; processes never do.
            "persistence": {"files": True, "processes": False},
            "processes": len([p for p in runtime.processes.values() if not p.command.done.is_set()])
            if runtime else 0,
            "workspace": "/workspace",
            "image": record.image,
        }

    async def create(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        """Create a sandbox: ``{"name"?, "network"?, "limits"?}``; its processes start in the background.

        ``{"checkpoint": id or name}`` instead restores that sandbox of the tenant from its latest
        checkpoint in the fleet, with its id, name, network, limits and image (checkpoint.py).
        """
        self._require()
        if "checkpoint" in data:
            if set(data) != {"checkpoint"} or not isinstance(data["checkpoint"], str) or not data["checkpoint"]:
                raise ValidationFailed("a sandbox restored from a checkpoint takes only 'checkpoint' (its id or "
                                       "name): name, network, limits and image are the checkpoint's",
                                       field="checkpoint")
            return await self.checkpoints.restore(principal, data["checkpoint"])
        self.node.store.require_space("sandbox workspaces")
        unknown = set(data) - {"name", "network", "limits", "image"}
        if unknown:
            raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        name = _check_name(data.get("name"))
        policy = parse_policy(data.get("network"))
        limits = resolve_limits(data.get("limits"), self.settings)
        image = data.get("image")
        if image is not None:
            await FILES.run(self.images.rootfs, check_image_name(image))
        await self._check_count(principal.tenant)
        self.pool.wake()  # the first create of any kind starts the pool filling
        if name is None and image is None:
            # Pooled sandboxes are started before their name is known (bwrap sets the host name).
            pooled = await self._create_from_pool(principal, policy, limits)
            if pooled is not None:
                return {**self._describe(pooled), "pooled": True}
        sandbox_id = "sb_" + secrets.token_hex(8)
        record = await self.store.insert(id=sandbox_id, tenant=principal.tenant, name=name,
                                         network=policy.as_json(), limits=limits.as_dict(),
                                         reserved=self.reserved_slots, image=image)
        try:
            await FILES.run(self._make_dirs, record)
        except OSError:
            await self.store.delete(sandbox_id)
            raise
        self.start_warm(record)
        return {**self._describe(record), "pooled": False}

    def start_warm(self, record: SandboxRecord) -> None:
        """Warm a new sandbox's processes now, so its first exec does not wait for bwrap and the supervisor."""
        warm = asyncio.create_task(self._warm(record))
        self._warm_tasks[record.id] = warm
        warm.add_done_callback(lambda t: self._warm_tasks.pop(record.id, None))

    async def _check_count(self, tenant: str) -> None:
        cap = self.settings.max_per_tenant
        if cap > 0 and await self.store.count_for(tenant) >= cap:
            raise TenantQuotaExceeded(f"this tenant has {cap} sandboxes, as many as the node allows one tenant; "
                                      "delete one first", limit=cap, retry_after=60)

    async def fork(self, principal: Principal, ref: str, data: dict[str, Any]) -> dict[str, Any]:
        """A new sandbox whose workspace starts as a copy-on-write copy of ``ref``'s: ``{"name"?}``.

        The source's workspace is frozen into a layer that both stack (see layers.py); when the
        source has written nothing since it was last frozen, its processes go on untouched,
        else they are released first (a live process would keep writing into the frozen layer).
        Network policy and limits are the source's; ``/tmp`` and processes are not copied.
        """
        self._require()
        if self.forks_unavailable is not None:
            raise SandboxUnavailable(f"forks are not available on this node: {self.forks_unavailable}")
        unknown = set(data) - {"name"}
        if unknown:
            raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        name = _check_name(data.get("name"))
        self.node.store.require_space("sandbox workspaces")
        source = await self.store.get(principal.tenant, ref)
        await self._check_count(principal.tenant)
        began = time.perf_counter()
        released = False
        async with self._fork_locks.setdefault(source.id, asyncio.Lock()):
            source = await self.store.get(principal.tenant, source.id)
            layers = source.layers
            if not layers or not await FILES.run(self.layers.upper_is_empty, self._dir(source.id)):
                if len(layers) >= MAX_LAYERS:
                    raise Conflict(f"this workspace is a fork {MAX_LAYERS} levels deep, the most a node stacks; "
                                   "fork an earlier one")
                if source.id in self.runtimes or source.id in self._starting:
                    starting = self._starting.get(source.id)
                    if starting is not None:
                        with contextlib.suppress(BaseException):
                            await starting
                    await self._release(source.id)
                    released = True
                layers = await FILES.run(self._freeze, source)
                await self.store.set_layers(source.id, layers)
            record = await self.store.insert(id="sb_" + secrets.token_hex(8), tenant=principal.tenant, name=name,
                                             network=source.network, limits=source.limits,
                                             reserved=self.reserved_slots, layers=layers, image=source.image)
            try:
                await FILES.run(self._make_stacked, record)
            except BaseException:
                await self.store.delete(record.id)
                await FILES.run(self._remove_dir, record)
                raise
        return {**self._describe(record), "forked_from": source.id, "source_released": released,
                "fork_ms": round((time.perf_counter() - began) * 1000, 3)}

    def _freeze(self, record: SandboxRecord) -> list[str]:
        """Freeze what the workspace holds into a new layer and stack it anew; returns its layers."""
        base = self._dir(record.id)
        if record.layers:
            self.layers.unmount(base)
            layers = [self.layers.freeze(base / "upper"), *record.layers]
        else:
            layers = [self.layers.freeze(base / "workspace")]
        self.layers.mount(base, layers, self._owner(record))
        return layers

    def _make_stacked(self, record: SandboxRecord) -> None:
        self._make_dirs(record)
        self.layers.mount(self._dir(record.id), record.layers, self._owner(record))

    def _remove_dir(self, record: SandboxRecord) -> None:
        """Remove a sandbox's directory (its overlay unmounted first) and the layers nothing stacks any more."""
        if record.layers:
            self.layers.unmount(self._dir(record.id))
        shutil.rmtree(self._dir(record.id), True)
        if record.layers:
            self.layers.collect({layer for r in self._stacked() for layer in r.layers})

    def _make_dirs(self, record: SandboxRecord) -> None:
        base = self._dir(record.id)
        base.mkdir(mode=0o750, exist_ok=True)
        owner = self._owner(record)
        if owner is not None:
            os.chown(base, 0, owner[1])
        for sub in ("workspace", "tmp"):
            path = base / sub
            path.mkdir(mode=0o755, exist_ok=True)
            if owner is not None:
                os.chown(path, *owner)

    async def list_sandboxes(self, principal: Principal) -> list[dict[str, Any]]:
        """The caller's sandboxes."""
        return [self._describe(r) for r in await self.store.list_for(principal.tenant)]

    async def get(self, principal: Principal, ref: str) -> dict[str, Any]:
        """One of the caller's sandboxes, with its disk use."""
        record = await self.store.get(principal.tenant, ref)
        body = self._describe(record)
        body["disk_used_bytes"] = await FILES.run(self._disk_used, record)
        runtime = self.runtimes.get(record.id)
        # Whether its processes were stopped for being over the disk quota (bytes or files) and it still is.
        body["disk_quota_exceeded"] = runtime is not None and runtime.disk_exceeded
        if runtime is not None and runtime.cgroup is not None:
            # Use of the sandbox's cgroup now, and whether its limits were hit since its processes started.
            usage = await FILES.run(runtime.cgroup.usage)
            body["cgroup"] = usage
            body["memory_limit_hit"] = bool(usage["oom_kills"])
        if runtime is not None and runtime.proxy is not None:
            stats = runtime.proxy.stats
            body["egress"] = {"allowed": stats.allowed, "denied": stats.denied, "last_denied": stats.last_denied}
        return body

    def _disk_used(self, record: SandboxRecord) -> int:
        base = self._dir(record.id)
        return disk_usage(base / "workspace", base / "tmp", base / "logs")

    async def delete(self, principal: Principal, ref: str) -> None:
        """Destroy a sandbox: processes killed, workspace removed, record forgotten."""
        await self._destroy(await self.store.get(principal.tenant, ref))

    async def purge_tenant(self, tenant: str) -> None:
        """Destroy every sandbox of ``tenant`` and forget its checkpoints."""
        for record in await self.store.list_for(tenant):
            await self._destroy(record)
        await self.checkpoints.purge_tenant(tenant)

    async def checkpoint(self, principal: Principal, ref: str) -> dict[str, Any]:
        """Checkpoint the caller's sandbox into the fleet now (see checkpoint.py)."""
        return await self.checkpoints.make(await self.store.get(principal.tenant, ref))

    async def _destroy(self, record: SandboxRecord) -> None:
        warm = self._warm_tasks.get(record.id)
        if warm is not None:
            warm.cancel()
            with contextlib.suppress(BaseException):
                await warm
        task = self._starting.get(record.id)
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
        await self._release(record.id)
        await self.store.delete(record.id)
        self._sessions.pop(record.id, None)
        await FILES.run(self._remove_dir, record)
        await self.checkpoints.forget(record)

    # -- processes -------------------------------------------------------------

    def _spec(self, record: SandboxRecord, policy: EgressPolicy) -> GuestSpec:
        assert self.bwrap is not None and self.python is not None
        base = self._dir(record.id)
        run_dir: Path | None = None
        if policy.enabled:
            run_dir = base / "run"
            run_dir.mkdir(mode=0o750, exist_ok=True)
            owner = self._owner(record)
            if owner is not None:
                os.chown(run_dir, 0, owner[1])
        system_root = self.images.rootfs(record.image) if record.image else None
        python = self.images.python(record.image) if record.image else self.python
        return GuestSpec(
            bwrap=self.bwrap.path, python=python, system_root=system_root,
            workspace=base / "workspace", tmp=base / "tmp",
            run_dir=run_dir, seccomp=self.seccomp, owner=self._owner(record),
            env={"PATH": BASE_PATH}, pids=self._limits(record).pids, hostname=record.name or record.id,
            groups=[self.group] if self.as_root else [],
        )

    def _base_env(self, record: SandboxRecord, policy: EgressPolicy) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "HOME": "/workspace", "USER": "sandbox", "LANG": "C.UTF-8",
               "TMPDIR": "/tmp", "EDGENODE_SANDBOX": record.id}
        if policy.enabled:
            for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
                env[key] = PROXY_URL
            env["no_proxy"] = env["NO_PROXY"] = "localhost,127.0.0.1,::1"
            if policy.node:
                env["EDGENODE_URL"] = f"http://{NODE_ALIAS}"
        return env

    async def _warm(self, record: SandboxRecord) -> None:
        """Start a new sandbox's processes ahead of its first exec, if there is room."""
        async with self._warming:
            # Let the response that created the sandbox go out first.
            await asyncio.sleep(0)
            if record.id in self.runtimes or self._slots_used() >= self.settings.max_running:
                return
            try:
                await self.runtime(record)
            except Exception as exc:  # the first exec will report it
                log.warning("warm start failed", extra={"sandbox": record.id, "error": str(exc)})

    async def _start_runtime(self, record: SandboxRecord) -> SandboxRuntime:
        policy = parse_policy(record.network)
        spec = await FILES.run(self._prepare, record, policy)
        runtime = self._runtime_for(record, policy, spec)
        try:
            try:
                await runtime.start()
            except SandboxUnavailable as exc:
                if not (self.as_root and "Permission denied" in exc.message):
                    raise
                # A chmod on a directory above DATA (which clears ACL masks) raced this start:
                # grant search again and try once more.
                await FILES.run(self._open_path_to_root)
                runtime = self._runtime_for(record, policy, spec)
                await runtime.start()
        finally:
            self._starting.pop(record.id, None)
        self.runtimes[record.id] = runtime
        return runtime

    def _runtime_for(self, record: SandboxRecord, policy: EgressPolicy, spec: GuestSpec) -> SandboxRuntime:
        return SandboxRuntime(
            record.id, spec, policy=policy, limits=self._limits(record), base_env=self._base_env(record, policy),
            root=self._dir(record.id), node_url=lambda: self.node.url, log_cap=self.settings.max_output_bytes,
            addresses=self.addresses, max_files=self.settings.max_files, cgroups=self.cgroups,
            cpu_weight=self.settings.cgroup_cpu_weight,
        )

    def _prepare(self, record: SandboxRecord, policy: EgressPolicy) -> GuestSpec:
        if self.as_root:
            # Someone may have chmod-ed a directory on the way since start (which clears ACL masks).
            self._open_path_to_root()
        self._make_dirs(record)
        # /tmp is per sandbox on disk (counted in its quota) and starts empty with each start.
        reset_dir(self._dir(record.id) / "tmp", self._owner(record))
        return self._spec(record, policy)

    async def runtime(self, record: SandboxRecord) -> SandboxRuntime:
        """The sandbox's running processes side, started if it is not running."""
        self._require()
        runtime = self.runtimes.get(record.id)
        if runtime is not None and runtime.alive:
            return runtime
        if runtime is not None:
            await self._release(record.id)
        task = self._starting.get(record.id)
        if task is None:
            await self._make_room(record.tenant)
            self._owners[record.id] = record.tenant
            task = asyncio.create_task(self._start_runtime(record))
            self._starting[record.id] = task
        return await asyncio.shield(task)

    def tenant_share(self) -> int:
        """Sandboxes with processes one tenant may hold at once."""
        return self.settings.tenant_running or max(1, self.settings.max_running // 2)

    async def _make_room(self, tenant: str) -> None:
        """Keep at most ``max_running`` sandboxes with processes, and a tenant within its share.

        Free slots go to whoever asks. When the node is full, a tenant at its share makes room
        among its own idle sandboxes only (429 when none is idle); a tenant under it takes the
        slot of an idle sandbox of its own or of a tenant holding more than it, so no tenant's
        sandboxes are evicted by one holding fewer. Sandboxes without live background processes
        go first, then the least recently used.
        """
        held: dict[str, int] = {}
        for sid in [*self.runtimes, *self._starting]:
            owner = self._owners.get(sid, "")
            held[owner] = held.get(owner, 0) + 1
        if self._slots_used() < self.settings.max_running:
            return  # free slots go to whoever asks: a tenant alone may use them all
        mine = held.get(tenant, 0)
        share = self.tenant_share()
        eligible = {tenant} if mine >= share else {t for t, n in held.items() if t == tenant or n > mine}
        idle = [r for sid, r in self.runtimes.items() if not r.busy and self._owners.get(sid, "") in eligible]
        if not idle:
            if mine >= share:
                raise TenantOverShare(f"this tenant has {share} sandboxes running commands, its share of the node; "
                                      "try again shortly", retry_after=5, limit=share)
            raise Overloaded(f"{self.settings.max_running} sandboxes are running commands; try again shortly",
                             retry_after=5)

        def order(r: SandboxRuntime) -> tuple[bool, float]:
            live = any(not p.command.done.is_set() for p in r.processes.values())
            return live, r.last_used

        victim = min(idle, key=order)
        log.info("releasing the least recently used sandbox to make room", extra={"sandbox": victim.sandbox_id})
        await self._release(victim.sandbox_id)

    async def _release(self, sandbox_id: str) -> None:
        runtime = self.runtimes.pop(sandbox_id, None)
        if sandbox_id not in self._starting:
            self._owners.pop(sandbox_id, None)
        if runtime is None:
            return
        await runtime.stop()
        with contextlib.suppress(Exception):
            await self.store.touch(sandbox_id, runtime.last_used)

    async def release(self, principal: Principal, ref: str) -> None:
        """Release a sandbox's processes now (as the idle reaper would); files stay."""
        record = await self.store.get(principal.tenant, ref)
        await self._release(record.id)

    async def exec(self, principal: Principal, ref: str, spec: ExecSpec) -> Execution:
        """Start an exec in the caller's sandbox."""
        spec = await self.resolve_session(principal, ref, spec)
        record = await self.store.get(principal.tenant, ref)
        runtime = await self.runtime(record)
        cap = min(spec.max_output_bytes or self.settings.max_output_bytes, self.settings.max_output_bytes)
        return await runtime.execute(spec, cap=cap)

    # -- images ------------------------------------------------------------------

    async def add_image(self, name: str, path: str) -> dict[str, Any]:
        """Make a sandbox image from a directory or tarball on the node (admins only, checked by the API)."""
        return await FILES.run(self.images.add, check_image_name(name), Path(path))

    async def list_images(self) -> list[dict[str, Any]]:
        """The node's sandbox images."""
        return await FILES.run(self.images.list)

    async def remove_image(self, name: str) -> None:
        """Remove an image no sandbox runs on; 409 otherwise."""
        check_image_name(name)
        if await self.store.image_in_use(name):
            raise Conflict(f"sandboxes run on image {name!r}; delete them first")
        await FILES.run(self.images.remove, name)

    # -- git checkout ------------------------------------------------------------

    async def git_checkout(self, principal: Principal, ref: str, data: dict[str, Any]) -> dict[str, Any]:
        """Clone a repository into the workspace: ``{"url", "branch"?, "depth"?, "path"?}`` (see checkout.py)."""
        record = await self.store.get(principal.tenant, ref)
        checkout = parse_checkout(data, node_url=self.node.url)
        policy = parse_policy(record.network)
        env = {"GIT_TERMINAL_PROMPT": "0"}
        token_id: str | None = None
        if checkout.repo is not None:
            if not policy.node:
                raise Forbidden("this sandbox's network policy does not grant 'node', which a checkout of the "
                                "node's own repositories needs: create it with network {\"allow\": [\"node\"]}")
            tenant = checkout.tenant or principal.tenant
            if tenant != principal.tenant:
                raise NotFound(f"no repository {checkout.tenant}/{checkout.repo} of this tenant")
            issued = await self.node.artifacts.issue_token(tenant, checkout.repo, "read", TOKEN_TTL_S)
            token_id = str(issued["id"])
            url, extra = node_clone(tenant, checkout.repo, str(issued["token"]))
            env.update(extra)
        else:
            assert checkout.url is not None
            if not policy.enabled:
                raise Forbidden("this sandbox has no network: its policy must allow the repository's host")
            url = checkout.url
        try:
            runtime = await self.runtime(record)
            began = time.perf_counter()
            clone = await (await runtime.execute(ExecSpec(checkout.argv(url), env=env), cap=64 * 1024)).collect()
            if clone["exit_code"] != 0:
                raise SandboxCheckoutFailed(f"git clone failed: {clone['stderr'].strip()[-500:] or clone}",
                                            stderr=clone["stderr"][-4000:], exit_code=clone["exit_code"])
            head = await (await runtime.execute(ExecSpec(["git", "-C", checkout.path, "rev-parse", "HEAD"]),
                                                cap=4096)).collect()
        finally:
            if token_id is not None:
                with contextlib.suppress(Exception):
                    await self.node.artifacts.tokens.revoke(principal.tenant, str(checkout.repo), token_id)
        return {"path": checkout.path, "commit": head["stdout"].strip(), "branch": checkout.branch,
                "depth": checkout.depth, "duration_ms": round((time.perf_counter() - began) * 1000, 1)}

    # -- sessions: a cwd and environment of their own, sharing the sandbox's files -----

    async def create_session(self, principal: Principal, ref: str, data: dict[str, Any]) -> dict[str, Any]:
        """A session: ``{"cwd"?, "env"?}``, the defaults of the commands that name it (``"session": id``)."""
        record = await self.store.get(principal.tenant, ref)
        unknown = set(data) - {"cwd", "env"}
        if unknown:
            raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        checked = parse_exec({"cmd": ["true"], **data}, max_stdin=0)
        sessions = self._sessions.setdefault(record.id, {})
        if len(sessions) >= MAX_SESSIONS:
            raise Conflict(f"a sandbox holds at most {MAX_SESSIONS} sessions; delete one first")
        session_id = "ses_" + secrets.token_hex(6)
        sessions[session_id] = (checked.cwd, checked.env)
        return {"id": session_id, "cwd": checked.cwd, "env": checked.env}

    async def list_sessions(self, principal: Principal, ref: str) -> list[dict[str, Any]]:
        """The sandbox's sessions."""
        record = await self.store.get(principal.tenant, ref)
        return [{"id": sid, "cwd": cwd, "env": env} for sid, (cwd, env) in self._sessions.get(record.id, {}).items()]

    async def delete_session(self, principal: Principal, ref: str, session_id: str) -> None:
        """Forget a session; 404 if unknown."""
        record = await self.store.get(principal.tenant, ref)
        if self._sessions.get(record.id, {}).pop(session_id, None) is None:
            raise NotFound(f"no session {session_id!r} in this sandbox")

    async def resolve_session(self, principal: Principal, ref: str, spec: ExecSpec) -> ExecSpec:
        """``spec`` with its session's cwd (unless it sets one) and env (under its own) applied."""
        if spec.session is None:
            return spec
        record = await self.store.get(principal.tenant, ref)
        found = self._sessions.get(record.id, {}).get(spec.session)
        if found is None:
            raise NotFound(f"no session {spec.session!r} in this sandbox")
        cwd, env = found
        return dataclasses.replace(spec, cwd=spec.cwd if spec.cwd_set else cwd, env={**env, **spec.env})

    async def terminal(self, principal: Principal, ref: str, spec: ExecSpec, rows: int,
                       cols: int) -> tuple[SandboxRuntime, Command]:
        """Start ``spec.argv`` on a terminal in the caller's sandbox (for ``GET .../pty``)."""
        record = await self.store.get(principal.tenant, ref)
        runtime = await self.runtime(record)
        command = await runtime.start_terminal(spec.argv, cwd=spec.cwd, env=spec.env, rows=rows, cols=cols)
        return runtime, command

    async def start_process(self, principal: Principal, ref: str, spec: ExecSpec) -> dict[str, Any]:
        """Start a background process."""
        spec = await self.resolve_session(principal, ref, spec)
        record = await self.store.get(principal.tenant, ref)
        runtime = await self.runtime(record)
        proc = await runtime.start_process(spec)
        return proc.as_dict()

    async def _running(self, principal: Principal, ref: str) -> SandboxRuntime | None:
        record = await self.store.get(principal.tenant, ref)
        return self.runtimes.get(record.id)

    async def list_processes(self, principal: Principal, ref: str) -> list[dict[str, Any]]:
        """Background processes since the sandbox's processes last started."""
        runtime = await self._running(principal, ref)
        return [p.as_dict() for p in runtime.processes.values()] if runtime else []

    async def get_process(self, principal: Principal, ref: str, proc_id: int) -> BackgroundProcess:
        """One background process; 404 if unknown or released."""
        runtime = await self._running(principal, ref)
        if runtime is None:
            raise SandboxProcessNotFound(f"no process {proc_id}: the sandbox's processes were released")
        return runtime.process(proc_id)

    async def signal_process(self, principal: Principal, ref: str, proc_id: int, sig: int) -> dict[str, Any]:
        """Signal a background process's group."""
        runtime = await self._running(principal, ref)
        proc = await self.get_process(principal, ref, proc_id)
        assert runtime is not None
        await runtime.signal_process(proc.id, sig)
        return proc.as_dict()

    async def process_logs(self, principal: Principal, ref: str, proc_id: int, *, follow: bool,
                           offset: int = 0) -> AsyncIterator[bytes]:
        """A background process's log, optionally followed until it exits."""
        runtime = await self._running(principal, ref)
        await self.get_process(principal, ref, proc_id)
        assert runtime is not None
        return runtime.follow_log(proc_id, follow=follow, offset=offset)

    # -- exposed ports -------------------------------------------------------------

    def _port_json(self, record: SandboxRecord, port: int, public: bool) -> dict[str, Any]:
        path = f"/v1/sandboxes/{record.id}/ports/{port}/"
        body: dict[str, Any] = {"port": port, "public": public, "path": path, "url": (self.node.url or "") + path}
        if public:
            body["public_path"] = f"/sp/{record.id}/{port}/"
            body["public_url"] = (self.node.url or "") + body["public_path"]
        if self.settings.ports_host:
            # An origin of its own: scheme and port as the node's URL has them.
            scheme, _, rest = (self.node.url or "http://").partition("://")
            node_port = rest.rpartition(":")[2] if ":" in rest else ""
            body["host_url"] = (f"{scheme}://{port}-{record.id.removeprefix('sb_')}."
                                f"{self.settings.ports_host.strip('.').lower()}{':' + node_port if node_port else ''}/")
        return body

    async def expose_port(self, principal: Principal, ref: str, port: int, public: bool) -> dict[str, Any]:
        """Let the owner reach ``port`` inside the sandbox through the node (anyone, with ``public``)."""
        record = await self.store.get(principal.tenant, ref)
        if public and not self.settings.public_ports:
            raise Forbidden("this node does not serve public sandbox ports (setting sandboxes.public_ports)")
        await self.store.expose(record.id, port, public)
        return self._port_json(record, port, public)

    async def list_ports(self, principal: Principal, ref: str) -> list[dict[str, Any]]:
        """The sandbox's exposed ports and their URLs."""
        record = await self.store.get(principal.tenant, ref)
        return [self._port_json(record, port, public) for port, public in (await self.store.ports(record.id)).items()]

    async def unexpose_port(self, principal: Principal, ref: str, port: int) -> None:
        """Stop serving ``port``; 404 if it was not exposed."""
        record = await self.store.get(principal.tenant, ref)
        if not await self.store.unexpose(record.id, port):
            raise SandboxPortNotExposed(f"port {port} of this sandbox is not exposed")

    async def port_backend(self, principal: Principal | None, ref: str, port: int) -> SandboxPortBackend:
        """A dialler into the sandbox for an exposed port: the owner's (``principal``), or anyone's for a
        public port (``principal`` None); the same 404 for what is not exposed and what is not public."""
        not_exposed = SandboxPortNotExposed(f"port {port} of this sandbox is not exposed")
        if principal is not None:
            record = await self.store.get(principal.tenant, ref)
        else:  # a stranger learns no more of a missing sandbox than of one without this public port
            try:
                record = await self.store.by_id(ref)
            except SandboxNotFound:
                raise not_exposed from None
        ports = await self.store.ports(record.id)
        if port not in ports or (principal is None and not (ports[port] and self.settings.public_ports)):
            raise not_exposed
        runtime = self.runtimes.get(record.id)
        if runtime is None or not runtime.alive or runtime.guest.proc is None:
            raise SandboxPortUnreachable("the sandbox's processes are not running: start its server as a "
                                         "background process")
        runtime.last_used = time.time()
        return SandboxPortBackend(runtime.guest.proc.pid)

    # -- files -----------------------------------------------------------------

    async def workspace(self, principal: Principal, ref: str) -> tuple[Workspace, SandboxRecord]:
        """The caller's sandbox's workspace, for file operations."""
        record = await self.store.get(principal.tenant, ref)
        runtime = self.runtimes.get(record.id)
        if runtime is not None:
            runtime.last_used = time.time()
        return Workspace(self._dir(record.id) / "workspace", owner=self._owner(record)), record

    async def watch(self, principal: Principal, ref: str, path: str, *, recursive: bool) -> Watch:
        """Changes under ``path`` of the caller's workspace, started (close it when done)."""
        ws, _ = await self.workspace(principal, ref)
        try:
            found = await FILES.run(lambda: Watch(ws, path, recursive=recursive))
        except OSError as exc:
            from edgenode.sandboxes.paths import _translate

            raise _translate(exc, path) from None
        found.start()
        return found

    async def write_file(self, principal: Principal, ref: str, path: str, chunks: AsyncIterator[bytes],
                         *, declared: int | None = None) -> int:
        """Stream ``chunks`` into ``path`` atomically; 413 past the disk quota. Returns the size."""
        ws, record = await self.workspace(principal, ref)
        quota = self._limits(record).disk_mb * MIB
        used = await FILES.run(self._disk_used, record)
        over = SandboxQuotaExceeded(f"the workspace's disk quota of {quota} bytes would be exceeded",
                                    limit=quota, used=used)
        if declared is not None and used + declared > quota:
            await _drain(chunks)
            raise over
        fd, parent, temp, name = await FILES.run(ws.begin_write, path)
        written = 0
        try:
            async for chunk in chunks:
                written += len(chunk)
                if used + written > quota:
                    break
                await FILES.run(_write_all, fd, chunk)
        except BaseException as exc:
            await FILES.run(ws.abort, fd, parent, temp)
            raise (storage_fault(exc, self._dir(record.id), "sandbox workspaces") or exc) from exc
        if used + written > quota:
            await FILES.run(ws.abort, fd, parent, temp)
            await _drain(chunks)
            raise over
        try:
            await FILES.run(ws.commit, fd, parent, temp, name, path)
        except OSError as exc:
            raise (storage_fault(exc, self._dir(record.id), "sandbox workspaces") or exc) from exc
        return written

    # -- idle reaper -------------------------------------------------------------

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            with contextlib.suppress(Exception):
                await self.reap_idle(time.time())

    async def reap_idle(self, now: float) -> list[str]:
        """Release the processes of sandboxes idle for ``idle_timeout_s``; returns their ids."""
        released = []
        for sandbox_id, runtime in list(self.runtimes.items()):
            if not runtime.busy and now - runtime.last_used >= self.settings.idle_timeout_s:
                log.info("releasing idle sandbox", extra={"sandbox": sandbox_id})
                await self._release(sandbox_id)
                released.append(sandbox_id)
        return released


def _check_name(name: Any) -> str | None:
    if name is not None and (not isinstance(name, str) or not _NAME.match(name) or name.startswith("sb_")):
        raise ValidationFailed("field 'name' must be lower-case letters, digits, '.', '_' or '-' "
                               "(up to 63, not starting with 'sb_')", field="name")
    return name


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read and drop the rest of a refused body (bounded), so the client gets to read the error."""
    drained = 0
    async for chunk in chunks:
        drained += len(chunk)
        if drained > DRAIN_LIMIT:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


__all__ = ["Sandboxes"]
