"""The isolate runner: each activation is a fresh instance of the shared Python runtime.

Agents run on the same pre-initialized runtime component as Python workers
(``edgenode.isolates.python``): their files are compiled once at deploy time and
each activation hands the bytecode to a fresh instance, whose ``run`` export
runs the agent from the top. One import, ``agent-host.call``, carries every
journaled host call as JSON. The engine, its epoch-based CPU and wall budgets
and the linker are the workers capability's; this module only binds the
activation's host call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import WasmtimeError

from edgenode.errors import Unavailable
from edgenode.isolates.capabilities import Grants, Invocation, bound
from edgenode.isolates.engine import Budget, running
from edgenode.isolates.python import binding

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

log = logging.getLogger(__name__)

HostCall = Callable[[str, str, Any], dict[str, Any]]


class IsolateRunner:
    """Runs activations in fresh instances, on the workers' engine and compiled cache."""

    name = "isolate"

    def __init__(self, engine: Agents) -> None:
        self.agents = engine
        workers = getattr(engine.node, "workers", None)
        if workers is None:
            raise Unavailable("the isolate runner needs the workers capability")
        self.workers = workers

    async def prepare(self, files: dict[str, str], entry: str = "main.py") -> None:
        """Compile the agent's files at deploy time (BuildFailed with file, line and column on a syntax error)."""
        await self.workers.compile_program(files, entry, "agent")

    def activate(self, files: dict[str, str], entry: str, input: Any, call: HostCall,
                 on_start: Callable[[Any], None]) -> dict[str, Any]:
        """One activation in a fresh instance; a trap or an exhausted budget is a ``crashed`` outcome."""
        settings = self.agents.settings
        budget = Budget(cpu_s=settings.activation_cpu_ms / 1000, wall_s=settings.activation_wall_s)
        memory = settings.activation_memory_mb << 20
        on_start(budget)
        output: list[bytes] = []
        try:
            python = self.workers.python
            program = python.program(files, entry, "agent", budget=budget, memory_bytes=memory)
            component = python.component()
        except Exception as exc:  # the runtime is unavailable or the code no longer compiles
            message = getattr(exc, "message", str(exc))
            return {"status": "crashed", "error": {"type": type(exc).__name__, "message": message, "output": ""}}
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = output.append
        wasi.stderr_custom = output.append
        store = self.workers.engine.store(budget, memory_bytes=memory)
        store.set_wasi(wasi)
        # No kv, sql or fetch grants: an agent reaches state and the network through ctx (journaled).
        invocation = Invocation(Grants("agent", None), "agent", time.monotonic() + budget.wall_s)
        try:
            with running(budget), bound(invocation), binding(program, call):
                instance = self.workers.runtime.linker().instantiate(store, component)
                run = instance.get_func(store, "run")
                if run is None:
                    raise Unavailable("the Python runtime does not export run")
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
