"""Per-tenant, per-namespace key-value and SQL in SQLite, replicated across the fleet."""

from __future__ import annotations

from edgenode.state.payload import Changes, Row
from edgenode.state.replica import Commit, Limits, NamespaceDatabase, Replica, SqlResult
from edgenode.state.service import State

__all__ = ["Changes", "Commit", "Limits", "NamespaceDatabase", "Replica", "Row", "SqlResult", "State"]
