"""Memoised answers to clone requests: the response to a fetch without haves, kept on disk.

The answer to an upload-pack request that sends no ``have``, ``shallow``, ``deepen`` or
``filter`` lines depends only on the request bytes and on the objects reachable from its
wants, which never change. Keying on the request and on a digest of the repository's refs
(so every want was validated against the same advertisement) makes a cached answer exactly
what dulwich would write again; a warm clone then streams a file instead of counting and
compressing every object. Git forges cache pack-objects output the same way.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

_UNCACHEABLE = (b"have ", b"shallow ", b"deepen", b"filter ")


def refs_digest(refs: Mapping[Any, bytes], head: bytes | None) -> bytes:
    """A digest of every ref and HEAD's target."""
    h = hashlib.sha256(head or b"")
    for name in sorted(refs):
        h.update(b"\0" + name + b" " + refs[name])
    return h.digest()


class PackCache:
    """A size-bounded directory of cached upload-pack responses."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def key(self, repo_path: str, body: bytes, digest: bytes) -> str | None:
        """The cache key of a request, or None when its answer depends on the client's state."""
        if self.max_bytes <= 0 or any(token in body for token in _UNCACHEABLE):
            return None
        h = hashlib.sha256(repo_path.encode() + b"\0" + digest + b"\0" + body)
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """Where the answer for ``key`` lives."""
        return self.root / key[:2] / f"{key}.bin"

    def open(self, key: str) -> IO[bytes] | None:
        """The cached answer, or None."""
        try:
            f = open(self.path(key), "rb")
        except FileNotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        os.utime(self.path(key))  # recently used: evicted last
        return f

    def writer(self, key: str) -> _Entry:
        """A file to tee a fresh answer into; ``commit()`` publishes it, ``abort()`` drops it."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return _Entry(self, target)

    def _evict(self) -> None:
        with self._lock:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self._entries()]
            total = sum(size for _, size, _ in files)
            for _, size, p in sorted(files):
                if total <= self.max_bytes:
                    break
                p.unlink(missing_ok=True)
                total -= size

    def _entries(self) -> Iterator[Path]:
        if self.root.exists():
            yield from self.root.glob("*/*.bin")


class _Entry:
    def __init__(self, cache: PackCache, target: Path) -> None:
        self.cache = cache
        self.target = target
        self.tmp = target.with_suffix(f".tmp{threading.get_ident()}")
        self.file: IO[bytes] | None = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)

    def commit(self) -> None:
        if self.file is None:
            return
        self.file.close()
        self.file = None
        os.replace(self.tmp, self.target)
        self.cache._evict()

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tmp.unlink(missing_ok=True)
