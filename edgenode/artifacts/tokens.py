"""Repository tokens: per repository, read or write, with a time to live, revocable.

A token looks like ``edr_<id>_<secret>``; only its SHA-256 is stored. Git clients send it
as the password of HTTP basic auth (any user name).
"""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgenode.auth.tokens import hash_token
from edgenode.errors import ArtifactNotFound, TokenExpired, TokenRevoked, Unauthorized, ValidationFailed
from edgenode.fleet.changes import ChangeFeed
from edgenode.store import Database

_TOKEN = re.compile(r"^edr_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})\Z")
ACCESS = ("read", "write")


@dataclass(frozen=True)
class RepoToken:
    """A freshly issued repository token; ``token`` is shown once."""

    id: str
    access: str
    created_at: float
    expires_at: float
    token: str


def looks_like_repo_token(value: str) -> bool:
    """Whether ``value`` has the shape of a repository token."""
    return _TOKEN.match(value) is not None


class RepoTokens:
    """Issues, checks, lists and revokes repository tokens."""

    def __init__(self, db: Database, *, max_ttl_s: float, now: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_ttl_s = max_ttl_s
        self._now = now
        #: Told of every token issued or revoked (the fleet control plane listens).
        self.changes = ChangeFeed()

    async def issue(self, tenant: str, repo: str, access: str, ttl_s: float) -> RepoToken:
        """A new token for ``tenant/repo``."""
        if access not in ACCESS:
            raise ValidationFailed("access must be 'read' or 'write'", field="access")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= self.max_ttl_s:
            raise ValidationFailed(f"ttl_s must be between 0 and {self.max_ttl_s:g} seconds", field="ttl_s")
        token_id = secrets.token_hex(8)
        token = f"edr_{token_id}_{secrets.token_urlsafe(32)}"
        now = self._now()
        expires = now + float(ttl_s)

        def insert(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO repo_tokens (id, tenant, repo, hash, access, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, tenant, repo, hash_token(token), access, now, expires),
            )

        await self.db.write(insert)
        await self.changes.emit("repotoken", token_id)
        return RepoToken(token_id, access, now, expires, token)

    def check_sync(self, tenant: str, repo: str, token: str) -> tuple[str, str]:
        """(token id, access) for a live token of ``tenant/repo``; Unauthorized otherwise."""
        match = _TOKEN.match(token)
        if match is None:
            raise Unauthorized("invalid repository token")
        row = self.db.read_sync(
            lambda c: c.execute(
                "SELECT tenant, repo, hash, access, expires_at, revoked_at FROM repo_tokens WHERE id = ?",
                (match.group(1),),
            ).fetchone()
        )
        if (
            row is None
            or not hmac.compare_digest(row["hash"], hash_token(token))
            or row["tenant"] != tenant
            or row["repo"] != repo
        ):
            raise Unauthorized("invalid repository token")
        if row["revoked_at"] is not None:
            raise TokenRevoked("this repository token has been revoked")
        if row["expires_at"] <= self._now():
            raise TokenExpired("this repository token has expired")
        return match.group(1), row["access"]

    async def list(self, tenant: str, repo: str) -> list[dict[str, Any]]:
        """Tokens of a repository (never their secrets), newest first."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT id, access, created_at, expires_at, revoked_at, last_used_at FROM repo_tokens"
                " WHERE tenant = ? AND repo = ? ORDER BY created_at DESC",
                (tenant, repo),
            ).fetchall()
        )
        now = self._now()
        out = []
        for r in rows:
            item = dict(r)
            item["state"] = "revoked" if r["revoked_at"] else "expired" if r["expires_at"] <= now else "live"
            out.append(item)
        return out

    async def revoke(self, tenant: str, repo: str, token_id: str) -> None:
        """Revoke one token of a repository; it stops working at once."""
        now = self._now()

        def revoke(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE repo_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND tenant = ? AND repo = ?",
                (now, token_id, tenant, repo),
            ).rowcount

        if await self.db.write(revoke) == 0:
            raise ArtifactNotFound(f"no token {token_id!r} for this repository", token=token_id)
        await self.changes.emit("repotoken", token_id)
