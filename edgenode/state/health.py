"""Which namespace databases are damaged: checked once per process, marked on disk, refused for writes.

A namespace file is checked before the node first opens it in a process: empty,
a lost write-ahead log (cheap, also at start-up for every namespace), then
``PRAGMA quick_check``. One that fails, or that SQLite reports damaged while in
use, gets a marker file beside it (``NS.db.damaged``, JSON with the reason) so it
stays marked across restarts; its writes are refused with ``namespace_damaged``
and the node keeps serving every other namespace. Restoring the file (or
deleting it and its marker, to start it empty) clears it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from edgenode.errors import NamespaceDamaged
from edgenode.store.ledger import inspect, restore_command, wal_lost

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".damaged"


def marker_path(path: Path) -> Path:
    """The marker file of a namespace database."""
    return path.with_name(path.name + MARKER_SUFFIX)


def _error(namespace: str, path: Path, reason: str) -> NamespaceDamaged:
    data_dir = path.parent.parent.parent
    return NamespaceDamaged(
        f"namespace {namespace} is damaged: its database {path} {reason}. It refuses writes until it is "
        f"restored: stop the node, then {restore_command(data_dir, str(path.relative_to(data_dir)))}; or delete "
        f"the file and its {MARKER_SUFFIX} marker to start the namespace empty (in a fleet, peers then fill it "
        "again).",
        database=f"{path.parent.name}/{path.name}", reason=reason, namespace=namespace,
    )


class NamespaceHealth:
    """Damage checks and markers for the namespace databases of one node."""

    def __init__(self) -> None:
        self._checked: set[Path] = set()
        self._damaged: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def check(self, tenant: str, namespace: str, path: Path, *, full: bool = True) -> NamespaceDamaged | None:
        """The refusal for a damaged namespace, or None; ``full`` adds ``quick_check`` (once per process)."""
        marker = marker_path(path)
        if marker.exists():
            try:
                reason = str(json.loads(marker.read_text()).get("reason", "was marked damaged"))
            except (OSError, ValueError, AttributeError):
                reason = "was marked damaged"
            with self._lock:
                self._damaged[(tenant, namespace)] = reason
            return _error(namespace, path, reason)
        if not path.exists():
            return None
        with self._lock:
            if path in self._checked:
                return None
        problem: str | None
        if full:
            problem = inspect(path)
        elif path.stat().st_size == 0:
            problem = "is empty (0 bytes)"
        elif wal_lost(path):
            problem = "lost its write-ahead log (the -wal file was deleted after a crash; commits it held are gone)"
        else:
            problem = None
        if problem is not None:
            return self.mark(tenant, namespace, path, problem)
        if full:
            with self._lock:
                self._checked.add(path)
        return None

    def mark(self, tenant: str, namespace: str, path: Path, reason: str) -> NamespaceDamaged:
        """Record that a namespace is damaged (marker file and memory); returns its refusal."""
        with self._lock:
            first = (tenant, namespace) not in self._damaged
            self._damaged[(tenant, namespace)] = reason
        if first:
            log.error("namespace database is damaged; refusing its writes",
                      extra={"tenant": tenant, "namespace": namespace, "path": str(path), "reason": reason,
                             "how_to_restore": _error(namespace, path, reason).message})
        try:
            marker_path(path).write_text(json.dumps({"reason": reason, "marked_at": round(time.time(), 3)}) + "\n")
        except OSError as exc:
            log.warning("cannot write the damage marker", extra={"path": str(path), "error": str(exc)})
        return _error(namespace, path, reason)

    def damaged(self) -> list[dict[str, Any]]:
        """Namespaces found damaged in this process."""
        with self._lock:
            return [{"tenant": t, "namespace": ns, "reason": r} for (t, ns), r in sorted(self._damaged.items())]
