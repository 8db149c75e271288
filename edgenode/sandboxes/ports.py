"""Reaching a port inside a sandbox: a TCP connection made in the sandbox's own network namespace.

A sandbox has no network interface but its loopback, so a server it runs on
``127.0.0.1:8000`` is reachable only from inside. The node creates the socket in the
sandbox's network namespace (``setns`` on a short-lived thread of its own, since the
namespace is per thread; a socket keeps the namespace it was made in) and connects it
there. Nothing is bridged or routed: only the node, on behalf of an authenticated
caller, reaches the port, and only ports the owner exposed.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from typing import Any

import httpcore

from edgenode.errors import SandboxPortUnreachable
from edgenode.threads import NET

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sandbox_init_pid(bwrap_pid: int) -> int:
    """The host pid of a sandbox's first process (the supervisor), whose namespaces it shares."""
    own = os.readlink("/proc/self/ns/net")
    stack = [bwrap_pid]
    while stack:
        pid = stack.pop()
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != own:
                return pid
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    raise SandboxPortUnreachable("the sandbox's network namespace was not found (are its processes running?)")


def socket_in_namespace(pid: int) -> socket.socket:
    """A TCP socket that lives in the network namespace of ``pid``."""
    result: dict[str, Any] = {}

    def make() -> None:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(target, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(target)
            # This thread is never used again: it ends here, in the sandbox's namespace.
            result["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=make, name="sandbox-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise SandboxPortUnreachable(f"cannot enter the sandbox's network namespace: {result['error']}")
    sock: socket.socket = result["socket"]
    return sock


async def connect(bwrap_pid: int, port: int, timeout: float = 10.0) -> socket.socket:
    """A connected, non-blocking socket to ``127.0.0.1:port`` inside the sandbox."""
    sock = await NET.run(lambda: socket_in_namespace(sandbox_init_pid(bwrap_pid)))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout)
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise SandboxPortUnreachable(f"nothing answers on port {port} in the sandbox ({exc})") from None
    return sock


class _Stream(httpcore.AsyncNetworkStream):
    """An asyncio stream pair as httpcore's network stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await asyncio.wait_for(self.reader.read(max_bytes), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.writer.write(buffer)
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def aclose(self) -> None:
        self.writer.close()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no TLS to a sandbox's own port")

    def get_extra_info(self, info: str) -> Any:
        return self.writer.get_extra_info(info)


class SandboxPortBackend(httpcore.AsyncNetworkBackend):
    """httpcore's dialler for one sandbox: every connection goes to its network namespace."""

    def __init__(self, bwrap_pid: int) -> None:
        self.bwrap_pid = bwrap_pid

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        sock = await connect(self.bwrap_pid, port, timeout or 10.0)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return _Stream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("not a sandbox port")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


__all__ = ["SandboxPortBackend", "connect", "sandbox_init_pid", "socket_in_namespace"]
