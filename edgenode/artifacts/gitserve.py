"""Clones and fetches answered by git's own ``git upload-pack``, one process per request.

dulwich's upload-pack counts and compresses every object in Python and cannot reuse the
deltas already in a pack; ``git upload-pack --stateless-rpc`` (what ``git http-backend``
runs) does both in C. This module runs it against the repository directory:

- The argument list is fixed; the only path is the repository's, derived from a validated
  tenant and name. Nothing a client sends becomes an argument.
- The environment is clean: no inherited ``GIT_*`` variables, ``GIT_CONFIG_NOSYSTEM=1``,
  ``HOME`` an empty directory (no user config), and ``GIT_PROTOCOL`` only when the client
  sent a well-formed ``Git-Protocol`` header, which is how git's protocol v2 is negotiated
  over HTTP.
- The request body is gunzipped and counted on its way to stdin; stdout streams to the
  client as it is read, so a slow client stalls git on a full pipe instead of filling
  memory. A run past its time limit, or whose client goes away, is killed with its
  ``pack-objects`` child (the process gets its own process group).

Forks need nothing special: git follows ``objects/info/alternates`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edgenode.artifacts.streaming import ClosingStream
from edgenode.errors import BadRequest, Unavailable
from edgenode.streams import limited_chunks

#: What a ``Git-Protocol`` header may hold to be passed on (``version=2``, ``key=value:...``).
_PROTOCOL = re.compile(r"[A-Za-z0-9._=:-]{1,256}")
_CHUNK = 256 * 1024
#: Settings every run gets: partial clone filters are cheap for git and useful to agents.
_CONFIG = ("-c", "uploadpack.allowFilter=true")


def find_git() -> str | None:
    """The ``git`` binary on PATH, or None."""
    return shutil.which("git")


def environment(home: Path) -> dict[str, str]:
    """A clean environment for git: PATH, an empty HOME (no user config), no system config."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def git_protocol(header: str | None) -> str | None:
    """The ``Git-Protocol`` header if it is safe to hand to git as ``GIT_PROTOCOL``, else None."""
    if header and _PROTOCOL.fullmatch(header):
        return header
    return None


def is_v2(protocol: str | None) -> bool:
    """Whether the client asked for protocol v2."""
    return protocol is not None and "version=2" in protocol.split(":")


def pkt_error(data: bytes) -> str | None:
    """The message of an ``ERR`` pkt-line at the start of ``data``, if there is one."""
    if len(data) >= 8 and data[4:8] == b"ERR ":
        try:
            size = int(data[:4], 16)
        except ValueError:
            return None
        return data[8:size].decode(errors="replace").strip()
    return None


class GitUploadPack:
    """Runs ``git upload-pack --stateless-rpc`` for the info/refs GET and the upload-pack POST."""

    def __init__(self, git: str, home: Path, *, timeout_s: float) -> None:
        self.git = git
        self.home = home
        self.timeout_s = timeout_s
        self._procs: set[asyncio.subprocess.Process] = set()
        self._reapers: set[asyncio.Future[None]] = set()

    @property
    def running(self) -> int:
        """git upload-pack processes alive right now."""
        return sum(1 for proc in self._procs if proc.returncode is None)

    def environment(self, protocol: str | None) -> dict[str, str]:
        """The whole environment of a run: nothing inherited but PATH."""
        env = environment(self.home)
        if protocol is not None:
            env["GIT_PROTOCOL"] = protocol
        return env

    async def _spawn(self, repo_path: str, *args: str, protocol: str | None) -> asyncio.subprocess.Process:
        # --timeout is git's own inactivity bound; the wall-clock bound is ours (see serve()).
        argv = [self.git, *_CONFIG, "upload-pack", "--stateless-rpc", f"--timeout={int(self.timeout_s)}",
                *args, "--", repo_path]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=self.environment(protocol), cwd=repo_path,
                start_new_session=True, limit=_CHUNK)
        except OSError as exc:
            raise Unavailable(f"cannot run git upload-pack: {exc}") from exc
        self._procs.add(proc)
        return proc

    async def _reap(self, proc: asyncio.subprocess.Process, *tasks: asyncio.Future[Any]) -> None:
        """Kill the run's whole group if it still runs, and wait for it (and ``tasks``).

        The kill happens before the first await: a request task being cancelled (its client
        went away) still ends git. The waiting goes on in a shielded task for the same reason.
        """
        if proc.returncode is None:
            # Killing the group (not the pid) takes git's pack-objects child along.
            _kill_group(proc.pid)
        for task in tasks:
            task.cancel()

        async def wait() -> None:
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
            finally:
                self._procs.discard(proc)

        reaper = asyncio.ensure_future(wait())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        await asyncio.shield(reaper)

    async def advertise(self, repo_path: str, protocol: str | None) -> bytes:
        """The ``info/refs?service=git-upload-pack`` body, as ``git http-backend`` writes it."""
        proc = await self._spawn(repo_path, "--advertise-refs", protocol=protocol)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(b""), self.timeout_s)
        except TimeoutError as exc:
            raise Unavailable("git upload-pack did not answer in time") from exc
        finally:
            await self._reap(proc)
        if proc.returncode != 0:
            raise BadRequest(pkt_error(out) or f"git upload-pack failed ({proc.returncode})")
        if is_v2(protocol):
            return out  # v2 starts with "version 2"; http-backend sends no service line then
        return b"001e# service=git-upload-pack\n0000" + out

    async def serve(self, repo_path: str, body: AsyncIterator[bytes], *, gzipped: bool, limit: int,
                    protocol: str | None) -> tuple[UploadRequest, AsyncIterator[bytes]]:
        """Start one upload-pack run: (what the request was, the answer as a stream).

        Errors before git's first byte (bad gzip, a body past ``limit``, an ``ERR`` from git
        such as an unadvertised want) are raised here, so the caller can still answer 4xx.
        """
        proc = await self._spawn(repo_path, protocol=protocol)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        request = UploadRequest()
        loop = asyncio.get_running_loop()
        killer = loop.call_later(self.timeout_s, _kill_group, proc.pid)

        async def feed() -> None:
            try:
                async for chunk in limited_chunks(body, limit, gzipped=gzipped):
                    request.observe(chunk)
                    stdin.write(chunk)
                    await stdin.drain()
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

        feeder = asyncio.ensure_future(feed())
        first_read = asyncio.ensure_future(stdout.read(_CHUNK))
        try:
            await asyncio.wait({feeder, first_read}, return_when=asyncio.FIRST_COMPLETED)
            _raise_feed_error(feeder)
            first = await first_read
            if not first:
                # No answer at all: git failed, perhaps because the body did.
                await asyncio.wait({feeder})
                _raise_feed_error(feeder)
                await proc.wait()
                raise BadRequest(f"git upload-pack failed ({proc.returncode})")
            _raise_feed_error(feeder)
            message = pkt_error(first)
            if message is not None:
                raise BadRequest(f"git protocol error: {message}")
        except BaseException:
            killer.cancel()
            await self._reap(proc, feeder, first_read)
            raise

        async def answer() -> AsyncIterator[bytes]:
            yield first
            while chunk := await stdout.read(_CHUNK):
                yield chunk

        async def finish() -> None:
            killer.cancel()
            await self._reap(proc, feeder)

        return request, ClosingStream(answer(), finish)


class UploadRequest:
    """What the node learns from an upload-pack body on its way to git."""

    def __init__(self) -> None:
        self.head = b""
        self.haves = False
        self._tail = b""

    @property
    def command(self) -> str | None:
        """The protocol v2 command (``ls-refs``, ``fetch``), or None for v0/v1."""
        match = re.search(rb"command=([a-z-]+)", self.head)
        return match.group(1).decode() if match else None

    def observe(self, chunk: bytes) -> None:
        """Note the request's start and whether it sends haves (a fetch, not a clone)."""
        if len(self.head) < 64:
            self.head += chunk[: 64 - len(self.head)]
        if not self.haves:
            self.haves = b"have " in self._tail + chunk[:8] or b"have " in chunk
            self._tail = chunk[-8:]


def _raise_feed_error(feeder: asyncio.Future[None]) -> None:
    # A broken pipe only means git stopped reading (it said why on stdout); other errors win.
    if feeder.done() and not feeder.cancelled():
        exc = feeder.exception()
        if exc is not None and not isinstance(exc, ConnectionError):
            raise exc


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


__all__ = ["GitUploadPack", "UploadRequest", "environment", "find_git", "git_protocol", "is_v2", "pkt_error"]
