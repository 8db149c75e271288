"""Repository import over smart HTTP, through the node's egress policy.

dulwich speaks the Git protocol; every HTTP exchange it asks for goes through
``edgenode.egress``: public addresses only (unless the operator allows a network),
connected by the checked address, redirects followed here and each hop checked
like the first, one deadline and one size bound for the whole import. Only smart
HTTP is spoken (a server answering with anything but a Git content type is not a
Git server), ``git://`` is refused (raw TCP to any port), and failures are
described by kind, never by the bytes a server sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx
from dulwich.client import AbstractHttpGitClient, HTTPUnauthorized
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository

from edgenode.egress import Egress, Target
from edgenode.errors import EgressError, ImportFailed, ValidationFailed

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Refused(GitProtocolError):
    """A protocol failure whose message is ours, safe to show."""


class _Response:
    """What dulwich reads of a response: status, headers, content type, where a redirect led."""

    def __init__(self, response: httpx.Response, stack: ExitStack, redirect_location: str, budget: _Budget) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.content_type = response.headers.get("content-type")
        self.redirect_location = redirect_location
        self._chunks = response.iter_bytes()
        self._buffer = b""
        self._stack = stack
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative)."""
        try:
            while size < 0 or len(self._buffer) < size:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._budget.spend(len(chunk))
                self._buffer += chunk
        except httpx.TimeoutException:
            raise ImportFailed("the import did not finish in time") from None
        except httpx.HTTPError as exc:
            raise ImportFailed(f"the connection broke during the import ({type(exc).__name__})") from None
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        """End the exchange."""
        self._stack.close()


class _Budget:
    """Bytes an import may still download."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        #: Told the bytes received so far after each read (a job's progress), if set.
        self.progress: Callable[[int], None] | None = None

    def spend(self, count: int) -> None:
        self.left -= count
        if self.progress is not None:
            self.progress(self.limit - self.left)
        if self.left < 0:
            raise ImportFailed(f"the repository is larger than {self.limit} bytes", limit=self.limit)


class PolicyGitClient(AbstractHttpGitClient):
    """dulwich's smart-HTTP client with every exchange made by ``Egress``."""

    def __init__(self, base_url: str, *, egress: Egress, tenant: str, until: float, max_redirects: int,
                 max_bytes: int, username: str | None = None, password: str | None = None) -> None:
        super().__init__(base_url, dumb=False, username=username, password=password)
        self.egress = egress
        self.tenant = tenant
        self.until = until
        self.max_redirects = max_redirects
        self.budget = _Budget(max_bytes)
        self.origin = _origin(base_url)
        self.open: list[_Response] = []

    def _http_request(self, url: str, headers: dict[str, str] | None = None,
                      data: bytes | Iterator[bytes] | None = None,
                      raise_for_status: bool = True) -> tuple[Any, Callable[[int], bytes]]:
        sent = dict(headers or {})
        sent["Pragma"] = "no-cache"
        current = url
        for _ in range(self.max_redirects + 1):
            hop = dict(sent)
            # Credentials go only to the origin they were given for, never to where a redirect leads.
            if self._username is not None and _origin(current) == self.origin:
                pair = f"{self._username}:{self._password or ''}".encode()
                hop["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            stack = ExitStack()
            response = stack.enter_context(self.egress.stream(
                self.tenant, "GET" if data is None else "POST", current, allow=None, until=self.until,
                headers=hop.items(), body=data))
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                break
            stack.close()
            if data is not None:
                raise ImportFailed("the server redirected a Git request with a body; only info/refs may redirect")
            current = urljoin(current, location)
        else:
            raise ImportFailed(f"more than {self.max_redirects} redirects")
        wrapped = _Response(response, stack, current if current != url else "", self.budget)
        self.open.append(wrapped)
        if raise_for_status and wrapped.status != 200:
            wrapped.close()
            if wrapped.status == 404:
                raise NotGitRepository()
            if wrapped.status == 401:
                raise HTTPUnauthorized(None, url)
            raise _Refused(f"unexpected HTTP status {wrapped.status}")
        if not (wrapped.content_type or "").startswith("application/x-git-"):
            wrapped.close()
            raise _Refused("not a smart Git HTTP server")
        return wrapped, wrapped.read

    def close_all(self) -> None:
        """Close every exchange still open."""
        for response in self.open:
            response.close()


def client_for(url: str, *, egress: Egress, tenant: str, until: float, max_redirects: int,
               max_bytes: int) -> tuple[PolicyGitClient, str]:
    """A client for the repository at ``url`` and the path to fetch; 400 for what is not http(s)."""
    if url.startswith("git://"):
        raise ValidationFailed("git:// imports are not supported (raw TCP to any port); use an http(s):// URL",
                               field="url")
    parts = urlsplit(url)
    try:
        bare = urlunsplit((parts.scheme, _netloc(parts.hostname or "", parts.port), parts.path, parts.query, ""))
        Target.of(bare)
    except (ValueError, EgressError) as exc:
        raise ValidationFailed(f"url must be an http(s):// Git URL ({exc})", field="url") from None
    base = urlunsplit((parts.scheme, _netloc(parts.hostname or "", parts.port), "/", "", ""))
    client = PolicyGitClient(
        base, egress=egress, tenant=tenant, until=until, max_redirects=max_redirects, max_bytes=max_bytes,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None)
    return client, parts.path or "/"


def describe(exc: BaseException) -> str:
    """Why an import failed, in words of our own (a server's bytes are never echoed)."""
    if isinstance(exc, (EgressError, ImportFailed)):
        return exc.message
    if isinstance(exc, NotGitRepository):
        return "no Git repository there"
    if isinstance(exc, HTTPUnauthorized):
        return "the server wants credentials"
    if isinstance(exc, HangupException):
        return "the server hung up"
    if isinstance(exc, _Refused):
        return str(exc)
    return f"the server's answer is not a Git repository we can read ({type(exc).__name__})"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


__all__ = ["PolicyGitClient", "client_for", "describe"]
