"""A node knows its databases: a lost, emptied or damaged one stops the start with a clear message naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.test_backup import edgenode
from tests.support import MIN_WAIT_S, NodeProcess

DATABASES = ["node.db", "sandboxes.db", "agents.db", "artifacts.db"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory a node has run in and written to, then stopped cleanly."""
    data = tmp_path_factory.mktemp("seed") / "data"
    node = NodeProcess(data).start()
    with node.client() as c:
        assert c.post("/v1/tenants", json={"name": "acme"}).status_code == 201
        assert c.post("/v1/tokens", json={"tenant": "acme"}).status_code == 201
        assert c.post("/v1/repos", json={"name": "r"}).status_code == 201
        assert c.put("/v1/kv/app/k", content=b"v").status_code == 200
        for i in range(40):  # a namespace whose middle holds only values
            assert c.put(f"/v1/kv/big/k{i}", content=os.urandom(4096)).status_code == 200
    assert node.stop() == 0
    yield data


def _copy(seeded: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    subprocess.run(["cp", "-a", str(seeded), str(target)], check=True)
    return target


def _serve(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
    return subprocess.run([sys.executable, "-m", "edgenode", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
                           *args], capture_output=True, text=True, env=env, timeout=60)


def _assert_refused(done: subprocess.CompletedProcess[str], path: Path) -> str:
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert str(path) in out and f"--accept-fresh-db {path.name}" in out, out
    assert f"edgenode restore BACKUP {path.parent} --only {path.name}" in out, out
    assert "Traceback" not in out, out
    return out


def test_the_node_records_the_databases_it_created(seeded: Path) -> None:
    identity = json.loads((seeded / "identity.json").read_text())
    assert identity["node"] == (seeded / "node-id").read_text().strip()
    assert set(DATABASES) <= set(identity["databases"])


@pytest.mark.parametrize("name", DATABASES)
def test_a_database_truncated_to_zero_bytes_is_refused_by_name(seeded: Path, tmp_path: Path, name: str) -> None:
    data = _copy(seeded, tmp_path)
    (data / name).write_bytes(b"")
    out = _assert_refused(_serve(data), data / name)
    assert "empty (0 bytes)" in out
    assert (data / name).stat().st_size == 0  # never silently recreated


def test_a_missing_database_is_refused(seeded: Path, tmp_path: Path) -> None:
    data = _copy(seeded, tmp_path)
    (data / "node.db").unlink()
    assert "is missing" in _assert_refused(_serve(data), data / "node.db")
    assert not (data / "node.db").exists()


def test_garbage_in_the_middle_of_a_database_is_refused(seeded: Path, tmp_path: Path) -> None:
    data = _copy(seeded, tmp_path)
    path = data / "agents.db"
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(8192))
    out = _assert_refused(_serve(data), path)
    assert "quick_check" in out or "malformed" in out, out


def test_the_operator_may_accept_a_fresh_database_and_the_old_file_is_kept(seeded: Path, tmp_path: Path) -> None:
    data = _copy(seeded, tmp_path)
    with open(data / "artifacts.db", "r+b") as f:
        f.seek(0)
        f.write(b"not a database at all" * 10)
    node = NodeProcess(data, args=["--accept-fresh-db", "artifacts.db"]).start()
    try:
        with node.client() as c:
            assert c.get("/v1/kv/app/k").content == b"v"
            assert c.post("/v1/repos", json={"name": "again"}).status_code == 201
    finally:
        assert node.stop() == 0
    kept = [p.name for p in data.iterdir() if p.name.startswith("artifacts.db.damaged-")]
    assert kept and not any(n.endswith(("-wal", "-shm")) for n in kept[:1])
    assert "as the operator asked" in node.log()
    node = NodeProcess(data).start()  # the fresh one is recorded and passes from now on
    node.stop()


def test_unknown_accept_fresh_names_change_nothing(seeded: Path, tmp_path: Path) -> None:
    data = _copy(seeded, tmp_path)
    (data / "node.db").write_bytes(b"")
    _assert_refused(_serve(data, "--accept-fresh-db", "agents.db"), data / "node.db")


def test_a_node_database_whose_log_was_deleted_after_kill_9_is_refused(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data").start()
    with node.client() as c:
        for i in range(5):
            assert c.post("/v1/tokens", json={"tenant": "default", "name": f"t{i}"}).status_code == 201
    node.kill()
    wal = tmp_path / "data" / "node.db-wal"
    assert wal.exists() and wal.stat().st_size > 0, "the test needs commits only the log holds"
    wal.unlink()
    out = _assert_refused(_serve(tmp_path / "data"), tmp_path / "data" / "node.db")
    assert "write-ahead log" in out


def test_a_truncated_node_database_is_refused_by_name_with_the_restore_command(seeded: Path, tmp_path: Path) -> None:
    data = _copy(seeded, tmp_path)
    path = data / "node.db"
    size = path.stat().st_size
    assert size > 3 * 4096, "the test needs a database of several pages"
    os.truncate(path, size // 2)
    out = _assert_refused(_serve(data), path)
    assert "quick_check" in out or "malformed" in out or "cannot be read" in out, out
    assert path.stat().st_size == size // 2  # never silently recreated


def test_garbage_in_a_namespace_database_is_reported_by_name_and_the_file_comes_back_from_a_backup(
        seeded: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    assert edgenode("backup", str(backup), "--data", str(seeded)).returncode == 0
    data = _copy(seeded, tmp_path)
    path = data / "state" / "default" / "big.db"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(8192))
    damaged = path.read_bytes()
    node = NodeProcess(data).start()  # the node serves every other namespace
    try:
        with node.client() as c:
            deadline = time.monotonic() + MIN_WAIT_S
            while c.get("/healthz").json()["status"] != "degraded":  # found by the check after start
                assert time.monotonic() < deadline, c.get("/healthz").text
                time.sleep(0.1)
            assert str(path) in node.log() and "edgenode restore" in node.log()
            r = c.put("/v1/kv/big/k2", content=b"v")
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "namespace_damaged" and str(path) in error["message"], error
            assert f"edgenode restore BACKUP {data} --only state/default/big.db" in error["message"], error
            assert c.put("/v1/kv/app/k2", content=b"v").status_code == 200
    finally:
        assert node.stop() == 0
    assert path.read_bytes() == damaged  # never silently recreated empty
    # A damaged namespace does not make the node impossible to back up: it is left out, by name.
    done = edgenode("backup", str(tmp_path / "second"), "--data", str(data))
    assert done.returncode == 0 and "state/default/big.db" in done.stderr, done.stderr
    assert "state/default/big.db" in json.loads(done.stdout)["left_out"]
    assert "state/default/app.db" in json.loads(done.stdout)["databases"]

    done = edgenode("restore", str(backup), str(data), "--only", "state/default/big.db")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in path.parent.glob("big.db.replaced-*")], "the damaged file is kept aside"
    node.start()
    try:
        with node.client() as c:
            assert len(c.get("/v1/kv/big/k39").content) == 4096
            assert c.put("/v1/kv/big/k2", content=b"v").status_code == 200
            assert c.get("/healthz").json()["status"] == "ok"
    finally:
        node.stop()
