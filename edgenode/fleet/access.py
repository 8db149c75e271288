"""Tenants, tokens and repository tokens as control records: hashes only, revocations that stick.

A token record carries the token's SHA-256, never the token. Revocation is monotone: publishing
over a record that is revoked keeps it revoked, and applying keeps the earliest revocation time,
so no order of delivery brings a revoked token back. A deleted tenant's tokens are deleted with
it (the tenant's own purge on every node) and never re-created by a late token record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edgenode.errors import NotFound
from edgenode.fleet.control import Record

if TYPE_CHECKING:
    from edgenode.artifacts.tokens import RepoTokens
    from edgenode.auth import Auth
    from edgenode.fleet.control import ControlPlane

TOKEN_FIELDS = ("id", "tenant", "name", "hash", "admin", "created_at", "expires_at", "revoked_at")
REPO_TOKEN_FIELDS = ("id", "tenant", "repo", "hash", "access", "created_at", "expires_at", "revoked_at")


def keep_revoked(current: Record | None, new: Record | None) -> Record | None:
    """``new``, but revoked if ``current`` was (at the earlier of the two times)."""
    if new is None or current is None or current.get("revoked_at") is None:
        return new
    revoked = [t for t in (current.get("revoked_at"), new.get("revoked_at")) if t is not None]
    return {**new, "revoked_at": min(revoked)}


class Tenants:
    """Tenant records; a deletion runs the node's whole tenant purge (workers, agents, repos, state, tokens)."""

    name = "tenant"

    def __init__(self, auth: Auth, purge: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.auth = auth
        self._purge = purge or auth.delete_tenant

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        row = await self.auth.db.read(lambda c: c.execute(
            "SELECT name, created_at FROM tenants WHERE name = ?", (parts[0],)).fetchone())
        return dict(row) if row is not None else None

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        (name,) = parts
        if record is None:
            if await self.auth.tenant_exists(name):
                try:
                    await self._purge(name)
                except NotFound:
                    pass  # purged meanwhile
            return
        created_at = float(record["created_at"])
        await self.auth.db.write(lambda c: c.execute(
            "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (name, created_at)))

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.auth.db.read(lambda c: [(r[0],) for r in c.execute("SELECT name FROM tenants")])

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


class Tokens:
    """Bearer token records (hash, tenant, expiry, revocation) in the node database."""

    name = "token"

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.control: ControlPlane | None = None

    def bind(self, control: ControlPlane) -> None:
        """Learn of the control plane (to tell a deleted tenant from one not heard of yet)."""
        self.control = control

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        row = await self.auth.db.read(lambda c: c.execute(
            f"SELECT {', '.join(TOKEN_FIELDS)} FROM tokens WHERE id = ?", (parts[0],)).fetchone())
        return dict(row) if row is not None else None

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        (token_id,) = parts
        if record is None:
            await self.auth.db.write(lambda c: c.execute("DELETE FROM tokens WHERE id = ?", (token_id,)))
            self.auth.forget_lookups()
            return
        tenant = str(record["tenant"])
        if self.control is not None and await self.control.deleted(f"tenant.{tenant}"):
            return  # its tenant is gone; a late record must not bring it back
        values = _values(record, TOKEN_FIELDS, token_id)

        def upsert(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, values[5]))
            c.execute(
                f"INSERT INTO tokens ({', '.join(TOKEN_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET revoked_at = CASE WHEN tokens.revoked_at IS NULL"
                " THEN excluded.revoked_at WHEN excluded.revoked_at IS NULL THEN tokens.revoked_at"
                " ELSE MIN(tokens.revoked_at, excluded.revoked_at) END", values)

        await self.auth.db.write(upsert)
        if record.get("revoked_at") is not None:
            self.auth.forget_lookups()  # revoked elsewhere: in effect here from the next request

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.auth.db.read(lambda c: [(r[0],) for r in c.execute("SELECT id FROM tokens")])

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return keep_revoked(current, new)


class RepoTokenRecords:
    """Repository token records (hash, repository, access, expiry, revocation) in the artifacts database."""

    name = "repotoken"

    def __init__(self, tokens: RepoTokens) -> None:
        self.tokens = tokens

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        row = await self.tokens.db.read(lambda c: c.execute(
            f"SELECT {', '.join(REPO_TOKEN_FIELDS)} FROM repo_tokens WHERE id = ?", (parts[0],)).fetchone())
        return dict(row) if row is not None else None

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        (token_id,) = parts
        if record is None:
            await self.tokens.db.write(lambda c: c.execute("DELETE FROM repo_tokens WHERE id = ?", (token_id,)))
            return
        values = _values(record, REPO_TOKEN_FIELDS, token_id)
        await self.tokens.db.write(lambda c: c.execute(
            f"INSERT INTO repo_tokens ({', '.join(REPO_TOKEN_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET revoked_at = CASE WHEN repo_tokens.revoked_at IS NULL"
            " THEN excluded.revoked_at WHEN excluded.revoked_at IS NULL THEN repo_tokens.revoked_at"
            " ELSE MIN(repo_tokens.revoked_at, excluded.revoked_at) END", values))

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.tokens.db.read(lambda c: [(r[0],) for r in c.execute("SELECT id FROM repo_tokens")])

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return keep_revoked(current, new)


def _values(record: Record, fields: tuple[str, ...], token_id: str) -> tuple[Any, ...]:
    if record.get("id") != token_id:
        raise ValueError("a token record names another token")
    return tuple(record.get(f) for f in fields)


__all__ = ["RepoTokenRecords", "Tenants", "Tokens", "keep_revoked"]
