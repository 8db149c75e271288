"""Sandbox checkpoints on a node that is not part of a fleet: a clear error, nothing changed.

The checkpoints themselves are tested on a real two-node fleet in tests/cluster/test_checkpoints.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgenode.errors import CheckpointInvalid
from edgenode.sandboxes.manifest import PieceReader, Restorer, dump_manifest, parse_manifest, scan
from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node (alone: no fleet settings)."""
    return features_node


def test_without_a_fleet_checkpoints_answer_fleet_required(admin: httpx.Client, sandbox: str) -> None:
    assert run(admin, sandbox, "echo kept > a.txt")["exit_code"] == 0
    error = assert_error(admin.post(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert "fleet" in error["message"]
    assert_error(admin.get(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert_error(admin.delete(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert_error(admin.post("/v1/sandboxes", json={"checkpoint": sandbox}), 409, "fleet_required")
    # The sandbox and its files are untouched; the status says checkpoints are off here.
    assert run(admin, sandbox, "cat a.txt")["stdout"] == "kept\n"
    status = admin.get("/v1/status").json()["capabilities"]["sandboxes"]["checkpoints"]
    assert status["enabled"] is False and status["made"] == 0


def test_a_checkpoint_of_an_unknown_sandbox_is_not_found_before_the_fleet_is_asked(admin: httpx.Client) -> None:
    assert_error(admin.post("/v1/sandboxes/nosuch/checkpoints"), 404, "sandbox_not_found")


# -- the manifest, on real directories (no node) ---------------------------------------


def _manifest(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "entries": list(entries)}).encode()


FILE = {"path": "a.txt", "type": "file", "mode": 0o644, "size": 1, "mtime_ns": 0, "digest": "a" * 64,
        "blobs": ["b" * 64]}


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", "malformed"),
    (json.dumps({"v": 2, "entries": []}).encode(), "malformed"),
    (_manifest(FILE, FILE), "malformed"),
    (_manifest({**FILE, "path": "a//b"}), "malformed"),
    (_manifest({**FILE, "path": "./a"}), "malformed"),
    (_manifest({**FILE, "path": "a\x00b"}), "malformed"),
    (_manifest({**FILE, "mode": 0o17777}), "malformed"),
    (_manifest({**FILE, "size": -1}), "malformed"),
    (_manifest({**FILE, "size": 5 * 1024 * 1024}), "malformed"),  # two pieces, one blob
    (_manifest({**FILE, "digest": "xyz"}), "malformed"),
    (_manifest({**FILE, "type": "fifo"}), "malformed"),
    (_manifest({"path": "l", "type": "symlink", "target": ""}), "malformed"),
    (_manifest({**FILE, "path": "../a"}), "escapes"),
    (_manifest({**FILE, "path": "/etc/passwd"}), "escapes"),
    (_manifest({"path": "d", "type": "file", **{k: FILE[k] for k in ("mode", "size", "mtime_ns", "digest", "blobs")}},
               {**FILE, "path": "d/x"}), "escapes"),
    (_manifest(*[{**FILE, "path": f"f{i}"} for i in range(4)]), "too_many"),
])
def test_a_manifest_a_restore_must_refuse_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CheckpointInvalid) as caught:
        parse_manifest(data, max_entries=3)
    assert caught.value.reason == reason, caught.value.message


def test_a_manifest_drops_set_id_bits_and_puts_parents_first() -> None:
    entries = parse_manifest(_manifest({**FILE, "path": "d/x", "mode": 0o6755},
                                       {"path": "d", "type": "directory", "mode": 0o3775, "mtime_ns": 0}),
                             max_entries=10)
    assert [(e.path, oct(e.mode)) for e in entries] == [("d", "0o1775"), ("d/x", "0o755")]


def test_a_scan_never_follows_a_link_and_a_restore_writes_the_same_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the workspace's")
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "x.sh").write_text("#!/bin/sh\n")
    os.chmod(ws / "sub" / "x.sh", 0o750)
    os.symlink(str(outside), ws / "out")
    os.symlink("../sub/x.sh", ws / "sub" / "up")
    os.mkfifo(ws / "pipe")
    found = scan(ws, max_entries=10)
    assert [(e.path, e.type) for e in found.entries] == [("out", "symlink"), ("sub", "directory"),
                                                          ("sub/up", "symlink"), ("sub/x.sh", "file")]
    assert found.skipped == ["pipe"] and found.file_bytes == 10
    with pytest.raises(CheckpointInvalid):
        scan(ws, max_entries=3)
    reader = PieceReader(ws, "sub/x.sh", b"scope\x00")
    blob, name, length = reader.read()
    assert blob == b"scope\x00#!/bin/sh\n" and length == 10 and name == hashlib.sha256(blob).hexdigest()
    assert reader.read()[2] == 0 and reader.close() is True
    with pytest.raises(OSError):
        PieceReader(ws, "out/secret", b"")  # a link is never followed to read
    found.entries[-1].digest, found.entries[-1].blobs = reader.whole.hexdigest(), [name]
    entries = parse_manifest(dump_manifest(found.entries), max_entries=10)
    target = tmp_path / "restored"
    target.mkdir()
    restorer = Restorer(target, None)
    for entry in entries:
        if entry.type == "directory":
            restorer.directory(entry)
        elif entry.type == "symlink":
            restorer.symlink(entry)
        else:
            fd = restorer.create(entry)
            restorer.write(fd, memoryview(b"#!/bin/sh\n"), hashlib.sha256())
            restorer.finish(fd, entry)
    restorer.close()
    assert os.readlink(target / "out") == str(outside) and os.readlink(target / "sub" / "up") == "../sub/x.sh"
    assert (target / "sub" / "x.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(target / "sub" / "x.sh").st_mode) == 0o750
    assert sorted(p.name for p in target.iterdir()) == ["out", "sub"]
