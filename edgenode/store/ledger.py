"""Which databases a node has created, and the check that refuses to start on a lost or damaged one.

The node records every database it has created in its identity file
(``DATA/identity.json``). At start, each recorded database must exist, be
non-empty, still have its write-ahead log if it was not closed cleanly, and pass
``PRAGMA quick_check``; otherwise the node refuses to start and says which file
and how to restore it, instead of silently migrating an empty file into a new
database. The operator may accept a fresh one knowingly (``--accept-fresh-db``):
a damaged file is then moved aside, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgenode.errors import DatabaseRefused

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
#: Offset of ``mxFrame`` (frames in the log) in the header of SQLite's ``-shm`` index.
_SHM_MAX_FRAME = 16


def wal_lost(path: Path) -> bool:
    """Whether ``path`` was not closed cleanly and its ``-wal`` file, holding committed frames, is gone.

    A clean close removes both ``-wal`` and ``-shm``; after a crash both stay. A ``-shm`` whose
    index counts frames, beside no ``-wal``, means commits that only the log held are lost.
    Must run before any connection opens the file (opening rebuilds the index).
    """
    shm = path.with_name(path.name + "-shm")
    wal = path.with_name(path.name + "-wal")
    if wal.exists() or not shm.exists():
        return False
    try:
        with open(shm, "rb") as f:
            head = f.read(_SHM_MAX_FRAME + 4)
    except OSError:
        return False
    if len(head) < _SHM_MAX_FRAME + 4:
        return False
    return bool(struct.unpack_from("=I", head, _SHM_MAX_FRAME)[0])


def inspect(path: Path) -> str | None:
    """What is wrong with the existing database file ``path`` (empty, lost log, failed check), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size == 0:
        return "is empty (0 bytes)"
    if wal_lost(path):
        return "lost its write-ahead log (the -wal file was deleted after a crash; commits it held are gone)"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot be read as a SQLite database ({exc})"
    if rows != ["ok"]:
        return "fails PRAGMA quick_check: " + "; ".join(str(r) for r in rows)[:500]
    return None


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` (and its -wal and -shm) to ``NAME.damaged-<time>``; returns the new name, if any."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(target.with_name(target.name + suffix))
    return target


def restore_command(data_dir: Path, name: str) -> str:
    """How an operator puts one database file back, from a backup or from a replica, while the node is stopped."""
    return (f"`edgenode restore BACKUP {data_dir} --only {name}` puts it back from a backup made by edgenode "
            f"backup (the file in place is moved aside), or `edgenode restore --timestamp TIME REPLICA {data_dir} "
            f"--force --only {name}` from the node's replica (store.replica_url)")


class DatabaseLedger:
    """The databases recorded in the node's identity file, checked at start."""

    def __init__(self, data_dir: Path, node_id: str, *, accept_fresh: Iterable[str] = ()) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.accept_fresh = set(accept_fresh)
        self._accepted: set[str] = set()
        self.path = data_dir / IDENTITY_FILE
        self._data = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DatabaseRefused(
                f"edgenode will not start: its identity file {self.path} cannot be read ({exc}). It lists the "
                "databases this node created, so that a lost one is noticed. Restore it from a backup, or move "
                "it away to have the node record its databases afresh.", path=str(self.path), reason=str(exc),
            ) from exc
        return data if isinstance(data, dict) else {}

    @property
    def adopted(self) -> bool:
        """Whether the identity file existed already (a data directory older than the ledger has none)."""
        return "databases" in self._data

    def recorded(self) -> set[str]:
        """Names of the databases this node has created."""
        dbs = self._data.get("databases")
        return set(dbs) if isinstance(dbs, dict) else set()

    def check(self, names: Iterable[str], purposes: dict[str, str] | None = None) -> None:
        """Refuse (DatabaseRefused) to go on if a recorded database is lost or any existing one is damaged."""
        known = self.recorded()
        for name in names:
            path = self.data_dir / name
            if name in self._accepted or (not path.exists() and name not in known):
                continue  # never created (it will be now), or already started afresh
            if name not in known and self.adopted and path.stat().st_size == 0:
                continue  # created by an interrupted first start, before it could be recorded
            problem = inspect(path)
            if problem is None:
                continue
            if name in self.accept_fresh:
                self._accepted.add(name)
                moved = move_aside(path)
                log.warning("starting with a fresh, empty database as the operator asked",
                            extra={"db": str(path), "problem": problem, "moved_to": str(moved) if moved else None})
                continue
            what = (purposes or {}).get(name, "database")
            raise DatabaseRefused(
                f"edgenode will not start: its {what} {path} {problem}. Starting with a new, empty one would "
                f"silently lose what it held. Stop here and restore the file: {restore_command(self.data_dir, name)}"
                f"; or, to start with an empty {name} knowingly, run the node once with --accept-fresh-db {name} "
                f"(or EDGENODE_STORE_ACCEPT_FRESH_DB={name}); a damaged file is then moved aside as "
                f"{name}.damaged-<time>, not deleted.", path=str(path), reason=problem,
            )

    def record(self, names: Iterable[str]) -> None:
        """Add databases that now exist to the identity file (written atomically)."""
        dbs = self._data.get("databases")
        if not isinstance(dbs, dict):
            dbs = {}
        added = [n for n in names if n not in dbs and (self.data_dir / n).exists()]
        if not added and self.adopted:
            return
        for name in added:
            dbs[name] = {"recorded_at": round(time.time(), 3)}
        data = {**self._data, "node": self.node_id, "databases": dbs}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot record the node's databases", extra={"path": str(self.path), "error": str(exc)})
            return
        self._data = data
