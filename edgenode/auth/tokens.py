"""Tenants and bearer tokens.

A token looks like ``edn_<id>_<secret>``. Only its SHA-256 is stored (tokens are
random, so a slow hash buys nothing); the id lets a lookup tell an unknown token
from a revoked or expired one. Every token belongs to one tenant; an admin token
may also manage tenants and tokens and act for any tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgenode.errors import Forbidden, NotFound, TokenExpired, TokenRevoked, Unauthorized, ValidationFailed
from edgenode.fleet.changes import ChangeFeed
from edgenode.store import Database, Migration

#: The tenant the bootstrap admin token acts for unless it names another.
DEFAULT_TENANT = "default"

#: The longest time to live a token may ask for (ten years, in seconds); without one it never expires.
MAX_TOKEN_TTL_S = 10 * 365 * 86_400

#: How long a token's row, once read, answers lookups without reading the node database again.
#: A revocation made on this node takes effect at once; one that arrives by other means (a
#: replicated row) within this time.
LOOKUP_CACHE_S = 1.0
#: Token rows kept for lookups without I/O (the most recently used).
LOOKUP_CACHE_SIZE = 10_000

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
#: A token's name, a label for people: no control characters, which lists and terminals show as they are.
TOKEN_NAME = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{0,200}\Z")
_TOKEN = re.compile(r"^edn_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})\Z")


def _create_auth_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE tenants (
            name TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
            name TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL
        )"""
    )
    conn.execute("CREATE INDEX tokens_tenant ON tokens(tenant)")


MIGRATIONS = [Migration("auth-0001-tenants-and-tokens", _create_auth_tables)]


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a tenant, and whether it may administer the node."""

    tenant: str
    admin: bool = False
    token_id: str | None = None

    def require_admin(self) -> None:
        """Raise Forbidden unless this principal is an admin."""
        if not self.admin:
            raise Forbidden("this action needs an admin token")

    def acting_for(self, tenant: str | None) -> Principal:
        """The principal for ``tenant``: admins may act for any tenant, others only their own."""
        if tenant is None or tenant == self.tenant:
            return self
        if not self.admin:
            raise Forbidden(f"a token of tenant {self.tenant!r} cannot act for tenant {tenant!r}")
        validate_tenant(tenant)
        return Principal(tenant=tenant, admin=True, token_id=self.token_id)


@dataclass(frozen=True)
class IssuedToken:
    """A freshly created token; ``token`` is shown once and never stored."""

    id: str
    tenant: str
    name: str
    admin: bool
    created_at: float
    expires_at: float | None
    token: str


def validate_tenant(name: str) -> str:
    """Return ``name`` if it is a valid tenant name, else raise ValidationFailed."""
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise ValidationFailed(
            "a tenant name is 1-63 lower-case letters, digits and dashes, starting with a letter or digit",
            field="tenant",
        )
    return name


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    """Creates, checks, lists and revokes tokens; knows the admin token."""

    def __init__(self, db: Database, admin_token: str, *, now: Callable[[], float] = time.time) -> None:
        if not admin_token:
            raise ValueError("an admin token is required")
        self.db = db
        self._admin_hash = hash_token(admin_token)
        self._now = now
        # token hash -> (row, monotonic time read): lets the request path check a token without I/O.
        self._rows: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._rows_lock = threading.Lock()
        #: Told of every tenant and token that changed (the fleet control plane listens).
        self.changes = ChangeFeed()

    # -- checking ----------------------------------------------------------

    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token stands for; raises Unauthorized otherwise.

        May read the node database (call off the event loop, or try :meth:`authenticate_cached`).
        """
        found = self.authenticate_cached(token)
        if found is not None:
            return found
        assert token is not None
        match = _TOKEN.fullmatch(token)
        assert match is not None
        digest = hash_token(token)
        row = self.db.read_sync(
            lambda c: c.execute(
                "SELECT tenant, hash, admin, expires_at, revoked_at FROM tokens WHERE id = ?", (match.group(1),)
            ).fetchone()
        )
        if row is None or not hmac.compare_digest(row["hash"], digest):
            raise Unauthorized("invalid token")
        entry = dict(row)
        with self._rows_lock:
            self._rows[digest] = (entry, time.monotonic())
            self._rows.move_to_end(digest)
            while len(self._rows) > LOOKUP_CACHE_SIZE:
                self._rows.popitem(last=False)
        return self._principal(entry, match.group(1))

    def authenticate_cached(self, token: str | None) -> Principal | None:
        """:meth:`authenticate` without I/O: the principal, an error, or None if the database must be read."""
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal(tenant=DEFAULT_TENANT, admin=True, token_id="admin")
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Unauthorized("invalid token")
        with self._rows_lock:
            cached = self._rows.get(digest)
        if cached is None or time.monotonic() - cached[1] > LOOKUP_CACHE_S:
            return None
        return self._principal(cached[0], match.group(1))

    def _principal(self, row: dict[str, Any], token_id: str) -> Principal:
        if row["revoked_at"] is not None:
            raise TokenRevoked("this token has been revoked")
        if row["expires_at"] is not None and row["expires_at"] <= self._now():
            raise TokenExpired("this token has expired")
        return Principal(tenant=row["tenant"], admin=bool(row["admin"]), token_id=token_id)

    def forget_lookups(self) -> None:
        """Drop every cached token row: the next lookups read the database (after a revocation)."""
        with self._rows_lock:
            self._rows.clear()

    # -- tenants -----------------------------------------------------------

    async def create_tenant(self, name: str) -> dict[str, Any]:
        """Create a tenant; creating one that exists is not an error."""
        validate_tenant(name)
        now = self._now()

        def insert(c: sqlite3.Connection) -> dict[str, Any]:
            c.execute("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (name, now))
            row = c.execute("SELECT name, created_at FROM tenants WHERE name = ?", (name,)).fetchone()
            return dict(row)

        tenant = await self.db.write(insert)
        await self.changes.emit("tenant", name)
        return tenant

    async def list_tenants(self) -> list[dict[str, Any]]:
        """Every tenant with its count of live tokens."""
        now = self._now()
        rows = await self.db.read(
            lambda c: c.execute(
                """SELECT t.name, t.created_at,
                          (SELECT COUNT(*) FROM tokens k WHERE k.tenant = t.name AND k.revoked_at IS NULL
                             AND (k.expires_at IS NULL OR k.expires_at > ?)) AS live_tokens
                   FROM tenants t ORDER BY t.name""",
                (now,),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    async def tenant_exists(self, name: str) -> bool:
        """Whether a tenant of this name exists."""
        validate_tenant(name)
        return bool(await self.db.read(
            lambda c: c.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone()))

    async def revoke_tenant(self, name: str) -> None:
        """Revoke every token of a tenant, effective at once (its record stays)."""
        validate_tenant(name)
        now = self._now()

        def revoke(c: sqlite3.Connection) -> list[str]:
            ids = [r[0] for r in c.execute("SELECT id FROM tokens WHERE tenant = ? AND revoked_at IS NULL", (name,))]
            c.execute("UPDATE tokens SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL", (now, name))
            return ids

        token_ids = await self.db.write(revoke)
        self.forget_lookups()
        for token_id in token_ids:
            await self.changes.emit("token", token_id)

    async def delete_tenant(self, name: str) -> None:
        """Delete a tenant's record and revoke every token of it (its resources are the capabilities' to remove)."""
        validate_tenant(name)
        now = self._now()

        def delete(c: sqlite3.Connection) -> tuple[int, list[str]]:
            ids = [r[0] for r in c.execute("SELECT id FROM tokens WHERE tenant = ?", (name,))]
            c.execute("UPDATE tokens SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL", (now, name))
            return c.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount, ids

        deleted, token_ids = await self.db.write(delete)
        self.forget_lookups()
        if deleted == 0:
            raise NotFound(f"no tenant named {name!r}")
        await self.changes.emit("tenant", name)
        for token_id in token_ids:
            await self.changes.emit("token", token_id)

    # -- tokens ------------------------------------------------------------

    async def create_token(
        self, tenant: str, *, name: str = "", ttl_s: float | None = None, admin: bool = False
    ) -> IssuedToken:
        """Issue a token for ``tenant`` (created if missing), optionally expiring after ``ttl_s``."""
        validate_tenant(tenant)
        if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float))
                                  or not 0 < ttl_s <= MAX_TOKEN_TTL_S):  # NaN fails the comparison too
            raise ValidationFailed(f"ttl_s must be a number of seconds above 0 and at most {MAX_TOKEN_TTL_S}",
                                   field="ttl_s")
        if not isinstance(name, str) or not TOKEN_NAME.match(name):
            raise ValidationFailed("a token name is at most 200 characters, none of them a control character "
                                   "(NUL, newline, escape)", field="name")
        token_id = secrets.token_hex(8)
        token = f"edn_{token_id}_{secrets.token_urlsafe(32)}"
        now = self._now()
        expires_at = now + ttl_s if ttl_s is not None else None

        def insert(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, now))
            c.execute(
                "INSERT INTO tokens (id, tenant, name, hash, admin, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, tenant, name, hash_token(token), int(admin), now, expires_at),
            )

        await self.db.write(insert)
        await self.changes.emit("tenant", tenant)
        await self.changes.emit("token", token_id)
        return IssuedToken(token_id, tenant, name, admin, now, expires_at, token)

    async def list_tokens(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Tokens (never their secrets), newest first, optionally of one tenant."""
        query = "SELECT id, tenant, name, admin, created_at, expires_at, revoked_at FROM tokens"
        params: tuple[Any, ...] = ()
        if tenant is not None:
            query += " WHERE tenant = ?"
            params = (tenant,)
        rows = await self.db.read(lambda c: c.execute(query + " ORDER BY created_at DESC", params).fetchall())
        now = self._now()
        out = []
        for r in rows:
            item = dict(r)
            item["admin"] = bool(item["admin"])
            item["state"] = (
                "revoked"
                if r["revoked_at"] is not None
                else "expired"
                if r["expires_at"] is not None and r["expires_at"] <= now
                else "live"
            )
            out.append(item)
        return out

    async def revoke_token(self, token_id: str, *, tenant: str | None = None) -> None:
        """Revoke a token by id; with ``tenant``, only a token of that tenant."""
        now = self._now()

        def revoke(c: sqlite3.Connection) -> int:
            query = "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
            params: tuple[Any, ...] = (now, token_id)
            if tenant is not None:
                query += " AND tenant = ?"
                params += (tenant,)
            return c.execute(query, params).rowcount

        revoked = await self.db.write(revoke)
        self.forget_lookups()
        if revoked == 0:
            raise NotFound(f"no token with id {token_id!r}")
        await self.changes.emit("token", token_id)
