"""A sandbox while it has processes: its supervisor, egress proxy, background processes and disk watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenode.egress import AddressPolicy
from edgenode.errors import SandboxProcessNotFound, SandboxUnavailable
from edgenode.sandboxes.cgroups import CgroupLimits, CgroupTree, SandboxCgroup
from edgenode.sandboxes.egress import EgressPolicy, EgressProxy
from edgenode.sandboxes.execution import KILL_GRACE_S, STREAMS, ExecSpec, Execution
from edgenode.sandboxes.guest import Command, Guest, GuestSpec
from edgenode.sandboxes.limits import MIB, DiskUsage, Limits, measure
from edgenode.threads import FILES

log = logging.getLogger(__name__)

#: How often a running sandbox's disk is measured.
DISK_CHECK_INTERVAL_S = 0.1
#: Files and directories one sandbox may hold when the node sets no other number.
DEFAULT_MAX_FILES = 100_000


@dataclass
class BackgroundProcess:
    """A background command; its combined output goes to a log file on the host."""

    id: int
    command: Command
    argv: list[str]
    log_path: Path
    started_at: float = field(default_factory=time.time)
    log_bytes: int = 0
    truncated: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The process as JSON."""
        running = not self.command.done.is_set()
        return {
            "id": self.id,
            "pid": self.command.pid,
            "argv": self.argv,
            "state": "running" if running else "exited",
            "exit_code": self.command.exit_code,
            "signal": self.command.signal,
            "stopped_by": self.command.stopped_by,
            "started_at": self.started_at,
            "log_bytes": self.log_bytes,
            "log_truncated": self.truncated,
        }


class SandboxRuntime:
    """The processes side of one sandbox, from the first exec until release."""

    def __init__(self, sandbox_id: str, spec: GuestSpec, *, policy: EgressPolicy, limits: Limits,
                 base_env: dict[str, str], root: Path, node_url: Callable[[], str | None],
                 log_cap: int, addresses: AddressPolicy | None = None,
                 max_files: int = DEFAULT_MAX_FILES, cgroups: CgroupTree | None = None,
                 cpu_weight: int = 100) -> None:
        self.sandbox_id = sandbox_id
        self.spec = spec
        self.policy = policy
        self.limits = limits
        self.base_env = base_env
        self.root = root
        self.log_cap = log_cap
        self.guest = Guest(spec)
        self.proxy = (EgressProxy(policy, str(spec.run_dir / "proxy.sock"), node_url=node_url, addresses=addresses)
                      if spec.run_dir is not None else None)
        self.processes: dict[int, BackgroundProcess] = {}
        self._next_proc = 0
        self.active_execs = 0
        self.last_used = time.time()
        self._watch: asyncio.Task[None] | None = None
        self.max_files = max_files
        self.disk_exceeded = False
        self.disk: DiskUsage = DiskUsage(0, 0)
        #: Where the sandbox's cgroup comes from (None: rlimits only), and the cgroup while it runs.
        self.cgroups = cgroups
        self.cpu_weight = cpu_weight
        self.cgroup: SandboxCgroup | None = None
        #: The cgroup's OOM kills already told to someone (a command's result, or no one).
        self._oom_seen = 0

    async def start(self) -> None:
        """Make the sandbox's cgroup (if the node bounds sandboxes with cgroups), start the proxy (if any),
        then bwrap and the supervisor inside that cgroup."""
        if self.cgroups is not None:
            tree = self.cgroups
            bounds = CgroupLimits(self.limits.memory_mb * MIB, self.limits.pids, self.cpu_weight)
            try:
                self.cgroup = self.spec.cgroup = await FILES.run(tree.create, self.sandbox_id, bounds)
            except OSError as exc:
                raise SandboxUnavailable(f"cannot make the sandbox's cgroup: {exc}") from exc
        try:
            if self.proxy is not None:
                await self.proxy.start()
            try:
                await self.guest.start()
            except BaseException:
                if self.proxy is not None:
                    await self.proxy.stop()
                raise
        except BaseException:
            await self._remove_cgroup()
            raise
        self._watch = asyncio.create_task(self._watch_disk())

    async def _remove_cgroup(self) -> None:
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            await asyncio.shield(FILES.run(cgroup.remove))

    @property
    def memory_per_process(self) -> bool:
        """Whether memory is bounded per process (RLIMIT_AS), not by a cgroup for the whole sandbox."""
        return self.cgroups is None

    def oom_kills(self) -> int:
        """Processes the kernel killed at the sandbox's memory limit since it started (0 without a cgroup)."""
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def note_exit(self, command: Command, kills_before: int) -> int:
        """After ``command`` ended: the OOM kills in the sandbox while it ran (``kills_before`` at its start),
        and ``stopped_by: memory_limit`` on it when it was one of them (killed, and by no one else)."""
        kills = self.oom_kills()
        during = max(0, kills - max(kills_before, 0))
        if during and command.signal == signal.SIGKILL and command.stopped_by is None and kills > self._oom_seen:
            command.stopped_by = "memory_limit"
        self._oom_seen = max(self._oom_seen, kills)
        return during

    async def stop(self) -> None:
        """Release every process: the sandbox's PID namespace goes away with bwrap."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        for proc in self.processes.values():
            if not proc.command.done.is_set():
                proc.command.stopped_by = "released"
        await self.guest.stop()
        for proc in self.processes.values():
            if proc.pump is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(proc.pump, 5)
        if self.proxy is not None:
            await self.proxy.stop()
        # The PID namespace died with bwrap; what is left of the cgroup (a process still exiting) goes now.
        await self._remove_cgroup()

    @property
    def alive(self) -> bool:
        """Whether the supervisor still runs."""
        return self.guest.alive

    @property
    def busy(self) -> bool:
        """Whether an exec is running (background processes alone do not count)."""
        background = {p.command.id for p in self.processes.values()}
        return any(c.id not in background for c in self.guest.commands.values())

    def env_for(self, extra: dict[str, str]) -> dict[str, str]:
        """The environment a command gets: the sandbox's base, then the request's."""
        return {**self.base_env, **extra}

    async def execute(self, spec: ExecSpec, *, cap: int) -> Execution:
        """Start an exec; the caller iterates its output."""
        self.last_used = time.time()
        timeout = min(spec.timeout_s or self.limits.timeout_s, float(self.limits.timeout_s))
        command = await self.guest.spawn(spec.argv, cwd=spec.cwd, env=self.env_for(spec.env), stdin=spec.stdin,
                                         rlimits=self._rlimits(), cap=cap, code=spec.code, on_exit=self._on_exit())
        return Execution(self.guest, command, timeout_s=timeout, cap=cap, on_done=self._touch)

    def _touch(self) -> None:
        # The end of a long exec counts as use: the idle clock starts then, not at its start.
        self.last_used = time.time()

    def _on_exit(self) -> Callable[[Command], None] | None:
        """What a command calls as it ends: with a cgroup, it notes the OOM kills while it ran."""
        if self.cgroup is None:
            return None
        kills_before = self.oom_kills()

        def noted(command: Command) -> None:
            command.oom_kills = self.note_exit(command, kills_before)

        return noted

    def _rlimits(self) -> dict[str, int]:
        return self.limits.rlimits(memory_per_process=self.memory_per_process)

    async def start_terminal(self, argv: list[str], *, cwd: str, env: dict[str, str], rows: int,
                             cols: int) -> Command:
        """Start ``argv`` on a new terminal of ``rows`` x ``cols``; no output cap (it streams to a client)."""
        self.last_used = time.time()
        return await self.guest.spawn(argv, cwd=cwd, env=self.env_for({"TERM": "xterm-256color", **env}), stdin=None,
                                      rlimits=self._rlimits(), cap=0, pty=(rows, cols), on_exit=self._on_exit())

    # -- background processes ------------------------------------------------

    async def start_process(self, spec: ExecSpec) -> BackgroundProcess:
        """Start a background command whose output is logged on the host."""
        self.last_used = time.time()
        command = await self.guest.spawn(spec.argv, cwd=spec.cwd, env=self.env_for(spec.env), stdin=spec.stdin,
                                         rlimits=self._rlimits(), cap=self.log_cap, code=spec.code,
                                         on_exit=self._on_exit())
        self._next_proc += 1
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        proc = BackgroundProcess(self._next_proc, command, spec.argv, logs / f"{self._next_proc}.log")
        proc.log_path.write_bytes(b"")
        proc.pump = asyncio.create_task(self._pump(proc))
        self.processes[proc.id] = proc
        return proc

    async def _pump(self, proc: BackgroundProcess) -> None:
        with open(proc.log_path, "ab") as out:
            while True:
                event = await proc.command.events.get()
                if event.kind == "out":
                    room = self.log_cap - proc.log_bytes
                    data = event.data[:max(room, 0)]
                    if len(data) < len(event.data):
                        proc.truncated = True
                    out.write(data)
                    out.flush()
                    proc.log_bytes += len(data)
                elif event.kind == "truncated":
                    proc.truncated = True
                elif event.kind == "failed":
                    out.write(f"[edgenode] could not start: {event.message}\n".encode())
                    out.flush()
                proc.changed.set()
                if event.kind == "exit":
                    return

    def process(self, proc_id: int) -> BackgroundProcess:
        """A background process by id; 404 otherwise."""
        proc = self.processes.get(proc_id)
        if proc is None:
            raise SandboxProcessNotFound(f"no process {proc_id} in this sandbox")
        return proc

    async def signal_process(self, proc_id: int, sig: int) -> BackgroundProcess:
        """Send ``sig`` to a background process's group."""
        proc = self.process(proc_id)
        self.last_used = time.time()
        await self.guest.signal(proc.command, sig)
        return proc

    async def follow_log(self, proc_id: int, *, follow: bool, offset: int = 0) -> AsyncIterator[bytes]:
        """A process's log from ``offset``; with ``follow``, more as it comes until the process exits."""
        proc = self.process(proc_id)
        position = offset
        while True:
            proc.changed.clear()
            with open(proc.log_path, "rb") as f:
                f.seek(position)
                while chunk := f.read(65536):
                    position += len(chunk)
                    yield chunk
            if not follow or proc.command.done.is_set():
                # One more read catches output written between the last read and the exit.
                if follow:
                    with open(proc.log_path, "rb") as f:
                        f.seek(position)
                        rest = f.read()
                    if rest:
                        yield rest
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.changed.wait(), 15)

    # -- disk accounting -----------------------------------------------------

    def disk_used(self) -> int:
        """Bytes used by the workspace, the sandbox's /tmp and its background processes' logs."""
        return self.measure_disk().bytes

    def measure_disk(self) -> DiskUsage:
        """Bytes and files of the workspace, /tmp and the process logs (all a sandbox can make grow)."""
        return measure(self.spec.workspace, self.spec.tmp, self.root / "logs")

    async def _watch_disk(self) -> None:
        """While the sandbox runs, measure its disk; past the quota, stop every process in it.

        Measured whether or not a command is tracked: a process detached with ``setsid ... &``
        outlives the exec that started it, and writes all the same. Bytes and files count
        (empty files cost no block but an inode each). The walk repeats every 0.1 s, or five
        times as long as the last walk took on a big tree, so the quota can be overrun by what
        a sandbox writes in one interval. Once the sandbox is stopped over its quota, it is
        stopped again only if usage grows further: ``rm`` to get back under must be able to run.
        """
        quota = self.limits.disk_mb * MIB
        stopped_at: DiskUsage | None = None
        interval = DISK_CHECK_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            began = time.perf_counter()
            used = self.disk = await FILES.run(self.measure_disk)
            interval = max(DISK_CHECK_INTERVAL_S, 5 * (time.perf_counter() - began))
            if used.bytes <= quota and used.files <= self.max_files:
                self.disk_exceeded = False
                stopped_at = None
                continue
            self.disk_exceeded = True
            # Writes in flight at the kill still land (and delayed allocation shows up later): only
            # growth past that slack is a new offence.
            if stopped_at is not None and used.bytes <= stopped_at.bytes + max(MIB, quota // 16) \
                    and used.files <= stopped_at.files + 64:
                continue
            log.warning("sandbox over its disk quota: stopping its processes",
                        extra={"sandbox": self.sandbox_id, "used": used.bytes, "quota": quota, "files": used.files,
                               "max_files": self.max_files})
            stopped_at = await self.stop_for_disk(used)

    async def stop_for_disk(self, used: DiskUsage) -> DiskUsage:
        """Stop every process (the sandbox measured ``used``, over its quota); returns the usage
        that later growth is measured from."""
        stopped = list(self.guest.commands.values())
        await self._stop_all("disk_quota")
        # What the stopped processes wrote between the walk and their death is not new growth:
        # measure again once they are gone, or the next command (the ``rm``) would be stopped too.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in stopped)), KILL_GRACE_S)
        after = await FILES.run(self.measure_disk)
        return DiskUsage(max(used.bytes, after.bytes), max(used.files, after.files))

    async def _stop_all(self, reason: str) -> None:
        """Kill every process of the sandbox but its supervisor: tracked commands and detached ones."""
        for command in list(self.guest.commands.values()):
            command.stopped_by = reason
            await self.guest.signal(command, signal.SIGKILL)
        proc = self.guest.proc
        if proc is not None and proc.returncode is None:
            await FILES.run(kill_inner_processes, proc.pid)


def kill_inner_processes(bwrap_pid: int) -> int:
    """SIGKILL every process below ``bwrap_pid`` inside its PID namespace except that namespace's init.

    The supervisor (PID 1 inside) reaps what dies; processes the supervisor does not know of
    (detached with ``setsid``, daemons) are found by the host in ``/proc``. Returns how many.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ")" are fixed.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    killed = 0
    stack = list(children.get(bwrap_pid, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if _inner_pid(pid) in (None, 1):  # outside the sandbox's namespace, or its init
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _inner_pid(pid: int) -> int | None:
    """A process's PID in its own (innermost) namespace, None when it is in the host's."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return int(ids[-1]) if len(ids) > 1 else None
    except (OSError, ValueError):
        return None
    return None


def reset_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Empty ``path`` (recreating it) and give it to ``owner``."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o755)
    if owner is not None:
        os.chown(path, *owner)


__all__ = ["STREAMS", "BackgroundProcess", "SandboxRuntime", "kill_inner_processes", "reset_dir"]
