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
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from edgenode.errors import ValidationFailed

log = logging.getLogger(__name__)

#: The name a sandbox uses for its own node.
NODE_ALIAS = "edgenode.internal"
#: Paths of the node a ``"node"`` grant opens.
NODE_PATH_PREFIXES = ("/git/",)
NODE_PATHS = ("/healthz",)

MAX_HEAD_BYTES = 64 * 1024
#: Connections one sandbox may hold open through its proxy (each costs the node a descriptor or two).
MAX_CONNECTIONS = 64
DEFAULT_PORTS = frozenset({80, 443})
MAX_ALLOW_ENTRIES = 256
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: an exact host, a ``*.`` suffix, or an IP, with its ports."""

    host: str
    wildcard: bool
    ports: frozenset[int]
    ip_literal: bool

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is covered by this entry."""
        if port not in self.ports:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class EgressPolicy:
    """What a sandbox may reach: nothing (``none``), or allow-listed hosts and optionally its node."""

    entries: tuple[AllowEntry, ...] = ()
    node: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the sandbox gets a proxy at all."""
        return bool(self.entries) or self.node

    def as_json(self) -> Any:
        """The policy as the API shows it: ``"none"`` or ``{"allow": [...]}``."""
        if not self.enabled:
            return "none"
        allow = ["node"] if self.node else []
        for e in self.entries:
            host = ("*." if e.wildcard else "") + (f"[{e.host}]" if ":" in e.host else e.host)
            allow.append(host if e.ports == DEFAULT_PORTS else f"{host}:{next(iter(e.ports))}")
        return {"allow": allow}

    def allows(self, host: str, port: int) -> AllowEntry | None:
        """The entry that allows ``host:port``, or None."""
        host = _normalise_host(host)
        return next((e for e in self.entries if e.matches(host, port)), None)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_entry(text: str) -> AllowEntry:
    """An allow-list entry from ``host``, ``host:port``, ``*.domain``, ``[v6]:port`` or an IP."""
    raw = text.strip().lower()
    if not raw or "/" in raw or "@" in raw:
        raise ValidationFailed(f"allow entry {text!r} must be a host, *.domain or host:port", field="network.allow")
    port: int | None = None
    host = raw
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValidationFailed(f"allow entry {text!r} has an unclosed '['", field="network.allow")
        host, rest = raw[1:end], raw[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValidationFailed(f"allow entry {text!r} is malformed", field="network.allow")
            port = _port(rest[1:], text)
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        port = _port(port_text, text)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    host = host.rstrip(".")
    ip = _ip(host)
    if ip is None and not _HOSTNAME.match(host):
        raise ValidationFailed(f"allow entry {text!r} is not a valid host name", field="network.allow")
    if ip is not None and wildcard:
        raise ValidationFailed(f"allow entry {text!r}: a wildcard needs a domain", field="network.allow")
    if wildcard and "." not in host:
        raise ValidationFailed(f"allow entry {text!r}: wildcards need a domain with a dot, such as *.example.org",
                               field="network.allow")
    ports = frozenset({port}) if port is not None else DEFAULT_PORTS
    return AllowEntry(str(ip) if ip is not None else host, wildcard, ports, ip is not None)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValidationFailed(f"allow entry {entry!r} has a bad port", field="network.allow")
    return int(text)


def parse_policy(value: Any) -> EgressPolicy:
    """A policy from the API's ``network`` field: ``"none"`` (default) or ``{"allow": [...]}``."""
    if value is None or value == "none":
        return EgressPolicy()
    if not isinstance(value, dict) or set(value) - {"allow"}:
        raise ValidationFailed('field "network" must be "none" or {"allow": ["host", ...]}', field="network")
    allow = value.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ValidationFailed('"network.allow" must be an array of strings', field="network.allow")
    if len(allow) > MAX_ALLOW_ENTRIES:
        raise ValidationFailed(f'"network.allow" takes at most {MAX_ALLOW_ENTRIES} entries', field="network.allow")
    node = any(a.strip().lower() == "node" for a in allow)
    entries = tuple(parse_entry(a) for a in allow if a.strip().lower() != "node")
    return EgressPolicy(entries, node)


def _is_public(address: str) -> bool:
    ip = _ip(address.split("%")[0])
    return ip is not None and ip.is_global and not ip.is_multicast


@dataclass
class EgressStats:
    """Counters shown in a sandbox's status."""

    allowed: int = 0
    denied: int = 0
    last_denied: list[str] = field(default_factory=list)


class EgressProxy:
    """The proxy of one sandbox, serving on a Unix socket."""

    def __init__(self, policy: EgressPolicy, socket_path: str, *, node_url: Callable[[], str | None],
                 connect_timeout_s: float = 10.0) -> None:
        self.policy = policy
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
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD_BYTES:
            self._deny(writer, "431 Request Header Fields Too Large", "request head too large")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._deny(writer, "400 Bad Request", "malformed request line")
            return
        method, target, version = parts
        if method.upper() == "CONNECT":
            await self._connect(reader, writer, target)
        else:
            await self._forward(reader, writer, method, target, version, lines[1:])

    async def _open(self, host: str, port: int, entry: AllowEntry | None) -> tuple[Any, Any] | str:
        """A connection to an allowed destination, or the reason it is refused."""
        loop = asyncio.get_running_loop()
        if entry is not None and entry.ip_literal:
            addresses = [host]
        else:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                return f"cannot resolve {host}"
            addresses = [str(info[4][0]) for info in infos]
            if entry is not None:
                # Names must not lead to the host's own or private services (DNS rebinding).
                addresses = [a for a in addresses if _is_public(a)]
                if not addresses:
                    return f"{host} resolves only to non-public addresses"
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
        opened = await self._open(_normalise_host(host), port, entry)
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
        if host == _normalise_host(node_host) and port == node_port:
            return node_host, node_port
        return None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                       target: str, version: str, header_lines: list[str]) -> None:
        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.hostname:
            self._deny(writer, "400 Bad Request", "only absolute http:// URLs or CONNECT are proxied")
            return
        host = _normalise_host(url.hostname)
        try:
            port = url.port or 80
        except ValueError:
            self._deny(writer, "400 Bad Request", "bad port")
            return
        path = url.path or "/"
        node = self._node_target(host, port) if self.policy.node else None
        if node is not None:
            if not (path.startswith(NODE_PATH_PREFIXES) or path in NODE_PATHS) or ".." in path.split("/"):
                self._deny(writer, "403 Forbidden", f"path {path} of the node is not open to sandboxes")
                return
            opened = await self._open(node[0], node[1], AllowEntry(node[0], False, frozenset({node[1]}), True))
            host_header = f"{node[0]}:{node[1]}"
        else:
            entry = self.policy.allows(host, port)
            if entry is None:
                self._deny(writer, "403 Forbidden", f"{host}:{port} is not in the allow-list")
                return
            opened = await self._open(host, port, entry)
            host_header = None
        if isinstance(opened, str):
            self._deny(writer, "502 Bad Gateway", opened)
            return
        self.stats.allowed += 1
        up_reader, up_writer = opened
        request_target = path + (f"?{url.query}" if url.query else "")
        headers = []
        length: int | None = None
        chunked = False
        for line in header_lines:
            if not line:
                continue
            name, _, value = line.partition(":")
            lname = name.strip().lower()
            if lname in {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}:
                continue
            if lname == "host" and host_header:
                value = " " + host_header
            if lname == "content-length" and value.strip().isdigit():
                length = int(value.strip())
            if lname == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            headers.append(f"{name}:{value}")
        head = f"{method} {request_target} {version}\r\n" + "".join(h + "\r\n" for h in headers)
        up_writer.write((head + "Connection: close\r\n\r\n").encode("latin-1"))
        try:
            # Exactly one request's body goes up; nothing after it can reach the destination.
            if chunked:
                await _copy_chunked(reader, up_writer)
            elif length:
                await _copy_exact(reader, up_writer, length)
            await up_writer.drain()
            await _copy_all(up_reader, writer)
        finally:
            up_writer.close()


def _split_authority(target: str, default_port: int) -> tuple[str, int]:
    if target.startswith("["):
        end = target.find("]")
        host = target[1:end]
        rest = target[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = target.rpartition(":") if ":" in target else (target, "", "")
    if port_text and not port_text.isdigit():
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
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the blank line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await _copy_exact(reader, writer, size + 2)


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


__all__ = ["NODE_ALIAS", "AllowEntry", "EgressPolicy", "EgressProxy", "parse_entry", "parse_policy"]
