"""A damaged namespace is marked and refuses writes; a stuck one holds up nobody else. Real node processes."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
from pathlib import Path

from tests.support import NodeProcess, wait_for


def _seed(node: NodeProcess, namespace: str, keys: int = 300) -> None:
    with node.client() as c:
        for i in range(keys):
            assert c.put(f"/v1/kv/{namespace}/key-{i:04d}", content=os.urandom(1024)).status_code == 200
        r = c.post(f"/v1/sql/{namespace}", json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})
        assert r.status_code == 200, r.text


def _namespace_file(node: NodeProcess, namespace: str) -> Path:
    found = list((node.data_dir / "state").glob(f"*/{namespace}.db"))
    assert len(found) == 1, found
    return found[0]


def _assert_damaged_but_others_served(node: NodeProcess, namespace: str, reason: str) -> None:
    with node.client() as c:
        r = c.put(f"/v1/kv/{namespace}/new", content=b"x")
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "namespace_damaged" and reason in error["reason"], error
        assert namespace in error["message"]
        r = c.post(f"/v1/sql/{namespace}", json={"sql": "INSERT INTO t (id, v) VALUES (1, 'x')"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "namespace_damaged", r.text
        assert c.put("/v1/kv/healthy/k", content=b"fine").status_code == 200
        assert c.get("/v1/kv/healthy/k").content == b"fine"
        assert c.get("/v1/kv/other/key-0001").status_code == 200
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        status = c.get("/v1/status").json()
        assert [d["namespace"] for d in status["store"]["damaged_namespaces"]] == [namespace]
    assert _namespace_file(node, namespace).with_name(f"{namespace}.db.damaged").exists()


def test_garbage_in_the_middle_of_a_namespace_refuses_its_writes_only(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    try:
        _seed(node, "broken")
        _seed(node, "other", keys=3)
    finally:
        assert node.stop() == 0
    path = _namespace_file(node, "broken")
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(16384))
    node.start()
    try:
        _assert_damaged_but_others_served(node, "broken", "quick_check")
    finally:
        node.stop()
    node.start()  # the marker keeps it refused after a restart
    try:
        with node.client() as c:
            assert c.put("/v1/kv/broken/again", content=b"x").json()["error"]["code"] == "namespace_damaged"
    finally:
        node.stop()


def test_a_namespace_whose_log_was_deleted_after_kill_9_is_marked(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    try:
        _seed(node, "lost")
        _seed(node, "other", keys=3)
    finally:
        node.kill()
    path = _namespace_file(node, "lost")
    wal = path.with_name(path.name + "-wal")
    assert wal.exists(), "the test needs commits that only the log holds"
    wal.unlink()
    node.start()
    try:
        _assert_damaged_but_others_served(node, "lost", "write-ahead log")
    finally:
        node.stop()


def test_a_stuck_namespace_does_not_hold_up_reads_of_others(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", env={
        "EDGENODE_STORE_BUSY_TIMEOUT_MS": "600000", "EDGENODE_STORE_WRITE_TIMEOUT_S": "600",
        "EDGENODE_STORE_STUCK_WRITE_S": "0.5",
    }).start()
    try:
        _seed(node, "stuck", keys=1)
        _seed(node, "healthy", keys=3)
        # Another process takes the write lock of one namespace and keeps it: its writer waits.
        lock = sqlite3.connect(_namespace_file(node, "stuck"), isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        pool = concurrent.futures.ThreadPoolExecutor(40)
        with node.client(timeout=600) as slow:
            def insert(i: int) -> int:
                r = slow.post("/v1/sql/stuck", json={"sql": "INSERT INTO t (id, v) VALUES (?, ?)",
                                                   "params": [i, str(i)]})
                return r.status_code
            waiting = [pool.submit(insert, i) for i in range(40)]
            with node.client(timeout=30) as c:
                health = wait_for(lambda: (h := c.get("/healthz")).status_code == 503 and h, timeout=30,
                                  message="/healthz to report the stuck writer")
                body = health.json()
                assert body["status"] == "unhealthy"
                assert body["store"]["stuck_writers"][0]["database"] == "a namespace database"
                assert "edgenode_store_writers_stuck 1.0" in c.get("/metrics").text
                for i in range(12):  # more calls than the loop's default executor has threads
                    assert c.get(f"/v1/kv/healthy/key-{i % 3:04d}").status_code == 200
                    r = c.post("/v1/sql/healthy", json={"sql": "SELECT COUNT(*) FROM _kv WHERE key LIKE 'key-%'"})
                    assert r.status_code == 200 and r.json()["rows"] == [[3]]
                    assert c.put("/v1/kv/healthy/w", content=b"x").status_code == 200
                assert not any(f.done() for f in waiting)
            lock.execute("ROLLBACK")
            lock.close()
            assert [f.result(timeout=120) for f in waiting] == [200] * 40
        pool.shutdown()
        with node.client() as c:
            r = c.post("/v1/sql/stuck", json={"sql": "SELECT COUNT(*) FROM t"})
            assert r.json()["rows"] == [[40]]
            assert c.get("/healthz").json()["status"] == "ok"
    finally:
        node.stop()



def test_a_damaged_namespace_does_not_stop_the_others_from_converging(tmp_path: Path) -> None:
    from tests.cluster.helpers import FAST

    a = NodeProcess(tmp_path / "a", env=FAST).start()
    b = NodeProcess(tmp_path / "b", env=FAST, args=["--peer", a.url]).start()
    try:
        _seed(a, "broken")
        with b.client() as c:
            wait_for(lambda: c.get("/v1/kv/broken/key-0299").status_code == 200, timeout=60,
                     message="the namespace to replicate")
        assert b.stop() == 0
        path = _namespace_file(b, "broken")
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size // 2)
            f.write(os.urandom(16384))
        with a.client() as c:  # while b is down: only b's pulls can bring these
            for i in range(5):
                assert c.put(f"/v1/kv/broken/late-{i}", content=b"x").status_code == 200
                assert c.put(f"/v1/kv/fine/late-{i}", content=b"y").status_code == 200
        b.start()
        with b.client() as c:
            wait_for(lambda: all(c.get(f"/v1/kv/fine/late-{i}").status_code == 200 for i in range(5)),
                     timeout=60, message="the healthy namespace to converge by pull")
            assert c.put("/v1/kv/broken/x", content=b"x").json()["error"]["code"] == "namespace_damaged"
    finally:
        b.stop()
        a.stop()
