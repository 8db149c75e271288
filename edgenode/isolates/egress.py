"""Outbound HTTP allow-lists: ``scheme://host:port`` patterns with wildcard subdomains.

An entry is ``host``, ``host:port``, ``scheme://host`` or ``scheme://host:port``.
``*.example.com`` matches every subdomain of example.com (not example.com itself);
``*`` as the host or the port matches any. Without a scheme, http and https are
allowed; without a port, only the scheme's default port is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgenode.errors import ValidationFailed

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])$")


@dataclass(frozen=True)
class HostPattern:
    """One allow-list entry."""

    schemes: tuple[str, ...]
    host: str
    port: int | None  # None: the scheme's default port; -1: any port

    @classmethod
    def parse(cls, entry: str) -> HostPattern:
        """Parse an entry; raises ValidationFailed naming it when malformed."""
        text = entry.strip().lower()
        schemes: tuple[str, ...] = ("http", "https")
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme == "*":
                pass
            elif scheme in _DEFAULT_PORTS:
                schemes = (scheme,)
            else:
                raise ValidationFailed(f"allowed host {entry!r}: scheme must be http or https", field="allowed_hosts")
        text = text.rstrip("/")
        port: int | None = None
        host = text
        if text.startswith("["):
            close = text.find("]")
            host, rest = text[: close + 1], text[close + 1:]
            if rest:
                port = cls._port(rest.removeprefix(":"), entry)
        elif ":" in text:
            host, _, raw = text.rpartition(":")
            port = cls._port(raw, entry)
        if not _HOST.match(host):
            raise ValidationFailed(f"allowed host {entry!r} is not a host name or pattern", field="allowed_hosts")
        return cls(schemes, host, port)

    @staticmethod
    def _port(raw: str, entry: str) -> int:
        if raw == "*":
            return -1
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValidationFailed(f"allowed host {entry!r} has a bad port", field="allowed_hosts")
        return int(raw)

    def matches(self, scheme: str, host: str, port: int) -> bool:
        """Whether a request to ``scheme://host:port`` is allowed by this entry."""
        if scheme not in self.schemes:
            return False
        if self.port == -1:
            pass
        elif self.port is None:
            if port != _DEFAULT_PORTS[scheme]:
                return False
        elif port != self.port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


@dataclass(frozen=True)
class AllowList:
    """The hosts a deployment may reach; empty allows none."""

    patterns: tuple[HostPattern, ...] = ()

    @classmethod
    def parse(cls, entries: object, *, max_entries: int = 100) -> AllowList:
        """Parse a JSON list of entries."""
        if entries is None:
            return cls()
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValidationFailed("allowed_hosts must be a list of strings", field="allowed_hosts")
        if len(entries) > max_entries:
            raise ValidationFailed(f"at most {max_entries} allowed hosts", field="allowed_hosts")
        return cls(tuple(HostPattern.parse(e) for e in entries))

    def check(self, url: str) -> str | None:
        """None if ``url`` may be fetched, else the reason it may not."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"bad URL: {exc}"
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            return f"only http and https URLs can be fetched, not {scheme or 'a relative URL'!r}"
        host = (parts.hostname or "").lower()
        if not host:
            return "the URL has no host"
        if parts.username or parts.password:
            return "URLs with credentials are not allowed"
        if ":" in host:
            host = f"[{host}]"
        port = port if port is not None else _DEFAULT_PORTS[scheme]
        if any(p.matches(scheme, host, port) for p in self.patterns):
            return None
        return f"{scheme}://{host}:{port} is not in this deployment's allowed_hosts"
