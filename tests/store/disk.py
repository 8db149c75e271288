"""A small real disk for disk-full tests: a tmpfs mounted for the test (skipped where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` tmpfs at ``where`` for the block; skip the test if this process may not mount."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, *, leave_bytes: int = 0) -> int:
    """Grow ``path`` until the disk has at most ``leave_bytes`` free; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (free := free_bytes(path.parent)) > leave_bytes:
            try:
                written += os.write(fd, b"\0" * max(4096, min(1 << 20, free - leave_bytes)))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return written
