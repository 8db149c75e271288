"""Keep the build and compiled-code cache within its size budget.

Python builds (``components/KEY.wasm``) can be rebuilt from the source kept with each
version, and compiled code (``compiled/KEY-ENGINE.cwasm``) can be recompiled, so both
may be evicted; uploaded components live elsewhere (the node's own data) and are never
touched here. Files any deployment of this node references are kept, as are files
younger than ``min_age_s`` (a build or compile may be about to use them). The rest
go oldest first until the cache fits.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """What a prune removed and what is left."""

    removed: int
    freed_bytes: int
    total_bytes: int


def owned_key(owner: str, key: str) -> str:
    """The compiled-code cache's key for ``key`` compiled for ``owner`` (a tenant).

    Per tenant, so a deploy or run that finds compiled code quickly never tells a tenant that
    another one uploaded the same bytes.
    """
    return hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()


def _key(path: Path) -> str:
    return path.stem.split("-", 1)[0]


def prune(cache_dir: Path, *, keep: set[str], max_bytes: int, fingerprint: str, min_age_s: float = 600.0,
          now: float | None = None) -> PruneResult:
    """Delete unreferenced cache files, oldest first, until the cache is at most ``max_bytes``.

    Compiled code made by another wasmtime or engine configuration (another ``fingerprint``)
    is useless to this node and goes first, whatever its size budget.
    """
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []
    total = 0
    for pattern in ("components/*.wasm", "compiled/*.cwasm"):
        for path in cache_dir.glob(pattern):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            total += stat.st_size
            files.append((stat.st_mtime, stat.st_size, path))
    removed = freed = 0

    def remove(path: Path, size: int) -> None:
        nonlocal removed, freed, total
        try:
            path.unlink()
        except FileNotFoundError:
            return
        removed += 1
        freed += size
        total -= size

    candidates = [(mtime, size, path) for mtime, size, path in files
                  if _key(path) not in keep and now - mtime >= min_age_s]
    for _, size, path in candidates:
        if path.suffix == ".cwasm" and not path.stem.endswith(f"-{fingerprint}"):
            remove(path, size)
    for _, size, path in sorted(candidates):
        if total <= max_bytes:
            break
        if path.exists():
            remove(path, size)
    if removed:
        log.info("pruned the worker cache", extra={"removed": removed, "freed_bytes": freed, "total_bytes": total})
    return PruneResult(removed, freed, total)
