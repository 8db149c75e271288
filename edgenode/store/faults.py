"""Disk faults as first-class errors: a full disk, an I/O error or a damaged file, named with its purpose.

SQLite reports a full disk as ``SQLITE_FULL`` and a failed read, write or sync as
one of the ``SQLITE_IOERR`` family (growing the shared-memory index on a full
disk is ``SQLITE_IOERR_SHMSIZE``); plain file writes raise ``OSError`` with
``ENOSPC``, ``EDQUOT`` or ``EIO``. :func:`storage_fault` turns any of them into
the error a client should see, or returns None for every other failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from edgenode.errors import DatabaseDamaged, EdgenodeError, InsufficientStorage, StorageIOFailed

SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_IOERR = 10
SQLITE_NOTADB = 26
#: An I/O error with less free space than this is a full disk in disguise.
NEARLY_FULL_BYTES = 1 << 20


def free_bytes(path: Path | str) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    target = Path(path)
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        st = os.statvfs(target)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _human(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1 << 20 else f"{n // 1024} KiB"


def insufficient(path: Path | str, purpose: str, **details: object) -> InsufficientStorage:
    """The 507 for a write of ``purpose`` under ``path`` that found no room."""
    free = free_bytes(path)
    return InsufficientStorage(f"no space left on the disk holding the {purpose} ({_human(free)} free); "
                               "nothing was written", purpose=purpose, free_bytes=free, **details)


def storage_fault(exc: BaseException, path: Path | str, purpose: str, *, database: str | None = None
                  ) -> EdgenodeError | None:
    """The client-facing error for a disk fault behind ``exc``, or None if ``exc`` is something else."""
    extra: dict[str, Any] = {"database": database} if database else {}
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code == SQLITE_FULL or (code == SQLITE_IOERR and free_bytes(path) < NEARLY_FULL_BYTES):
            return insufficient(path, purpose, **extra)
        if code == SQLITE_IOERR:
            return StorageIOFailed(f"the disk failed a read or write of the {purpose}: {exc}", purpose=purpose,
                                   **extra)
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            name = database or Path(path).name
            return DatabaseDamaged(f"the {purpose} ({name}) is damaged: {exc}; restore it from a backup",
                                   database=name, reason=str(exc))
        return None
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return insufficient(path, purpose, **extra)
        if exc.errno == errno.EIO:
            return StorageIOFailed(f"the disk failed a read or write of the {purpose}: {exc.strerror}",
                                   purpose=purpose, **extra)
    return None


def nearly_full(path: Path | str) -> bool:
    """Whether the disk holding ``path`` has under :data:`NEARLY_FULL_BYTES` free (an error there is likely ENOSPC)."""
    return free_bytes(path) < NEARLY_FULL_BYTES


def write_atomic(path: Path, data: bytes | bytearray | str, purpose: str) -> None:
    """Write ``data`` to ``path`` through a staged file renamed into place.

    On a disk fault the staged file is removed (a full disk keeps no half-written leftovers) and the
    fault is raised as its client-facing error (507, or 503 for an I/O error).
    """
    staged = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        if isinstance(data, str):
            staged.write_text(data)
        else:
            staged.write_bytes(data)
        os.replace(staged, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise (storage_fault(exc, path.parent, purpose) or exc) from exc
