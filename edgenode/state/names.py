"""Names in the state capability: namespaces, keys, node ids, and where namespace files live."""

from __future__ import annotations

import re
from pathlib import Path

from edgenode.auth import validate_tenant
from edgenode.errors import ValidationFailed

NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ORIGIN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def validate_namespace(name: object) -> str:
    """``name`` if it is a valid namespace, else ValidationFailed (400)."""
    if not isinstance(name, str) or not NAMESPACE.match(name):
        raise ValidationFailed(
            "namespace must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}", field="namespace", namespace=str(name)[:200]
        )
    return name


def validate_key(key: object, max_bytes: int) -> str:
    """``key`` if it is a non-empty string of at most ``max_bytes`` UTF-8 bytes without NUL."""
    if not isinstance(key, str) or not key:
        raise ValidationFailed("key must be a non-empty string", field="key")
    if "\x00" in key:
        raise ValidationFailed("key must not contain NUL", field="key")
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValidationFailed(f"key is longer than {max_bytes} bytes", field="key", limit=max_bytes)
    return key


def namespace_path(root: Path, tenant: str, namespace: str) -> Path:
    """The SQLite file of ``tenant``'s ``namespace`` (names are validated, so this stays under root)."""
    validate_tenant(tenant)
    validate_namespace(namespace)
    return root / tenant / f"{namespace}.db"
