"""Runners: where one activation of an agent's code executes.

``process`` (the default) starts a fresh ``python -I`` per activation, so no
guest memory survives between activations, exactly as a fresh isolate would;
a terminate or a host failure kills it. ``inprocess`` runs the code in a
thread of the node (trusted code only: no isolation; used by the benchmark to
measure the journal alone). Both speak the same host-call protocol
(``edgenode_guest.agent``), which the isolate runner will speak too.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgenode.errors import ValidationFailed

log = logging.getLogger(__name__)

#: The guest side of agents (``edgenode_guest.agent``), handed to each activation.
SDK_PATH = Path(__file__).resolve().parent.parent / "isolates" / "guest" / "edgenode_guest" / "agent.py"
CHILD_PATH = Path(__file__).resolve().with_name("child.py")

HostCall = Callable[[str, str, Any], dict[str, Any]]


class Runner(Protocol):
    """Runs one activation: the agent's files from the top, host calls answered by ``call``."""

    name: str

    def activate(self, files: dict[str, str], entry: str, input: Any, call: HostCall,
                 on_start: Callable[[Any], None]) -> dict[str, Any]:
        """Run to an outcome: ``{"status": "completed"|"failed"|"suspended"|"stopped", ...}``."""

    def kill(self, handle: Any) -> None:
        """End a running activation at once."""


class ProcessRunner:
    """A fresh interpreter per activation, speaking JSON lines over pipes."""

    name = "process"

    def __init__(self, *, memory_mb: int = 1024, python: str = sys.executable) -> None:
        self.memory_mb = memory_mb
        self.python = python

    def _limits(self) -> None:
        import resource

        limit = self.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def activate(self, files: dict[str, str], entry: str, input: Any, call: HostCall,
                 on_start: Callable[[Any], None]) -> dict[str, Any]:
        """Run the activation in a child process; its stderr goes to the node's log."""
        proc = subprocess.Popen(
            [self.python, "-I", str(CHILD_PATH)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
            preexec_fn=self._limits, start_new_session=True, text=True, encoding="utf-8", bufsize=1,
        )
        on_start(proc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr_lines: list[str] = []

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if len(stderr_lines) < 200:
                    stderr_lines.append(line.rstrip())

        drainer = threading.Thread(target=drain, daemon=True, name="agent-stderr")
        drainer.start()
        outcome: dict[str, Any] | None = None
        try:
            proc.stdin.write(json.dumps({"files": files, "entry": entry, "input": input, "sdk": str(SDK_PATH)})
                             + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                message = json.loads(line)
                if "outcome" in message:
                    outcome = message["outcome"]
                    break
                kind, name, request = message["call"]
                reply = call(kind, name, request)
                proc.stdin.write(json.dumps(reply) + "\n")
                proc.stdin.flush()
        except (BrokenPipeError, ValueError, KeyError, OSError) as exc:
            log.warning("agent process protocol error", extra={"error": str(exc)})
        finally:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill(proc)
                proc.wait()
            drainer.join(timeout=1)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        if stderr_lines:
            log.info("agent output", extra={"lines": stderr_lines[-50:]})
        if outcome is None:
            return {"status": "crashed", "error": {"type": "Crashed",
                                                    "message": f"agent process exited with {proc.returncode}",
                                                    "stderr": stderr_lines[-20:]}}
        return outcome

    def kill(self, handle: Any) -> None:
        """SIGKILL the activation's process group."""
        if handle is None or handle.poll() is not None:
            return
        try:
            os.killpg(handle.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def load_sdk() -> Any:
    """The guest SDK as a module of the node's own interpreter (for the in-process runner)."""
    module = sys.modules.get("edgenode_guest_agent")
    if module is None:
        spec = importlib.util.spec_from_file_location("edgenode_guest_agent", SDK_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["edgenode_guest_agent"] = module
        spec.loader.exec_module(module)
    return module


class InProcessRunner:
    """Runs the agent in the calling thread of the node: no isolation, for trusted code and benchmarks."""

    name = "inprocess"

    def __init__(self) -> None:
        self.sdk = load_sdk()

    def activate(self, files: dict[str, str], entry: str, input: Any, call: HostCall,
                 on_start: Callable[[Any], None]) -> dict[str, Any]:
        """Execute ``entry`` from ``files`` in a fresh module namespace."""
        on_start(None)
        module = types.ModuleType("agent_main")
        source = files.get(entry)
        if source is None:
            return {"status": "failed", "error": {"type": "FileNotFoundError", "message": f"no {entry}"}}
        try:
            exec(compile(source, entry, "exec"), module.__dict__)  # noqa: S102 - trusted-code runner
            run = self.sdk.entry_point(module)
        except Exception as exc:
            return {"status": "failed", "error": {"type": type(exc).__name__, "message": str(exc)}}
        outcome: dict[str, Any] = self.sdk.execute(run, call, input)
        return outcome

    def kill(self, handle: Any) -> None:
        """Threads cannot be killed; the next host call stops the run instead."""


def make_runner(name: str) -> Runner:
    """The runner a config names."""
    if name == "process":
        return ProcessRunner()
    if name == "inprocess":
        return InProcessRunner()
    raise ValidationFailed(f"unknown agents.runner {name!r}: isolate, process or inprocess", field="agents.runner")
