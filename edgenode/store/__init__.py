"""Local SQLite storage: one writer thread per database, readers apart, named migrations, disk faults named."""

from __future__ import annotations

from edgenode.store.db import Database, Migration, connect, run_blocking
from edgenode.store.faults import storage_fault
from edgenode.store.health import StoreMonitor
from edgenode.store.ledger import DatabaseLedger

__all__ = ["Database", "DatabaseLedger", "Migration", "StoreMonitor", "connect", "run_blocking", "storage_fault"]
