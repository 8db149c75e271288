"""The one outbound-network policy: allow-lists, address checks and the HTTP client every capability uses.

Worker and agent ``fetch``, the sandboxes' egress proxy and repository import all go
through here, so an entry means the same thing everywhere:

- ``host`` allows http on port 80 and https on 443; ``host:port`` that port for both
  schemes; ``scheme://host[:port]`` one scheme (its default port unless given);
  ``*.example.org`` every subdomain (not the apex); ``*`` as host or port any;
  IP literals as ``1.2.3.4`` or ``[::1]``.
- A destination is resolved once; every address it resolves to must be public
  (not loopback, private, link-local, multicast or reserved) unless it lies in a
  network the operator allows (``egress.allow_networks``), and the connection goes to
  the checked address, never to a second lookup of the name (no DNS rebinding).
- Clients never keep cookies and never follow redirects: callers that follow one
  check the next hop like the first.
- One exchange has one deadline: every connect, read and write is cut to what is left
  of it, so a trickling server cannot outlive the caller's wall limit.
- Refusals name the destination and the rule, never bytes of an internal response.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from edgenode.errors import EgressDenied, EgressFailed, EgressTimeout, EgressTooLarge, ValidationFailed

DEFAULT_PORTS = {"http": 80, "https": 443}
#: HTTP's grammar of a field name (a token) and of a field value (visible ASCII, space, tab and
#: obs-text; no CR, LF or NUL), RFC 9110: what a guest may put in a header it sends or returns.
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
MAX_ENTRIES = 256
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``socket.getaddrinfo``'s shape; injectable so tests can make a name resolve where they need.
Resolver = Callable[[str, int], list[str]]


# -- allow-lists --------------------------------------------------------------


@dataclass(frozen=True)
class HostPattern:
    """One allow-list entry."""

    schemes: tuple[str, ...]
    host: str  # lower-case name, "*", "*.suffix" or a bare IP literal (no brackets)
    port: int | None  # None: each scheme's default port; -1: any port

    @classmethod
    def parse(cls, entry: str, *, field: str = "allowed_hosts") -> HostPattern:
        """Parse an entry; raises ValidationFailed naming it when malformed."""
        if not isinstance(entry, str):
            raise ValidationFailed(f"{field} entries must be strings", field=field)
        if any(ord(c) < 0x21 or ord(c) == 0x7f for c in entry.strip(" ")):
            raise ValidationFailed(f"{field} entry {entry!r} has a control or space character", field=field)
        text = entry.strip(" ").lower()
        schemes: tuple[str, ...] = ("http", "https")
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme in DEFAULT_PORTS:
                schemes = (scheme,)
            elif scheme != "*":
                raise ValidationFailed(f"{field} entry {entry!r}: scheme must be http or https", field=field)
        if text.endswith("/"):
            text = text[:-1]
        if not text or any(c in text for c in "/@?#\\ \t\r\n"):
            raise ValidationFailed(f"{field} entry {entry!r} must be a host, *.domain or host:port", field=field)
        port: int | None = None
        host = text
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise ValidationFailed(f"{field} entry {entry!r} has an unclosed '['", field=field)
            host, rest = text[1:close], text[close + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValidationFailed(f"{field} entry {entry!r} is malformed", field=field)
                port = _port(rest[1:], entry, field)
            if _ip(host) is None:
                raise ValidationFailed(f"{field} entry {entry!r}: brackets hold an IPv6 address", field=field)
        elif text.count(":") == 1:
            host, _, raw = text.partition(":")
            port = _port(raw, entry, field)
        elif ":" in text and _ip(text) is None:
            raise ValidationFailed(f"{field} entry {entry!r} is malformed", field=field)
        host = host.rstrip(".") if host != "*" else host
        ip = _ip(host)
        if ip is not None:
            host = str(ip)
        elif host != "*":
            bare = host[2:] if host.startswith("*.") else host
            if not _HOSTNAME.fullmatch(bare) or (bare != host and _ip(bare) is not None):
                raise ValidationFailed(f"{field} entry {entry!r} is not a host name or pattern", field=field)
            if host.startswith("*.") and "." not in bare:
                raise ValidationFailed(f"{field} entry {entry!r}: a wildcard needs a domain with a dot, "
                                       "such as *.example.org", field=field)
        return cls(schemes, host, port)

    def ports(self) -> frozenset[int] | None:
        """The ports this entry opens (None: any)."""
        if self.port == -1:
            return None
        if self.port is not None:
            return frozenset({self.port})
        return frozenset(DEFAULT_PORTS[s] for s in self.schemes)

    def matches(self, scheme: str | None, host: str, port: int) -> bool:
        """Whether ``scheme://host:port`` is allowed (``scheme`` None: a tunnel, by port alone)."""
        if scheme is not None and scheme not in self.schemes:
            return False
        if self.port == -1:
            pass
        elif self.port is None:
            wanted = {DEFAULT_PORTS[scheme]} if scheme is not None else self.ports() or set()
            if port not in wanted:
                return False
        elif port != self.port:
            return False
        return self.covers(host)

    def covers(self, host: str) -> bool:
        """Whether the host part matches (any port)."""
        host = normalise_host(host)
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    @property
    def ip_literal(self) -> bool:
        """Whether the entry names an address rather than a name."""
        return _ip(self.host) is not None

    def as_text(self) -> str:
        """The entry in its canonical written form."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == -1:
            host += ":*"
        elif self.port is not None:
            host += f":{self.port}"
        if len(self.schemes) == 1:
            return f"{self.schemes[0]}://{host}"
        return host


@dataclass(frozen=True)
class AllowList:
    """The destinations a deployment, agent or sandbox may reach; empty allows none."""

    patterns: tuple[HostPattern, ...] = ()

    @classmethod
    def parse(cls, entries: object, *, field: str = "allowed_hosts", max_entries: int = MAX_ENTRIES) -> AllowList:
        """Parse a JSON list of entries."""
        if entries is None:
            return cls()
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValidationFailed(f"{field} must be a list of strings", field=field)
        if len(entries) > max_entries:
            raise ValidationFailed(f"{field} takes at most {max_entries} entries", field=field)
        return cls(tuple(HostPattern.parse(e, field=field) for e in entries))

    def allows(self, scheme: str | None, host: str, port: int) -> HostPattern | None:
        """The entry allowing ``scheme://host:port`` (``scheme`` None for a tunnel), or None."""
        host = normalise_host(host)
        return next((p for p in self.patterns if p.matches(scheme, host, port)), None)

    def check(self, url: str) -> str | None:
        """None if ``url`` may be fetched, else the reason it may not."""
        try:
            target = Target.of(url)
        except EgressDenied as exc:
            return exc.message
        if self.allows(target.scheme, target.host, target.port) is not None:
            return None
        return f"{target} is not in the allow-list"


@dataclass(frozen=True)
class Target:
    """A URL's scheme, host and port (the default port filled in)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Target:
        """Split a URL; EgressDenied when it is not an absolute http(s) URL without credentials."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressDenied(f"bad URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise EgressDenied(f"only http and https URLs can be fetched, not {scheme or 'a relative URL'!r}")
        host = normalise_host(parts.hostname or "")
        if not host:
            raise EgressDenied("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise EgressDenied("URLs with credentials are not allowed")
        return cls(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def normalise_host(host: str) -> str:
    """A host as compared: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _port(raw: str, entry: str, field: str) -> int:
    if raw == "*":
        return -1
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 5 or not 0 < int(raw) < 65536:
        raise ValidationFailed(f"{field} entry {entry!r} has a bad port", field=field)
    return int(raw)


# -- addresses ------------------------------------------------------------------


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The operator's allowed networks (CIDR strings); ValidationFailed on a bad one."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValidationFailed(f"egress.allow_networks: {entry!r} is not a network ({exc})",
                                   field="egress.allow_networks") from None
    return tuple(out)


#: IPv6 prefixes whose low 32 bits are an IPv4 address a gateway connects to: NAT64 (well-known
#: and local-use), IPv4-compatible (deprecated) and IPv4-translated addresses.
_IPV4_IN_LOW_BITS = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96",
                                                             "::ffff:0:0:0/96"))


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to a translator or tunnel (6to4, Teredo, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressPolicy:
    """Which resolved addresses a connection may go to."""

    def __init__(self, allow_networks: Iterable[str] = (), *, resolver: Resolver = system_resolver) -> None:
        self.networks = parse_networks(allow_networks)
        self.resolver = resolver

    def permits(self, address: str) -> bool:
        """Whether a connection may go to ``address``."""
        ip = _ip(address.split("%")[0])
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.networks):
            return True
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not self.permits(str(embedded)):
            return False  # a translator or tunnel would carry it to that address
        return ip.is_global and not ip.is_multicast

    def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to for ``host``; EgressDenied if there are none."""
        host = normalise_host(host)
        if _ip(host) is not None:
            candidates = [host]
        else:
            try:
                candidates = self.resolver(host, port)
            except (OSError, UnicodeError):
                raise EgressDenied(f"cannot resolve {host}") from None
        allowed = [a for a in candidates if self.permits(a)]
        if not allowed:
            raise EgressDenied(f"{host} resolves only to addresses outside the node's egress policy "
                               "(loopback, private, link-local or reserved)", host=host)
        return allowed


# -- deadlines --------------------------------------------------------------------


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("egress_deadline", default=None)


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Bound every connect, read and write of this thread's exchanges to ``at`` (``time.monotonic()``)."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def _clamp(timeout: float | None, *, error: type[Exception]) -> float | None:
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the exchange's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    """A connection whose every operation is cut to the current deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _clamp(timeout, error=httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _clamp(timeout, error=httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self.inner.start_tls(ssl_context, server_hostname, _clamp(timeout, error=httpcore.ConnectTimeout))
        return _BoundedStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _CheckedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy permits, by the address it checked."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.policy.addresses(host, port):
            try:
                stream = self.inner.connect_tcp(address, port, _clamp(timeout, error=httpcore.ConnectTimeout),
                                                local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
                continue
            return _BoundedStream(stream)
        raise httpcore.ConnectError(f"cannot connect to {host}:{port}") from last

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("egress never uses Unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PolicyTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that dials through ``_CheckedBackend``."""

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(policy),
        )


def mcp_http_client(policy: AddressPolicy, timeout_s: float) -> Any:
    """An ``httpx2.AsyncClient`` (the HTTP library of the MCP SDK) that dials only what ``policy`` permits.

    The same address checks as every other egress, by the checked address; no proxy from
    the environment, no redirects (the MCP transport follows same-origin ones itself).
    Imported on first use: only agents that call MCP servers pay for the library.
    """
    import anyio.to_thread
    import httpcore2
    import httpx2

    class CheckedAsyncBackend(httpcore2.AsyncNetworkBackend):
        def __init__(self) -> None:
            self.inner = httpcore2.AnyIOBackend()

        async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                              local_address: str | None = None, socket_options: Iterable[Any] | None = None) -> Any:
            last: Exception | None = None
            for address in await anyio.to_thread.run_sync(policy.addresses, host, port):
                try:
                    return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
                except httpcore2.ConnectError as exc:
                    last = exc
            raise httpcore2.ConnectError(f"cannot connect to {host}:{port}") from last

        async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                      socket_options: Iterable[Any] | None = None) -> Any:
            raise httpcore2.ConnectError("egress never uses Unix sockets")

        async def sleep(self, seconds: float) -> None:
            await self.inner.sleep(seconds)

    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore2.AsyncConnectionPool(ssl_context=httpx2.create_ssl_context(trust_env=False),
                                                    max_connections=4, network_backend=CheckedAsyncBackend())
    return httpx2.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                              timeout=httpx2.Timeout(timeout_s))


def _no_cookies() -> CookieJar:
    # A jar whose policy accepts no cookie and returns none: nothing set by one response
    # is ever sent on another request, whoever made it.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


# -- the facade -----------------------------------------------------------------------


@dataclass
class Reply:
    """A whole outbound response, read within its deadline and size limit."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Egress:
    """The node's outbound HTTP: per-tenant clients that check every destination."""

    MAX_CLIENTS = 256

    def __init__(self, allow_networks: Iterable[str] = (), *, resolver: Resolver = system_resolver,
                 max_connections: int = 16) -> None:
        self.addresses = AddressPolicy(allow_networks, resolver=resolver)
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=4)
        self._clients: OrderedDict[str, httpx.Client] = OrderedDict()
        self._lock = threading.Lock()

    def client(self, tenant: str) -> httpx.Client:
        """The tenant's own client: no cookie jar, no redirects, no proxy from the environment."""
        with self._lock:
            client = self._clients.get(tenant)
            if client is not None:
                self._clients.move_to_end(tenant)
                return client
            client = httpx.Client(transport=_PolicyTransport(self.addresses, self.limits), follow_redirects=False,
                                  trust_env=False, cookies=_no_cookies())
            self._clients[tenant] = client
            while len(self._clients) > self.MAX_CLIENTS:
                # Not closed: a thread may still be using it; its sockets go with it.
                self._clients.popitem(last=False)
            return client

    def close(self) -> None:
        """Close every client."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            client.close()

    @contextmanager
    def stream(self, tenant: str, method: str, url: str, *, allow: AllowList | None, until: float,
               headers: Iterable[tuple[str, str]] = (), body: bytes | Iterable[bytes] | None = None,
               ) -> Iterator[httpx.Response]:
        """One exchange, streamed: the URL checked against ``allow`` (None: any public host), all by ``until``."""
        target = Target.of(url)
        if allow is not None and allow.allows(target.scheme, target.host, target.port) is None:
            raise EgressDenied(f"{target} is not in the allow-list", host=target.host)
        sent: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if not FIELD_NAME.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
                raise ValidationFailed(f"header {name!r} is not a valid HTTP field (a token name; a value without "
                                       "CR, LF, NUL or characters beyond Latin-1)", field="headers")
            if name.lower() not in _HOP_HEADERS:
                sent.append((name.encode("ascii"), value.encode("latin-1")))
        with deadline(until):
            left = _clamp(None, error=EgressTimeout)
            try:
                with self.client(tenant).stream(method, url, headers=sent, content=body,
                                                timeout=httpx.Timeout(left)) as response:
                    yield response
            except httpx.TimeoutException:
                raise EgressTimeout(f"{target} did not answer in time") from None
            except httpx.HTTPError as exc:
                raise EgressFailed(f"{target}: {type(exc).__name__}") from None

    def exchange(self, tenant: str, method: str, url: str, *, allow: AllowList | None, until: float,
                 max_bytes: int, headers: Iterable[tuple[str, str]] = (), body: bytes | None = None) -> Reply:
        """One whole exchange: at most ``max_bytes`` of decoded body, all of it by ``until``."""
        with self.stream(tenant, method, url, allow=allow, until=until, headers=headers, body=body) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise EgressTooLarge(f"the response exceeds {max_bytes} bytes", limit=max_bytes)
                chunks.append(chunk)
            # The body is handed over decoded, so its encoding and length headers no longer apply.
            kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
                    if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
            return Reply(response.status_code, kept, b"".join(chunks))


#: Headers the caller does not choose: the client sets them for the connection it makes.
_HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade",
                          "proxy-connection", "proxy-authorization", "te", "trailer"})


__all__ = ["DEFAULT_PORTS", "FIELD_NAME", "FIELD_VALUE", "AddressPolicy", "AllowList", "Egress", "HostPattern",
           "Reply", "Target", "deadline", "mcp_http_client", "normalise_host", "parse_networks", "system_resolver"]
