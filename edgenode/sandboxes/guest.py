"""The node's side of one running sandbox: bwrap with the supervisor inside, and its commands.

A sandbox's processes live under one long-lived bwrap whose first process is the
supervisor in ``guest_init.py``. Execs and background processes are commands the
supervisor forks, so they share the sandbox's namespaces (a background server is
reachable from a later exec on ``localhost``) and cost a fork, not a new bwrap.
The node speaks to the supervisor over bwrap's stdin and stdout only: no socket or
path the sandbox could swap under the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenode.errors import SandboxUnavailable
from edgenode.sandboxes import bwrap as bw
from edgenode.sandboxes import guest_init
from edgenode.sandboxes.cgroups import SandboxCgroup

log = logging.getLogger(__name__)

_GUEST_SOURCE = Path(guest_init.__file__).read_text()
#: Longest protocol line the node accepts from a supervisor (a 64 KiB chunk in base64 plus framing).
MAX_LINE = 1024 * 1024
READY_TIMEOUT_S = 15.0
#: The shell that holds a sandbox's first process until it is in its cgroup.
GATE_SHELL = "/bin/sh"


@dataclass
class Event:
    """One thing a command did: ``out`` (fd, data), ``truncated`` (fd), ``exit`` (code, signal)."""

    kind: str
    fd: int = 0
    data: bytes = b""
    code: int | None = None
    signal: int | None = None
    message: str = ""


@dataclass
class Command:
    """A command running in the sandbox, as the node tracks it."""

    id: int
    argv: list[str]
    started_at: float = field(default_factory=time.time)
    pid: int | None = None
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    signal: int | None = None
    #: Why it was stopped, if it was: "timeout", "disk_quota", "released", "memory_limit".
    stopped_by: str | None = None
    #: Called once as it ends, before whoever waits hears of it (the runtime notes OOM kills there).
    on_exit: Callable[[Command], None] | None = None
    #: Processes of the sandbox the kernel killed at its memory limit while it ran (per-sandbox cgroups).
    oom_kills: int = 0

    def finish(self, code: int | None, sig: int | None) -> None:
        """Record the exit and wake whoever waits."""
        if self.done.is_set():
            return
        self.exit_code, self.signal = code, sig
        if self.on_exit is not None:
            try:
                self.on_exit(self)
            except Exception:
                log.exception("a command's exit hook failed")
        self.done.set()
        self.events.put_nowait(Event("exit", code=code, signal=sig))


@dataclass
class GuestSpec:
    """Everything needed to start a sandbox's bwrap."""

    bwrap: str
    python: str
    workspace: Path
    tmp: Path
    run_dir: Path | None
    seccomp: bytes
    owner: tuple[int, int] | None
    env: dict[str, str]
    pids: int
    hostname: str
    groups: list[int] = field(default_factory=list)
    #: Ready only once fully warm (a pooled sandbox): its first command must not wait for anything.
    preload: bool = False
    #: An image's root file system, whose system dirs replace the host's.
    system_root: Path | None = None
    #: The sandbox's own cgroup, which its bwrap is placed in before it runs (None: rlimits only).
    cgroup: SandboxCgroup | None = None


class Guest:
    """One sandbox's bwrap and supervisor; commands are started and signalled through it."""

    def __init__(self, spec: GuestSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.commands: dict[int, Command] = {}
        self._next_id = 0
        self._ready: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.started_at: float | None = None
        self.exited = asyncio.Event()
        self.stderr_tail: list[str] = []
        self._stopping = False

    @property
    def alive(self) -> bool:
        """Whether the supervisor is running."""
        return self.proc is not None and self.proc.returncode is None and not self.exited.is_set()

    async def start(self) -> None:
        """Start bwrap and wait until the supervisor says it is ready."""
        spec = self.spec
        fds: list[int] = []

        def pipe_with(data: bytes) -> int:
            r, w = os.pipe()
            fds.append(r)
            # Small payloads (at most a few dozen KiB) fit the pipe buffer, so this cannot block.
            os.write(w, data)
            os.close(w)
            return r

        def path_fd(path: Path) -> int:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            return fd

        try:
            passwd, group = bw.passwd_text()
            mounts = bw.SandboxMounts(
                workspace=path_fd(spec.workspace),
                tmp=path_fd(spec.tmp),
                seccomp=pipe_with(spec.seccomp),
                passwd=pipe_with(passwd),
                group=pipe_with(group),
                init=pipe_with(_GUEST_SOURCE.encode()),
                run=path_fd(spec.run_dir) if spec.run_dir is not None else None,
            )
            # With a cgroup, the cgroup bounds the sandbox's processes (per sandbox even when sandboxes
            # share the node's uid); RLIMIT_NPROC counts per uid.
            rlimits = {"core": 0} if spec.cgroup is not None else {"nproc": spec.pids, "core": 0}
            config = {"rlimits": rlimits, "proxy": spec.run_dir is not None, "preload": spec.preload}
            argv = bw.sandbox_argv(spec.bwrap, mounts, env=spec.env, hostname=spec.hostname,
                                   system_root=str(spec.system_root) if spec.system_root else "",
                                   command=[spec.python, "-I", "-S", bw.GUEST_INIT_PATH, json.dumps(config)])
            if spec.cgroup is not None:
                # The gate: a shell that waits for one line on stdin before it becomes bwrap, so the node
                # puts it in the sandbox's cgroup before anything of the sandbox runs (and all of it
                # inherits the cgroup). A shell's read takes one byte at a time from a pipe: nothing
                # meant for the supervisor is consumed.
                argv = [GATE_SHELL, "-c", 'read -r line && exec "$@"', "edgenode-sandbox", *argv]
            kwargs: dict[str, Any] = {}
            if spec.owner is not None:
                kwargs.update(user=spec.owner[0], group=spec.owner[1], extra_groups=spec.groups)
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=mounts.fds(), limit=MAX_LINE,
                cwd="/", **kwargs,
            )
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start bwrap: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
        if spec.cgroup is not None:
            await self._open_gate(spec.cgroup)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_events())
        self._stderr = asyncio.create_task(self._read_stderr())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)
        except (TimeoutError, SandboxUnavailable) as exc:
            detail = " | ".join(self.stderr_tail[-5:])
            await self.stop()
            raise SandboxUnavailable(f"the sandbox did not start: {detail or exc}") from None
        self.started_at = time.time()

    async def _open_gate(self, cgroup: SandboxCgroup) -> None:
        """Place the gated process in ``cgroup``, then let it become bwrap."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            cgroup.place(self.proc.pid)
            self.proc.stdin.write(b"\n")
            await self.proc.stdin.drain()
        except (OSError, ConnectionError) as exc:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
            raise SandboxUnavailable(f"cannot place the sandbox in its cgroup: {exc}") from exc

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail = [*self.stderr_tail[-19:], text[:500]]
            log.debug("sandbox stderr", extra={"line": text[:500]})

    async def _read_events(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                try:
                    line = await self.proc.stdout.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.warning("sandbox supervisor sent an oversized line; stopping it")
                    break
                if not line:
                    break
                try:
                    msg = json.loads(line)
                    self._dispatch(msg)
                except (ValueError, KeyError, TypeError):
                    log.warning("sandbox supervisor sent a malformed line; stopping it")
                    break
        finally:
            self.exited.set()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(SandboxUnavailable("the sandbox supervisor exited"))
            for cmd in list(self.commands.values()):
                cmd.stopped_by = cmd.stopped_by or "released"
                cmd.finish(None, signal.SIGKILL)
            self.commands.clear()
            if self.proc is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            if not self._stopping and self._ready is not None and self._ready.done() \
                    and self._ready.exception() is None:
                # Not asked to stop: the supervisor failed. Say so with what it printed last.
                if self._stderr is not None:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.shield(self._stderr), 2)
                log.warning("sandbox supervisor exited unexpectedly",
                            extra={"stderr": " | ".join(self.stderr_tail[-8:])})

    def _dispatch(self, msg: dict[str, Any]) -> None:
        ev = msg["ev"]
        if ev == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        cmd = self.commands.get(int(msg["id"]))
        if cmd is None:
            return
        if ev == "started":
            cmd.pid = int(msg["pid"])
        elif ev == "out":
            cmd.events.put_nowait(Event("out", fd=int(msg["fd"]), data=base64.b64decode(msg["data"])))
        elif ev == "truncated":
            cmd.events.put_nowait(Event("truncated", fd=int(msg["fd"])))
        elif ev == "exit":
            self.commands.pop(cmd.id, None)
            cmd.finish(msg.get("code"), msg.get("signal"))
        elif ev == "failed":
            self.commands.pop(cmd.id, None)
            cmd.events.put_nowait(Event("failed", message=str(msg.get("message", ""))[:1000]))
            cmd.finish(127, None)

    async def _send(self, msg: dict[str, Any]) -> None:
        if not self.alive:
            raise SandboxUnavailable("the sandbox's processes were released; try again")
        assert self.proc is not None and self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(msg, separators=(",", ":")) + "\n").encode())
            try:
                await self.proc.stdin.drain()
            except (ConnectionError, BrokenPipeError) as exc:
                raise SandboxUnavailable("the sandbox supervisor went away") from exc

    async def spawn(self, argv: list[str], *, cwd: str, env: dict[str, str], stdin: bytes | None,
                    rlimits: dict[str, int], cap: int, code: str | None = None,
                    pty: tuple[int, int] | None = None,
                    on_exit: Callable[[Command], None] | None = None) -> Command:
        """Start ``argv`` (or Python ``code`` in a fork of the supervisor) in the sandbox; its output and
        exit arrive on ``Command.events`` (``on_exit`` is called as it ends, before either)."""
        self._next_id += 1
        cmd = Command(self._next_id, argv, on_exit=on_exit)
        self.commands[cmd.id] = cmd
        try:
            await self._send({
                "op": "spawn", "id": cmd.id, "argv": argv, "cwd": cwd, "env": env,
                "stdin": base64.b64encode(stdin).decode() if stdin is not None else None,
                "rlimits": rlimits, "cap": cap, "code": code, "pty": list(pty) if pty else None,
            })
        except BaseException:
            self.commands.pop(cmd.id, None)
            raise
        return cmd

    async def input(self, cmd: Command, data: bytes) -> None:
        """Keystrokes for a command started on a terminal."""
        if not cmd.done.is_set() and self.alive:
            with contextlib.suppress(SandboxUnavailable):
                await self._send({"op": "input", "id": cmd.id, "data": base64.b64encode(data).decode()})

    async def resize(self, cmd: Command, rows: int, cols: int) -> None:
        """A new size for a command's terminal (its foreground processes get SIGWINCH)."""
        if not cmd.done.is_set() and self.alive:
            with contextlib.suppress(SandboxUnavailable):
                await self._send({"op": "resize", "id": cmd.id, "rows": rows, "cols": cols})

    async def signal(self, cmd: Command, sig: int = signal.SIGKILL, *, foreground: bool = False) -> None:
        """Send ``sig`` to the command's process group, or with ``foreground`` to its terminal's foreground
        job (no-op once it has exited)."""
        if cmd.done.is_set() or not self.alive:
            return
        with contextlib.suppress(SandboxUnavailable):
            await self._send({"op": "signal", "id": cmd.id, "sig": int(sig), "foreground": foreground})

    async def stop(self) -> None:
        """Take the whole sandbox down: bwrap dies, the PID namespace and everything in it with it."""
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        for task in (self._reader, self._stderr):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 5)
        self.exited.set()


def guest_python() -> str:
    """The interpreter that runs the supervisor inside sandboxes."""
    found = bw.python_for_guest()
    if found is None:
        raise SandboxUnavailable(f"no python3 under /usr for the in-sandbox supervisor (node runs {sys.executable})")
    return found


__all__ = ["Command", "Event", "Guest", "GuestSpec", "guest_python"]
