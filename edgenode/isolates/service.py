"""The workers capability: deploy, invoke, one-off runs and WASI commands, metered.

The HTTP layer calls these methods; everything that touches guest code runs on
the isolate pool, everything that builds or compiles runs on worker threads or
subprocesses, and the event loop only coordinates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgenode.egress import Egress
from edgenode.errors import BadRequest, InvalidComponent, PayloadTooLarge, ValidationFailed, WorkerNotFound
from edgenode.fleet.changes import ChangeFeed
from edgenode.isolates.builder import Source
from edgenode.isolates.cache import owned_key, prune
from edgenode.isolates.capabilities import Grants, HostFunctions, Invocation
from edgenode.isolates.egress import AllowList
from edgenode.isolates.engine import Budget, IsolateEngine
from edgenode.isolates.limits import Limits
from edgenode.isolates.metering import Meter
from edgenode.isolates.pool import IsolatePool
from edgenode.isolates.python import Program, PythonRuntime
from edgenode.isolates.registry import MIGRATIONS, Registry, Version, validate_name
from edgenode.isolates.runtime import CompiledCache, GuestRequest, Outcome, Runtime, Usage
from edgenode.isolates.wasi import WasiResult, WasiRunner, parse_request, wasm_kind
from edgenode.store.faults import storage_fault, write_atomic
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Pseudo-worker names under which one-off runs and WASI runs are metered.
RUN_WORKER = "_run"
WASI_WORKER = "_wasi"
MAX_ENV_BYTES = 64 * 1024
#: Bounds on compiling a deployment's files at deploy time (the runtime's own code, not the user's).
COMPILE_CPU_S = 30.0
COMPILE_WALL_S = 60.0


@dataclass(frozen=True)
class Deployed:
    """A current version with its settings parsed, ready to invoke."""

    version: Version
    limits: Limits
    grants: Grants
    public: bool
    #: The source of a Python version (compiled into its program on first use) and its bytecode's cache key.
    source: dict[str, str] | None = None
    program_key: str | None = None


@dataclass(frozen=True)
class DeploySettings:
    """The settings part of a deploy (everything but the code)."""

    limits: Limits
    allowed_hosts: list[str]
    env: dict[str, str]
    public: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain data stored with the version."""
        return {"limits": self.limits.as_dict(), "allowed_hosts": self.allowed_hosts, "env": self.env,
                "public": self.public}


def parse_env(env: object) -> dict[str, str]:
    """Validate a deployment's variables: an object of string to string, 64 KiB at most."""
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValidationFailed("env must be an object of string values", field="env")
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise PayloadTooLarge(f"env exceeds {MAX_ENV_BYTES} bytes", limit=MAX_ENV_BYTES)
    return dict(env)


class Workers:
    """Workers: Python or any-language components in WebAssembly isolates."""

    name = "workers"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = s = node.config.workers
        self.cache_dir = Path(s.cache_dir) if s.cache_dir else node.data_dir / "workers"
        # Uploaded components cannot be rebuilt, so they are the node's data, never the cache's.
        self.uploads = node.data_dir / "workers" / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.engine = IsolateEngine()
        self.cache = CompiledCache(self.engine, self.cache_dir / "compiled")
        # node.state may be wired after workers; look it up at call time.
        self.host = HostFunctions(lambda: getattr(node, "state", None), fetch_timeout_s=s.fetch_timeout_s,
                                  egress=Egress(node.config.egress.allow_networks))
        self.runtime = Runtime(self.engine, self.host, self.cache, max_response_bytes=s.max_response_bytes)
        self.python = PythonRuntime(self.engine, self.runtime.linker,
                                    runtime_dir=Path(s.runtime_dir) if s.runtime_dir else None,
                                    fallback_dir=node.data_dir / "workers" / "runtime", cache_dir=self.cache_dir,
                                    timeout_s=s.build_timeout_s)
        self._python_ready: asyncio.Future[Any] | None = None
        self.wasi = WasiRunner(self.engine, self.cache_dir / "compiled", max_output_bytes=s.max_wasi_output_bytes,
                               scratch_mb=s.wasi_scratch_mb, scratch_files=s.wasi_scratch_files)
        self.pool = IsolatePool(s.pool_size, s.queue_depth, tenant_threads=s.tenant_threads,
                                tenant_queue_depth=s.tenant_queue_depth, over_share_nice=s.over_share_nice)
        self.db = node.database("workers.db", MIGRATIONS)
        self.registry = Registry(self.db, max_per_tenant=s.max_per_tenant)
        self.meter = Meter(node.metrics, self.registry)
        self.meter.busy.set_function(lambda: self.pool.in_flight)
        self._deployed: dict[tuple[str, str], Deployed] = {}
        self._prune_task: asyncio.Task[None] | None = None
        #: Told of every worker whose deployment changed (the fleet control plane listens).
        self.changes = ChangeFeed()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, start the epoch ticker and the usage flush."""
        self.db.open()
        self.engine.start()
        self.meter.start()
        self.python_ready()  # load (or, once per version, build) the shared runtime in the background

    async def stop(self) -> None:
        """Stop taking work, record the last usage, close everything."""
        self.pool.shutdown()
        self.python.close()  # a runtime build in progress is killed: stopping never waits for one
        if self._python_ready is not None and not self._python_ready.done():
            self._python_ready.cancel()
        if self._prune_task is not None:
            await asyncio.gather(self._prune_task, return_exceptions=True)
        await self.meter.stop()
        self.engine.stop()
        self.host.close()
        self.db.close()

    def status(self) -> dict[str, Any]:
        """Pool, build and cache counters."""
        return {
            "pool_size": self.pool.size,
            "in_flight": self.pool.in_flight,
            "rejected": self.pool.rejected,
            "guest_priority": self.pool.priority_status(),
            "lowered": self.pool.lowered,
            "python_runtime": self.python.status(),
            "compiles": self.cache.compiles,
            "cache_loads": self.cache.loads,
            "cache_dir": str(self.cache_dir),
        }

    # -- deploy ----------------------------------------------------------------

    def parse_settings(self, data: dict[str, Any]) -> DeploySettings:
        """Limits, allowed hosts, env and public flag from a deploy or run body."""
        allowed = data.get("allowed_hosts") or []
        AllowList.parse(allowed)  # validate now; stored as given
        public = data.get("public", False)
        if not isinstance(public, bool):
            raise ValidationFailed("public must be a boolean", field="public")
        return DeploySettings(Limits.resolve(data.get("limits"), self.settings), list(allowed),
                              parse_env(data.get("env")), public)

    def python_ready(self) -> asyncio.Future[Any]:
        """A future done once the shared Python runtime is loaded (started on first call)."""
        if self._python_ready is None:
            self._python_ready = asyncio.ensure_future(FILES.run(self.python.component))
            self._python_ready.add_done_callback(_log_runtime_failure)
        return self._python_ready

    async def _runtime(self) -> None:
        ready = self.python_ready()
        if ready.done() and ready.exception() is not None:
            self._python_ready = None  # a failed build is retried by the next request that needs it
            ready = self.python_ready()
        await asyncio.shield(ready)

    async def compile_program(self, files: dict[str, str], entry: str, kind: str, *,
                              tenant: str | None = None) -> Program:
        """Compile a deployment's files in a fresh runtime instance (BuildFailed on a syntax error)."""
        await self._runtime()
        memory = self.settings.max_memory_mb << 20
        return await self._run_pool(lambda: self.python.program(
            files, entry, kind, budget=Budget(cpu_s=COMPILE_CPU_S, wall_s=COMPILE_WALL_S), memory_bytes=memory,
            owner=tenant or ""), tenant)

    async def deploy_python(self, tenant: str, name: str, files: object, settings: DeploySettings) -> dict[str, Any]:
        """Compile a Python worker's files on the shared runtime and make them the current version of ``name``."""
        validate_name(name)
        self.node.store.require_space("worker deployments")
        source = Source.parse(files, max_bytes=self.settings.max_source_bytes)
        try:
            await self.compile_program(source.files, "main.py", "worker", tenant=tenant)
        except Exception:
            self.meter.builds.labels("failed").inc()
            raise
        self.meter.builds.labels("ok").inc()
        version = await self.registry.add(tenant, name, kind="python", hash=source_hash(source),
                                          settings=settings.as_dict(), source=source.files)
        self._deployed.pop((tenant, name), None)
        await self.changes.emit("worker", tenant, name)
        return self._deploy_reply(version)

    async def deploy_wasm(self, tenant: str, name: str, data: bytes, settings: DeploySettings) -> dict[str, Any]:
        """Deploy a raw component (worker world) or a WASI command module (for ``/v1/wasi/run``)."""
        validate_name(name)
        self.node.store.require_space("worker deployments")
        kind = wasm_kind(data)
        if kind == "unknown":
            raise InvalidComponent("the body is not WebAssembly (no \\0asm header of a component or module)")
        key = hashlib.sha256(data).hexdigest()
        path = self.uploads / f"{key}.wasm"
        if kind == "module":
            await FILES.run(self.wasi.module, data, tenant)
        else:
            component = await FILES.run(self._compile_upload, owned_key(tenant, key), path, data)
            await FILES.run(self.runtime.check_world, component, settings.limits)
        if not path.exists():
            await FILES.run(_write_atomic, path, data)
        version = await self.registry.add(tenant, name, kind="wasi" if kind == "module" else "component", hash=key,
                                          settings=settings.as_dict(), source=None)
        self._deployed.pop((tenant, name), None)
        await self.changes.emit("worker", tenant, name)
        self.prune_soon()
        return self._deploy_reply(version)

    def _compile_upload(self, key: str, path: Path, data: bytes) -> Any:
        staged = path.with_suffix(f".upload{os.getpid()}")
        try:
            staged.write_bytes(data)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise (storage_fault(exc, path.parent, "worker deployments") or exc) from exc
        try:
            return self.cache.get(key, staged)
        finally:
            staged.unlink(missing_ok=True)

    @staticmethod
    def _deploy_reply(version: Version) -> dict[str, Any]:
        return {"name": version.name, "version": version.version, "hash": version.hash, "kind": version.kind}

    def prune_soon(self) -> None:
        """Trim the build and compiled-code cache in the background (one prune at a time)."""
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = asyncio.create_task(self._prune(), name="worker-cache-prune")

    async def _prune(self) -> None:
        try:
            keep = await self.registry.all_hashes()
            await FILES.run(prune, self.cache_dir, keep=keep, max_bytes=self.settings.cache_max_mb << 20,
                                    fingerprint=self.engine.fingerprint)
        except Exception:
            log.exception("could not prune the worker cache")

    # -- inspect ---------------------------------------------------------------

    async def describe(self, tenant: str, name: str) -> dict[str, Any]:
        """A worker's current version and every version's summary."""
        versions = await self.registry.versions(tenant, validate_name(name))
        if not versions:
            raise WorkerNotFound(f"no worker named {name!r}")
        current = await self.registry.current(tenant, name)
        body = {"name": name, **current.describe(current=True)}
        body["versions"] = [v.describe(current=v.version == current.version) for v in versions]
        if current.source is not None:
            body["files"] = sorted(current.source)
        return body

    async def list_workers(self, tenant: str) -> list[dict[str, Any]]:
        """A tenant's workers."""
        return await self.registry.list_workers(tenant)

    async def delete(self, tenant: str, name: str) -> None:
        """Remove a worker and its versions."""
        await self.registry.delete(tenant, validate_name(name))
        self._deployed.pop((tenant, name), None)
        await self.changes.emit("worker", tenant, name)

    async def rollback(self, tenant: str, name: str, version: int | None) -> dict[str, Any]:
        """Make an earlier version current again."""
        target = await self.registry.rollback(tenant, validate_name(name), version)
        self._deployed.pop((tenant, name), None)
        await self.changes.emit("worker", tenant, name)
        return self._deploy_reply(target)

    async def install(self, version: Version, component: bytes | None = None) -> None:
        """Make a version deployed on another node current here, without a build.

        Python source compiles to bytecode in the shared runtime at its first request; a component's
        bytes (``component``) are kept like an upload and compiled on first use.
        """
        if component is not None:
            path = self.uploads / f"{version.hash}.wasm"
            if not path.exists():
                await FILES.run(_write_atomic, path, component)
        await self.registry.install(version)
        self._deployed.pop((version.tenant, version.name), None)

    async def forget(self, tenant: str, name: str) -> None:
        """Remove a worker deleted elsewhere in the fleet (nothing if it is not here)."""
        try:
            await self.registry.delete(tenant, name)
        except WorkerNotFound:
            pass
        self._deployed.pop((tenant, name), None)

    def component_path(self, version: Version) -> Path:
        """Where a component or WASI version's bytes are kept."""
        return self.uploads / f"{version.hash}.wasm"

    async def usage(self, tenant: str | None) -> list[dict[str, Any]]:
        """Usage totals per worker (flushed first, so they include every finished request)."""
        await self.meter.flush()
        return await self.registry.usage(tenant)

    # -- invoke ----------------------------------------------------------------

    async def _lookup(self, tenant: str, name: str) -> Deployed:
        found = self._deployed.get((tenant, name))
        if found is not None:
            return found
        version = await self.registry.current(tenant, name)
        s = version.settings
        limits = Limits(**s["limits"])
        grants = Grants(tenant, f"worker.{name}", AllowList.parse(s.get("allowed_hosts")), dict(s.get("env", {})),
                        max_subrequests=limits.subrequests, max_fetch_bytes=self.settings.max_response_bytes)
        key = None if version.source is None else self.python.program_key(version.source, "main.py", "worker",
                                                                           owner=tenant)
        deployed = Deployed(version, limits, grants, bool(s.get("public", False)), version.source, key)
        self._deployed[(tenant, name)] = deployed
        return deployed

    async def _component_path(self, version: Version) -> Path:
        path = self.uploads / f"{version.hash}.wasm"
        if path.exists():
            return path
        raise InvalidComponent(f"the component of {version.name!r} version {version.version} is missing from "
                               f"the node's data; deploy it again")

    async def invoke(self, tenant: str, name: str, request: GuestRequest, *, public: bool = False) -> Outcome:
        """Run one request through the current version of a worker, in a fresh isolate."""
        try:
            deployed = await self._lookup(tenant, validate_name(name))
        except WorkerNotFound:
            if public:  # the same answer as for a private worker: nothing tells a stranger it exists
                raise WorkerNotFound(f"no public worker named {name!r}") from None
            raise
        if public and not deployed.public:
            raise WorkerNotFound(f"no public worker named {name!r}")
        version = deployed.version
        if version.kind == "wasi":
            raise BadRequest(f"{name!r} is a WASI command module; run it with POST /v1/wasi/run")
        limits = deployed.limits
        source = deployed.source
        if version.kind == "python":
            if source is None:
                raise InvalidComponent(f"version {version.version} of {name!r} has no source; deploy it again")
            await self._runtime()

            def call() -> Outcome:
                budget = Budget(cpu_s=COMPILE_CPU_S, wall_s=COMPILE_WALL_S)
                program = self.python.program(source, "main.py", "worker", budget=budget,
                                              memory_bytes=self.settings.max_memory_mb << 20,
                                              key=deployed.program_key, owner=tenant)
                invocation = Invocation(deployed.grants, name, _deadline(limits))
                return self.runtime.invoke(self.python.component(), request, invocation, limits, program)
        else:
            path = await self._component_path(version)

            def call() -> Outcome:
                component = self.cache.get(owned_key(tenant, version.hash), path)
                invocation = Invocation(deployed.grants, name, _deadline(limits))
                return self.runtime.invoke(component, request, invocation, limits)

        outcome = await self._run_pool(call, tenant)
        self.meter.record(tenant, name, outcome.usage)
        return outcome

    async def run_once(self, tenant: str, files: object, request: GuestRequest, settings: DeploySettings) -> Outcome:
        """Run code once on the shared runtime (the instance compiles it); no kv or sql, nothing kept."""
        source = Source.parse(files, max_bytes=self.settings.max_source_bytes)
        program = Program.from_source(source.files)
        limits = settings.limits
        grants = Grants(tenant, None, AllowList.parse(settings.allowed_hosts), settings.env,
                        max_subrequests=limits.subrequests, max_fetch_bytes=self.settings.max_response_bytes)
        await self._runtime()

        def call() -> Outcome:
            invocation = Invocation(grants, RUN_WORKER, _deadline(limits))
            return self.runtime.invoke(self.python.component(), request, invocation, limits, program)

        outcome = await self._run_pool(call, tenant)
        self.meter.record(tenant, RUN_WORKER, outcome.usage)
        return outcome

    async def wasi_run(self, tenant: str, data: dict[str, Any]) -> WasiResult:
        """Run a WASI preview 1 command (uploaded as base64, or deployed by name) once."""
        limits = Limits.resolve(data.get("limits"), self.settings)
        args, env, stdin, files = parse_request(data, max_bytes=self.settings.max_request_bytes)
        worker = WASI_WORKER
        if data.get("module_b64") is not None:
            module_b64 = data["module_b64"]
            if not isinstance(module_b64, str):
                raise ValidationFailed("module_b64 must be base64 text", field="module_b64")
            if len(module_b64) * 3 // 4 > self.settings.max_component_bytes:
                raise PayloadTooLarge(f"the module exceeds {self.settings.max_component_bytes} bytes",
                                      limit=self.settings.max_component_bytes)
            try:
                wasm = base64.b64decode(module_b64, validate=True)
            except ValueError as exc:
                raise ValidationFailed(f"module_b64 is not valid base64: {exc}", field="module_b64") from None
        elif isinstance(data.get("name"), str):
            worker = validate_name(data["name"])
            deployed = await self._lookup(tenant, worker)
            if deployed.version.kind != "wasi":
                raise BadRequest(f"{worker!r} is not a WASI command module")
            path = await self._component_path(deployed.version)
            wasm = await FILES.run(path.read_bytes)
        else:
            raise ValidationFailed("give module_b64 or the name of a deployed WASI module", field="module_b64")
        _, module = await FILES.run(self.wasi.module, wasm, tenant)
        if worker == WASI_WORKER:
            self.prune_soon()  # one-off modules leave compiled code behind
        try:
            result = await self._run_pool(
                lambda: self.wasi.run(module, args=args, env=env, stdin=stdin, files=files, limits=limits), tenant
            )
        except Exception as exc:
            code = getattr(exc, "code", "internal")
            self.meter.record(tenant, worker, Usage(memory_limit_mb=limits.memory_mb, outcome=code))
            raise
        self.meter.record(tenant, worker, Usage(cpu_ms=result.cpu_ms, wall_ms=result.wall_ms,
                                                memory_limit_mb=limits.memory_mb, outcome="ok"))
        return result

    async def _run_pool(self, fn: Callable[[], T], tenant: str | None) -> T:
        try:
            return await self.pool.run(fn, tenant=tenant)
        except Exception as exc:
            if getattr(exc, "code", None) == "overloaded":
                self.meter.rejected.inc()
            raise


def source_hash(source: Source) -> str:
    """A Python version's content hash: its files alone (the runtime that runs them is the node's)."""
    return hashlib.sha256(f"py:{source.digest()}".encode()).hexdigest()


def _log_runtime_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the Python runtime is not available", extra={"error": str(future.exception())})


def _deadline(limits: Limits) -> float:
    return time.monotonic() + limits.wall_ms / 1000


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, "worker deployments")
