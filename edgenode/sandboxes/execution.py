"""One exec: what was asked (``ExecSpec``), and its output as it arrives (``Execution``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from edgenode.errors import ValidationFailed
from edgenode.sandboxes.guest import Command, Event, Guest

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
STREAMS = {1: "stdout", 2: "stderr"}
#: How long a killed command may take to report its exit before the sandbox is released.
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class ExecSpec:
    """A validated exec request."""

    argv: list[str]
    cwd: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None
    timeout_s: float | None = None
    max_output_bytes: int | None = None
    #: Python source run in a fork of the sandbox's started interpreter (as ``python3 -c``), instead of ``argv``.
    code: str | None = None
    #: A session whose cwd and env are the defaults of this command (see ``Sandboxes.create_session``).
    session: str | None = None
    #: Whether ``cwd`` was asked for (else a session's applies).
    cwd_set: bool = False


def parse_exec(data: dict[str, Any], *, max_stdin: int) -> ExecSpec:
    """An ExecSpec from the API's JSON: ``cmd`` (shell string or argv) or ``code`` (Python source), ``cwd``,
    ``env``, ``stdin``, ``timeout_s``."""
    cmd = data.get("cmd")
    code = data.get("code")
    if code is not None:
        if cmd is not None:
            raise ValidationFailed("give either 'cmd' or 'code', not both", field="code")
        if not isinstance(code, str) or "\x00" in code:
            raise ValidationFailed("field 'code' must be Python source text without NUL bytes", field="code")
        argv = ["python3", "-c", code]
    elif isinstance(cmd, str):
        if not cmd.strip():
            raise ValidationFailed("field 'cmd' is empty", field="cmd")
        argv = ["/bin/sh", "-c", cmd]
    elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise ValidationFailed("field 'cmd' must be a shell string or a non-empty array of strings", field="cmd")
    if any("\x00" in a for a in argv):
        raise ValidationFailed("field 'cmd' contains a NUL byte", field="cmd")
    cwd = data.get("cwd") or "/workspace"
    if not isinstance(cwd, str) or "\x00" in cwd:
        raise ValidationFailed("field 'cwd' must be a path", field="cwd")
    if not cwd.startswith("/"):
        # Relative to the workspace; the path is resolved inside the sandbox's own mount view.
        cwd = "/workspace/" + cwd
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise ValidationFailed("field 'env' must be an object of strings", field="env")
    for key, value in env.items():
        if not _ENV_NAME.match(key) or not isinstance(value, str) or "\x00" in value:
            raise ValidationFailed(f"env entry {key!r} must be NAME: string", field="env")
    stdin_raw = data.get("stdin")
    stdin: bytes | None = None
    if stdin_raw is not None:
        if not isinstance(stdin_raw, str):
            raise ValidationFailed("field 'stdin' must be a string", field="stdin")
        stdin = stdin_raw.encode()
    if data.get("stdin_b64") is not None:
        try:
            stdin = base64.b64decode(str(data["stdin_b64"]), validate=True)
        except ValueError as exc:
            raise ValidationFailed("field 'stdin_b64' is not base64", field="stdin_b64") from exc
    if stdin is not None and len(stdin) > max_stdin:
        raise ValidationFailed(f"stdin is larger than {max_stdin} bytes", field="stdin")
    timeout = data.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValidationFailed("field 'timeout_s' must be a positive number", field="timeout_s")
    cap = data.get("max_output_bytes")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ValidationFailed("field 'max_output_bytes' must be a positive integer", field="max_output_bytes")
    session = data.get("session")
    if session is not None and not isinstance(session, str):
        raise ValidationFailed("field 'session' must be a session id", field="session")
    unknown = set(data) - {"cmd", "code", "cwd", "env", "stdin", "stdin_b64", "timeout_s", "max_output_bytes",
                           "session"}
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    return ExecSpec(argv, cwd, dict(env), stdin, float(timeout) if timeout is not None else None, cap, code,
                    session, bool(data.get("cwd")))


@dataclass
class ExecResult:
    """How an exec ended."""

    exit_code: int | None
    signal: int | None
    duration_ms: float
    timed_out: bool
    truncated: dict[str, bool]
    stopped_by: str | None
    error: str | None = None
    #: Processes of the sandbox the kernel killed at its memory limit (its cgroup's) while this ran.
    oom_kills: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON."""
        out: dict[str, Any] = {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_ms": round(self.duration_ms, 3),
            "timed_out": self.timed_out,
            "truncated": self.truncated,
        }
        if self.stopped_by:
            out["stopped_by"] = self.stopped_by
        if self.error:
            out["error"] = self.error
        if self.oom_kills:
            out["memory_limit_hit"] = True
            out["oom_kills"] = self.oom_kills
        return out


class Execution:
    """A running exec: iterate :meth:`output` for ``(stream, bytes)`` chunks, then read :attr:`result`."""

    def __init__(self, guest: Guest, command: Command, *, timeout_s: float, cap: int,
                 on_done: Callable[[], None] | None = None) -> None:
        self.on_done = on_done
        self.guest = guest
        self.command = command
        self.timeout_s = timeout_s
        self.cap = cap
        self.started = time.perf_counter()
        self.truncated = {"stdout": False, "stderr": False}
        self._sizes = {"stdout": 0, "stderr": 0}
        self.timed_out = False
        self.error: str | None = None
        self.result: ExecResult | None = None

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """Chunks of output in order, until the command exits (or is killed at its timeout)."""
        deadline = self.started + self.timeout_s
        killed_at: float | None = None
        try:
            while True:
                now = time.perf_counter()
                wait = (deadline - now) if killed_at is None else (killed_at + KILL_GRACE_S - now)
                try:
                    event: Event = await asyncio.wait_for(self.command.events.get(), max(wait, 0.0))
                except TimeoutError:
                    if killed_at is None:
                        self.timed_out = True
                        self.command.stopped_by = self.command.stopped_by or "timeout"
                        await self.guest.signal(self.command)
                        killed_at = time.perf_counter()
                        continue
                    # The supervisor did not report the kill: release the whole sandbox.
                    await self.guest.stop()
                    self.command.finish(None, 9)
                    continue
                if event.kind == "out":
                    name = STREAMS.get(event.fd, "stdout")
                    room = self.cap - self._sizes[name]
                    data = event.data[:max(room, 0)]
                    if len(data) < len(event.data):
                        self.truncated[name] = True
                    if data:
                        self._sizes[name] += len(data)
                        yield name, data
                elif event.kind == "truncated":
                    self.truncated[STREAMS.get(event.fd, "stdout")] = True
                elif event.kind == "failed":
                    self.error = f"could not start the command: {event.message}"
                elif event.kind == "exit":
                    break
        finally:
            if not self.command.done.is_set():
                # The caller went away (a closed stream): never leave the command running.
                self.command.stopped_by = self.command.stopped_by or "client_disconnected"
                await self.guest.signal(self.command)
            self.result = ExecResult(
                exit_code=self.command.exit_code,
                signal=self.command.signal,
                duration_ms=(time.perf_counter() - self.started) * 1000,
                timed_out=self.timed_out,
                truncated=dict(self.truncated),
                stopped_by=self.command.stopped_by,
                error=self.error,
                oom_kills=self.command.oom_kills,
            )
            if self.on_done is not None:
                self.on_done()

    async def lines(self, *, idle_s: float = 0.2) -> AsyncIterator[list[tuple[str, str, bool]]]:
        """Output as batches of ``(stream, line, partial)``: the whole lines of each chunk as it comes
        (one batch per chunk, so a writer handles many lines at once), and a pending partial line
        (a prompt, a progress bar) once the command has been quiet for ``idle_s``."""
        splitter = LineSplitter()
        # Unbounded, but the output itself is capped at ``cap`` bytes per stream.
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self.output():
                    queue.put_nowait(item)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), idle_s)
                except TimeoutError:
                    partial = [(stream, rest, True) for stream, rest in splitter.flush()]
                    if partial:
                        yield partial
                    continue
                if item is None:
                    break
                batch = [(item[0], line, False) for line in splitter.feed(*item)]
                if batch:
                    yield batch
            await task
            partial = [(stream, rest, True) for stream, rest in splitter.flush()]
            if partial:
                yield partial
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def collect_chunks(self) -> dict[str, list[bytes]]:
        """Run to the end; the output as it came, per stream (then read :attr:`result`)."""
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        async for name, data in self.output():
            chunks[name].append(data)
        return chunks

    async def collect(self) -> dict[str, Any]:
        """Run to the end and return ``{"exit_code", "stdout", "stderr", "duration_ms", ...}``."""
        chunks = await self.collect_chunks()
        assert self.result is not None
        body = self.result.as_dict()
        body["stdout"] = b"".join(chunks["stdout"]).decode(errors="replace")
        body["stderr"] = b"".join(chunks["stderr"]).decode(errors="replace")
        return body


class LineSplitter:
    """Turns output chunks into whole lines per stream; a partial line waits for its end or the exit."""

    #: A line longer than this is sent in pieces rather than held without bound.
    MAX_LINE = 64 * 1024

    def __init__(self) -> None:
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> list[str]:
        """Complete lines (without their newline) made by ``data``."""
        buf = self._pending[stream] + data
        end = buf.rfind(b"\n")
        # One decode for all complete lines: a newline never sits inside a UTF-8 sequence.
        lines = buf[:end].decode(errors="replace").split("\n") if end >= 0 else []
        rest = buf[end + 1:]
        while len(rest) > self.MAX_LINE:
            lines.append(rest[: self.MAX_LINE].decode(errors="replace"))
            rest = rest[self.MAX_LINE:]
        self._pending[stream] = rest
        return lines

    def flush(self) -> list[tuple[str, str]]:
        """Partial last lines, at the end."""
        out = [(s, b.decode(errors="replace")) for s, b in self._pending.items() if b]
        self._pending = {"stdout": b"", "stderr": b""}
        return out


__all__ = ["ExecResult", "ExecSpec", "Execution", "LineSplitter", "parse_exec"]
