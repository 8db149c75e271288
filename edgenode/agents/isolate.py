"""The isolate runner: each activation is a fresh WebAssembly instance of the agent's component.

Agents are built by componentize-py against the ``agent`` world of the
``edgenode:guest`` WIT package (``edgenode/wit/agent.wit``): one import,
``agent-host.call``, carries every journaled host call as JSON, and the export
``run`` runs the agent from the top. The build, the compiled-code cache, the
wasmtime engine and its epoch-based CPU and wall budgets are the workers
capability's (``edgenode.isolates``); this module only adds the agent world's
entry point and host function.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import WasmtimeError
from wasmtime.component import Linker

from edgenode.agents.runner import SDK_PATH
from edgenode.errors import BuildFailed, Unavailable
from edgenode.isolates.builder import WIT_DIR, componentize_py_version
from edgenode.isolates.engine import Budget, running

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

log = logging.getLogger(__name__)

HostCall = Callable[[str, str, Any], dict[str, Any]]
PACKAGE = "edgenode:guest"
VERSION = "0.1.0"
#: Module names the build adds beside the agent's files.
ENTRY_MODULE = "edgenode_agent_entry"
SDK_MODULE = "edgenode_agent_sdk"
_ENTRY = f'''\
import json
import sys
import types

import wit_world
from wit_world.imports import agent_host
import {SDK_MODULE} as _sdk

# Agent code imports the SDK as edgenode_guest.agent, as in every other runner.
_package = types.ModuleType("edgenode_guest")
_package.__path__ = []
_package.agent = _sdk
sys.modules.setdefault("edgenode_guest", _package)
sys.modules["edgenode_guest.agent"] = _sdk

import main as _main

_run = _sdk.entry_point(_main)


def _call(kind, name, request):
    return json.loads(agent_host.call(kind, name, json.dumps(request)))


class WitWorld(wit_world.WitWorld):
    def run(self, input):
        return json.dumps(_sdk.execute(_run, _call, json.loads(input)))
'''

_local = threading.local()


class AgentBuilder:
    """Builds agent components, content-addressed in the workers' cache directory."""

    def __init__(self, directory: Path, *, timeout_s: float = 300.0) -> None:
        self.directory = directory / "agents"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        toolchain = hashlib.sha256()
        for path in sorted(WIT_DIR.glob("*.wit")):
            toolchain.update(path.read_bytes())
        toolchain.update(SDK_PATH.read_bytes() + _ENTRY.encode() + componentize_py_version().encode())
        self._toolchain = toolchain.hexdigest()
        self._lock = asyncio.Lock()
        self.builds = 0

    def key(self, files: dict[str, str]) -> str:
        """The content hash naming the component built from ``files``."""
        digest = hashlib.sha256(f"agent:{self._toolchain}".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """Where the component with this key lives."""
        return self.directory / f"{key}.wasm"

    async def build(self, files: dict[str, str]) -> tuple[str, Path]:
        """The component for ``files``, built unless cached; BuildFailed with the compiler's output."""
        key = self.key(files)
        path = self.path(key)
        if path.exists():
            return key, path
        async with self._lock:  # one build at a time: each takes a core for several seconds
            if not path.exists():
                await self._run(files, path)
        return key, path

    async def _run(self, files: dict[str, str], out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="edgenode-agent-build-") as tmp:
            app = Path(tmp) / "app"
            for name, text in files.items():
                target = app / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            (app / f"{ENTRY_MODULE}.py").write_text(_ENTRY)
            shutil.copyfile(SDK_PATH, app / f"{SDK_MODULE}.py")
            partial = Path(tmp) / "out.wasm"
            exe = Path(sys.executable).parent / "componentize-py"
            argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "componentize_py"]
            argv += ["-q", "-d", str(WIT_DIR), "-w", "agent", "componentize", "-p", str(app), ENTRY_MODULE,
                     "-o", str(partial)]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "VIRTUAL_ENV": tmp}
            proc = await asyncio.create_subprocess_exec(*argv, cwd=tmp, env=env, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            try:
                output, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise BuildFailed(f"agent build took longer than {self.timeout_s:.0f} s", output="") from None
            self.builds += 1
            if proc.returncode != 0 or not partial.exists():
                text = output.decode(errors="replace").replace(tmp + "/app/", "").replace(tmp, "<build>")
                lines = [ln for ln in text.splitlines() if "site-packages directory not found" not in ln]
                raise BuildFailed("the agent failed to build", output="\n".join(lines)[-8192:])
            staged = out.with_suffix(f".tmp{os.getpid()}")
            shutil.move(str(partial), staged)
            os.replace(staged, out)
            log.info("built agent component", extra={"key": out.stem, "bytes": out.stat().st_size})


class IsolateRunner:
    """Runs activations in fresh instances, on the workers' engine and compiled cache."""

    name = "isolate"

    def __init__(self, engine: Agents) -> None:
        self.agents = engine
        workers = getattr(engine.node, "workers", None)
        if workers is None:
            raise Unavailable("the isolate runner needs the workers capability")
        self.workers = workers
        self.builder = AgentBuilder(workers.cache_dir, timeout_s=workers.settings.build_timeout_s)

    async def prepare(self, files: dict[str, str]) -> None:
        """Build the component at deploy time, so activations never wait for a build."""
        await self.builder.build(files)

    def _linker(self) -> Linker:
        linker: Linker | None = getattr(_local, "linker", None)
        if linker is None:
            linker = Linker(self.workers.engine.engine)
            linker.add_wasip2()
            with linker.root() as root:
                with root.add_instance(f"{PACKAGE}/agent-host@{VERSION}") as host:
                    host.add_func("call", _host_call)
                with root.add_instance(f"{PACKAGE}/log@{VERSION}") as lg:
                    lg.add_func("log", _host_log)
            _local.linker = linker
        return linker

    def activate(self, files: dict[str, str], entry: str, input: Any, call: HostCall,
                 on_start: Callable[[Any], None]) -> dict[str, Any]:
        """One activation in a fresh instance; a trap or an exhausted budget is a ``crashed`` outcome."""
        key = self.builder.key(files)
        path = self.builder.path(key)
        if not path.exists():
            self.agents.run_async(lambda: self.builder.build(files))
        component = self.workers.cache.get(f"agent-{key}", path)
        settings = self.agents.settings
        budget = Budget(cpu_s=settings.activation_cpu_ms / 1000, wall_s=settings.activation_wall_s)
        on_start(budget)
        output: list[bytes] = []
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = output.append
        wasi.stderr_custom = output.append
        store = self.workers.engine.store(budget, memory_bytes=settings.activation_memory_mb << 20)
        store.set_wasi(wasi)
        _local.call = call
        try:
            with running(budget):
                instance = self._linker().instantiate(store, component)
                run = instance.get_func(store, "run")
                if run is None:
                    raise Unavailable("the agent component does not export run")
                result = run(store, json.dumps(input))
                run.post_return(store)
            outcome: dict[str, Any] = json.loads(result)
            return outcome
        except (WasmtimeError, ValueError) as exc:
            reason = budget.exceeded or str(exc).strip().splitlines()[0][:300]
            text = b"".join(output).decode(errors="replace")[-2000:]
            return {"status": "crashed", "error": {"type": "IsolateTrap", "message": f"the agent trapped: {reason}",
                                                   "output": text}}
        finally:
            _local.call = None
            del store

    def step_timeout(self, handle: Any, seconds: float | None) -> None:
        """Bound the wall time of the step starting now (None: the step ended; restore the budget)."""
        if not isinstance(handle, Budget):
            return
        if seconds is None:
            handle.wall_s = getattr(handle, "activation_wall_s", handle.wall_s)
            return
        if not hasattr(handle, "activation_wall_s"):
            handle.activation_wall_s = handle.wall_s  # type: ignore[attr-defined]
        handle.wall_s = min(handle.wall_s, handle.wall_used() + seconds)

    def kill(self, handle: Any) -> None:
        """Make the activation's budget run out: the instance traps at the next epoch tick."""
        if isinstance(handle, Budget):
            handle.wall_s = 0.0


def _host_call(store: Any, kind: str, name: str, request: str) -> str:
    call: HostCall | None = getattr(_local, "call", None)
    if call is None:
        return json.dumps({"stop": "no_activation"})
    try:
        parsed = json.loads(request)
    except ValueError:
        return json.dumps({"error": {"code": "invalid_json", "message": "request is not JSON"}})
    return json.dumps(call(kind, name, parsed))


def _host_log(store: Any, level: str, message: str) -> None:
    log.info("agent log", extra={"level": level, "message": message[:2000]})
