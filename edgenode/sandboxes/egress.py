"""Egress for sandboxes: an allow-list policy and the HTTP proxy on the host that enforces it.

A sandbox never has a network interface but loopback. When its policy allows hosts,
the node serves an HTTP proxy on a Unix socket that is bind-mounted into the sandbox,
and the in-sandbox supervisor forwards ``127.0.0.1:3128`` to it; ``http_proxy`` and
``https_proxy`` point there, so curl, git and pip go through it. The proxy speaks
``CONNECT host:port`` (for TLS, checked by host and port) and absolute-form plain HTTP
(one request per connection, so a second request cannot ride an approved one).

Policy entries: ``"host"`` (ports 80 and 443), ``"host:port"``, ``"*.example.org"``
(any subdomain, not the apex), an IP literal, or ``"node"``. A hostname that resolves
to a loopback, private or link-local address is refused unless the entry is that IP
literal: names cannot be used to reach the host's own services. ``"node"`` grants
plain HTTP to this node's Git smart-HTTP paths (``/git/...``) and ``/healthz`` only,
reachable as ``http://edgenode.internal/...`` (``$EDGENODE_URL`` inside) or the node's
own URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from edgenode.egress import FIELD_NAME, FIELD_VALUE, AddressPolicy, AllowList, HostPattern, normalise_host
from edgenode.errors import EgressDenied, ValidationFailed
from edgenode.threads import NET

log = logging.getLogger(__name__)

#: The name a sandbox uses for its own node.
NODE_ALIAS = "edgenode.internal"
#: Paths of the node a ``"node"`` grant opens.
NODE_PATH_PREFIXES = ("/git/",)
NODE_PATHS = ("/healthz",)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
#: Connections one sandbox may hold open through its proxy (each costs the node a descriptor or two).
MAX_CONNECTIONS = 64
MAX_ALLOW_ENTRIES = 256
_FIELD = "network.allow"
_TOKEN = FIELD_NAME
_TARGET = re.compile(r"[\x21-\x7e]+")
_VALUE = FIELD_VALUE
_VERSION = re.compile(r"HTTP/1\.[01]")
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,15})(;[\t\x20-\x7e]*)?\r\n")
#: Request headers that describe the client's connection to the proxy, not the request.
_HOP_HEADERS = frozenset({"proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "upgrade",
                          "trailer"})


@dataclass(frozen=True)
class EgressPolicy:
    """What a sandbox may reach: nothing (``none``), or allow-listed hosts and optionally its node."""

    entries: tuple[HostPattern, ...] = ()
    node: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the sandbox gets a proxy at all."""
        return bool(self.entries) or self.node

    def as_json(self) -> Any:
        """The policy as the API shows it: ``"none"`` or ``{"allow": [...]}``."""
        if not self.enabled:
            return "none"
        return {"allow": (["node"] if self.node else []) + [e.as_text() for e in self.entries]}

    def allows(self, host: str, port: int, scheme: str | None = None) -> HostPattern | None:
        """The entry that allows ``host:port`` (``scheme`` None: a CONNECT tunnel, by port alone), or None."""
        return AllowList(self.entries).allows(scheme, host, port)


def parse_entry(text: str) -> HostPattern:
    """An allow-list entry, in the node's one egress grammar."""
    return HostPattern.parse(text, field=_FIELD)


def parse_policy(value: Any) -> EgressPolicy:
    """A policy from the API's ``network`` field: ``"none"`` (default) or ``{"allow": [...]}``."""
    if value is None or value == "none":
        return EgressPolicy()
    if not isinstance(value, dict) or set(value) - {"allow"}:
        raise ValidationFailed('field "network" must be "none" or {"allow": ["host", ...]}', field="network")
    allow = value.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ValidationFailed('"network.allow" must be an array of strings', field=_FIELD)
    if len(allow) > MAX_ALLOW_ENTRIES:
        raise ValidationFailed(f'"network.allow" takes at most {MAX_ALLOW_ENTRIES} entries', field=_FIELD)
    node = any(a.strip().lower() == "node" for a in allow)
    entries = AllowList.parse([a for a in allow if a.strip().lower() != "node"], field=_FIELD).patterns
    return EgressPolicy(entries, node)


class _BadRequest(Exception):
    """The client's request is not one the proxy forwards."""


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header fields."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]


def parse_head(head: bytes) -> RequestHead:
    """A request head (through its blank line), strictly: CRLF lines, token names, no control bytes."""
    if not head.endswith(b"\r\n\r\n"):
        raise _BadRequest("the request head does not end in CRLF CRLF")
    body = head[:-4]
    if b"\n" in body.replace(b"\r\n", b"") or b"\r" in body.replace(b"\r\n", b""):
        raise _BadRequest("bare LF or CR in the request head")
    lines = body.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]) \
            or not _VERSION.fullmatch(parts[2]):
        raise _BadRequest("malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise _BadRequest("too many header lines")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise _BadRequest("malformed header line")
        headers.append((name, value.strip(" \t")))
    return RequestHead(parts[0], parts[1], parts[2], headers)


@dataclass
class EgressStats:
    """Counters shown in a sandbox's status."""

    allowed: int = 0
    denied: int = 0
    last_denied: list[str] = field(default_factory=list)


class EgressProxy:
    """The proxy of one sandbox, serving on a Unix socket."""

    def __init__(self, policy: EgressPolicy, socket_path: str, *, node_url: Callable[[], str | None],
                 addresses: AddressPolicy | None = None, connect_timeout_s: float = 10.0) -> None:
        self.policy = policy
        self.addresses = addresses if addresses is not None else AddressPolicy()
        self.socket_path = socket_path
        self.node_url = node_url
        self.connect_timeout_s = connect_timeout_s
        self.stats = EgressStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket; mode 0666, as only the sandbox it is mounted into can reach its directory."""
        directory, name = os.path.split(self.socket_path)
        # Bind through the directory's descriptor: data directories can be deeper than the
        # 108 bytes a Unix socket path may have.
        dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
            os.chmod(f"/proc/self/fd/{dir_fd}/{name}", 0o666)
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dir_fd)
        self._server = await asyncio.start_unix_server(self._on_client, sock=sock)

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            self._deny(writer, "503 Service Unavailable", f"more than {MAX_CONNECTIONS} connections at once")
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _deny(self, writer: asyncio.StreamWriter, status: str, why: str) -> None:
        self.stats.denied += 1
        self.stats.last_denied = [*self.stats.last_denied[-9:], why]
        body = f"edgenode egress proxy: {why}\n".encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self._deny(writer, "431 Request Header Fields Too Large", "request head too large")
            return
        if len(raw) > MAX_HEAD_BYTES:
            self._deny(writer, "431 Request Header Fields Too Large", "request head too large")
            return
        try:
            head = parse_head(raw)
        except _BadRequest as exc:
            self._deny(writer, "400 Bad Request", str(exc))
            return
        if head.method.upper() == "CONNECT":
            await self._connect(reader, writer, head.target)
        else:
            await self._forward(reader, writer, head)

    async def _open(self, host: str, port: int, *, checked: bool = True) -> tuple[Any, Any] | str:
        """A connection to the destination by an address the policy permits, or the reason it is refused."""
        if checked:
            try:
                addresses = await NET.run(self.addresses.addresses, host, port)
            except EgressDenied as exc:
                return exc.message
        else:
            addresses = [host]
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), self.connect_timeout_s)
            except (TimeoutError, OSError):
                continue
        return f"cannot connect to {host}:{port}"

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> None:
        host, port = _split_authority(target, default_port=443)
        entry = self.policy.allows(host, port) if host else None
        if entry is None:
            self._deny(writer, "403 Forbidden", f"CONNECT to {target} is not in the allow-list")
            return
        opened = await self._open(normalise_host(host), port)
        if isinstance(opened, str):
            self._deny(writer, "502 Bad Gateway", opened)
            return
        self.stats.allowed += 1
        up_reader, up_writer = opened
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice(reader, writer, up_reader, up_writer)

    def _node_target(self, host: str, port: int) -> tuple[str, int] | None:
        """Where the node is, if ``host:port`` names it (by alias or by its own URL)."""
        url = self.node_url()
        if not url:
            return None
        parts = urlsplit(url)
        node_host, node_port = parts.hostname or "", parts.port or 80
        if host == NODE_ALIAS and port == 80:
            return node_host, node_port
        if host == normalise_host(node_host) and port == node_port:
            return node_host, node_port
        return None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead) -> None:
        url = urlsplit(head.target)
        if url.scheme.lower() != "http" or not url.hostname:
            self._deny(writer, "400 Bad Request", "only absolute http:// URLs or CONNECT are proxied")
            return
        host = normalise_host(url.hostname)
        try:
            port = url.port or 80
        except ValueError:
            self._deny(writer, "400 Bad Request", "bad port")
            return
        try:
            framing = _framing(head.headers)
        except _BadRequest as exc:
            self._deny(writer, "400 Bad Request", str(exc))
            return
        path = url.path or "/"
        node = self._node_target(host, port) if self.policy.node else None
        if node is not None:
            if not (path.startswith(NODE_PATH_PREFIXES) or path in NODE_PATHS) or ".." in path.split("/"):
                self._deny(writer, "403 Forbidden", f"path {path} of the node is not open to sandboxes")
                return
            # The node is the operator's own address, reached for the paths above only.
            opened = await self._open(node[0], node[1], checked=False)
            host_header = f"{node[0]}:{node[1]}"
        else:
            if self.policy.allows(host, port, "http") is None:
                self._deny(writer, "403 Forbidden", f"{host}:{port} is not in the allow-list")
                return
            opened = await self._open(host, port)
            host_header = url.netloc.rpartition("@")[2]
        if isinstance(opened, str):
            self._deny(writer, "502 Bad Gateway", opened)
            return
        self.stats.allowed += 1
        up_reader, up_writer = opened
        request_target = path + (f"?{url.query}" if url.query else "")
        lines = [f"{head.method} {request_target} {head.version}", f"Host: {host_header}"]
        for name, value in head.headers:
            lname = name.lower()
            if lname in _HOP_HEADERS or lname == "host":
                continue
            lines.append(f"{name}: {value}")
        lines.append("Connection: close")
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            # Exactly one request's body goes up; nothing after it can reach the destination.
            if framing == CHUNKED:
                await _copy_chunked(reader, up_writer)
            elif framing:
                await _copy_exact(reader, up_writer, framing)
            await up_writer.drain()
            await _copy_all(up_reader, writer)
        except _BadRequest:
            return
        finally:
            up_writer.close()


CHUNKED = -1


def _framing(headers: list[tuple[str, str]]) -> int:
    """The body's length (0: none), or ``CHUNKED``; _BadRequest for framing that could be read two ways."""
    lengths = {v for n, v in headers if n.lower() == "content-length"}
    encodings = [v for n, v in headers if n.lower() == "transfer-encoding"]
    if lengths and encodings:
        raise _BadRequest("both Content-Length and Transfer-Encoding")
    if encodings:
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise _BadRequest("only Transfer-Encoding: chunked is forwarded")
        return CHUNKED
    if len(lengths) > 1:
        raise _BadRequest("conflicting Content-Length headers")
    value = next(iter(lengths), "0")
    if not (value.isascii() and value.isdigit()) or len(value) > 15:  # "²" is a digit to str.isdigit
        raise _BadRequest("bad Content-Length")
    return int(value)


def _split_authority(target: str, default_port: int) -> tuple[str, int]:
    if target.startswith("["):
        end = target.find("]")
        host = target[1:end]
        rest = target[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = target.rpartition(":") if ":" in target else (target, "", "")
    if port_text and not (len(port_text) <= 5 and port_text.isascii() and port_text.isdigit()
                          and 0 < int(port_text) < 65536):
        return "", 0
    return host, int(port_text) if port_text else default_port


async def _copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        data = await reader.read(min(65536, count))
        if not data:
            return
        count -= len(data)
        writer.write(data)
        await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one chunked body, re-framed: sizes re-written, extensions and trailers dropped."""
    while True:
        match = _CHUNK_LINE.fullmatch(await reader.readuntil(b"\r\n"))
        if match is None:
            raise _BadRequest("malformed chunk size line")
        size = int(match.group(1), 16)
        if size == 0:
            while True:  # trailers, up to the blank line, are not forwarded
                trailer = await reader.readuntil(b"\r\n")
                if trailer == b"\r\n":
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                if b"\n" in trailer[:-2] or b"\r" in trailer[:-2]:
                    raise _BadRequest("bare LF or CR in a trailer")
        writer.write(b"%x\r\n" % size)
        await _copy_exact(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise _BadRequest("a chunk does not end in CRLF")
        writer.write(b"\r\n")


async def _copy_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            await _copy_all(src, dst)
        finally:
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

    try:
        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))
    finally:
        w2.close()


__all__ = ["NODE_ALIAS", "EgressPolicy", "EgressProxy", "RequestHead", "parse_entry", "parse_head", "parse_policy"]
