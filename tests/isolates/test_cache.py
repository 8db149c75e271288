from __future__ import annotations

import os
from pathlib import Path

from edgenode.isolates.cache import prune

MB = 1 << 20


def make(path: Path, size: int, age_s: float, now: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_prune_evicts_unreferenced_old_files_oldest_first(tmp_path: Path) -> None:
    now = 1_000_000.0
    kept = make(tmp_path / "components/aaa.wasm", 3 * MB, 9000, now)
    kept_code = make(tmp_path / "compiled/aaa-fp1.cwasm", 3 * MB, 9000, now)
    oldest = make(tmp_path / "components/bbb.wasm", 2 * MB, 8000, now)
    older = make(tmp_path / "compiled/bbb-fp1.cwasm", 2 * MB, 7000, now)
    newer = make(tmp_path / "components/ccc.wasm", 2 * MB, 5000, now)
    fresh = make(tmp_path / "components/ddd.wasm", 2 * MB, 10, now)  # may be in use by a build right now
    result = prune(tmp_path, keep={"aaa"}, max_bytes=10 * MB, fingerprint="fp1", now=now)
    assert not oldest.exists() and not older.exists()
    assert kept.exists() and kept_code.exists() and newer.exists() and fresh.exists()
    assert (result.removed, result.freed_bytes, result.total_bytes) == (2, 4 * MB, 10 * MB)


def test_prune_drops_code_compiled_by_another_engine_first(tmp_path: Path) -> None:
    now = 1_000_000.0
    stale = make(tmp_path / "compiled/aaa-oldwasmtime.cwasm", MB, 9000, now)
    current = make(tmp_path / "compiled/bbb-fp1.cwasm", MB, 9000, now)
    result = prune(tmp_path, keep=set(), max_bytes=100 * MB, fingerprint="fp1", now=now)
    assert not stale.exists() and current.exists() and result.removed == 1


def test_prune_never_touches_other_files(tmp_path: Path) -> None:
    now = 1_000_000.0
    other = make(tmp_path / "uploads/eee.wasm", MB, 9000, now)
    staged = make(tmp_path / "components/fff.tmp123", MB, 9000, now)
    prune(tmp_path, keep=set(), max_bytes=0, fingerprint="fp1", now=now)
    assert other.exists() and staged.exists()
