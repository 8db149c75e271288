"""Local SQLite storage: one writer thread per database, readers apart, named migrations."""

from __future__ import annotations

from edgenode.store.db import Database, Migration, connect

__all__ = ["Database", "Migration", "connect"]
