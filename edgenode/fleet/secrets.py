"""Tenant secrets as control records, sealed with a key derived from the fleet secret.

The bucket holds AES-256-GCM ciphertext only; the key is HKDF-SHA256 of the fleet secret with a
purpose of its own, so it is never the secret that signs records, and each ciphertext is bound to
its record's key (as associated data), so a sealed value cannot be moved to another tenant's name.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgenode.fleet.control import Record

if TYPE_CHECKING:
    from edgenode.agents import Agents

SEAL_VERSION = "v1"


class SecretBox:
    """Seals and opens values with the fleet's secret-sealing key."""

    def __init__(self, fleet_secret: bytes, *, purpose: bytes = b"edgenode-tenant-secrets-v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"edgenode-fleet", info=purpose).derive(fleet_secret)
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> str:
        """``v1.<nonce>.<ciphertext>`` (URL-safe base64) of ``plaintext``, bound to ``context``."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return ".".join([SEAL_VERSION, _b64(nonce), _b64(sealed)])

    def open(self, sealed: str, context: str) -> str:
        """The plaintext of :meth:`seal`'s output; ValueError when it is not this fleet's, or not for ``context``."""
        try:
            version, nonce, body = sealed.split(".")
            if version != SEAL_VERSION:
                raise ValueError(f"unknown sealing version {version!r}")
            return self._aead.decrypt(_unb64(nonce), _unb64(body), context.encode()).decode()
        except (InvalidTag, ValueError, AttributeError) as exc:
            raise ValueError(f"a sealed value does not open: {exc or 'wrong key or context'}") from None


class TenantSecrets:
    """The agents' tenant secrets (model keys and the like), sealed in the bucket."""

    name = "secret"

    def __init__(self, agents: Agents, box: SecretBox) -> None:
        self.agents = agents
        self.box = box

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        tenant, name = parts
        row = await self.agents.db.read(lambda c: c.execute(
            "SELECT value, updated_at FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)).fetchone())
        if row is None:
            return None
        return {"tenant": tenant, "name": name, "updated_at": row["updated_at"],
                "sealed": self.box.seal(row["value"], f"secret.{tenant}.{name}")}

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        tenant, name = parts
        if record is None:
            await self.agents.db.write(lambda c: c.execute(
                "DELETE FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)))
            return
        value = self.box.open(str(record["sealed"]), f"secret.{tenant}.{name}")
        updated_at = float(record["updated_at"])
        await self.agents.db.write(lambda c: c.execute(
            "INSERT INTO secrets (tenant, name, value, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, name)"
            " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (tenant, name, value, updated_at)))

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.agents.db.read(lambda c: [(r[0], r[1]) for r in c.execute(
            "SELECT tenant, name FROM secrets")])

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["SecretBox", "TenantSecrets"]
