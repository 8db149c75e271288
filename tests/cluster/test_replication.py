"""Real node processes on loopback replicate state: concurrent writes, clock skew, kill -9, catch-up."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import NodeProcess, wait_for

SECRET = "replication-test-secret"
#: Short intervals keep the multi-node tests quick.
FAST = {
    "EDGENODE_FLEET_SECRET": SECRET,
    "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.2",
    "EDGENODE_CLUSTER_SYNC_INTERVAL_S": "0.4",
    "EDGENODE_CLUSTER_PUSH_TIMEOUT_S": "1",
    "EDGENODE_STORE_SYNCHRONOUS": "FULL",
}
#: Clock skew either way: 400 ms apart, within cluster.max_clock_offset_ms (500 ms by default).
SKEW_MS = 200


def start_fleet(root: Path, offsets_ms: list[int]) -> list[NodeProcess]:
    nodes: list[NodeProcess] = []
    for i, offset in enumerate(offsets_ms):
        env = {**FAST, "EDGENODE_CLUSTER_CLOCK_OFFSET_MS": str(offset)}
        args = ["--peer", nodes[0].url] if nodes else []
        nodes.append(NodeProcess(root / f"n{i}", env=env, args=args).start())
    return nodes


def wait_healthy(nodes: list[NodeProcess]) -> None:
    def all_healthy() -> bool:
        for n in nodes:
            with n.client() as c:
                peers = c.get("/v1/cluster").json()["peers"]
            if sum(1 for p in peers if p["healthy"]) < len(nodes) - 1:
                return False
        return True

    wait_for(all_healthy, timeout=15, message="every node sees every peer healthy")


def kv_state(node: NodeProcess, namespace: str) -> dict[str, bytes]:
    with node.client() as c:
        keys = c.get(f"/v1/kv/{namespace}", params={"limit": 10000}).json()["keys"]
        return {k: c.get(f"/v1/kv/{namespace}/{k}").content for k in keys}


def converged(nodes: list[NodeProcess], namespace: str, expected: dict[str, bytes] | None = None) -> Any:
    states = [kv_state(n, namespace) for n in nodes]
    same = all(s == states[0] for s in states)
    if expected is not None:
        return same and states[0] == expected
    return same and states[0]


@pytest.fixture(scope="module")
def skewed_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Three nodes whose clocks disagree by SKEW_MS either way."""
    nodes = start_fleet(tmp_path_factory.mktemp("fleet"), [SKEW_MS, -SKEW_MS, 0])
    try:
        wait_healthy(nodes)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_three_nodes_converge_after_concurrent_writes(skewed_fleet: list[NodeProcess]) -> None:
    keys = [f"k{i}" for i in range(8)]
    acked: list[tuple[tuple[int, str], str, bytes | None]] = []
    lock = threading.Lock()

    def writer(node: NodeProcess, seed: int) -> None:
        rng = random.Random(seed)
        with node.client() as c:
            for n in range(40):
                key = rng.choice(keys)
                if rng.random() < 0.2:
                    c.delete(f"/v1/kv/race/{key}")  # the winner check below covers puts only
                    continue
                value = f"{node.node_id}:{n}".encode()
                r = c.put(f"/v1/kv/race/{key}", content=value)
                assert r.status_code == 200
                hlc, _, origin = r.json()["version"].partition(".")
                with lock:
                    acked.append(((int(hlc), origin), key, value))

    threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(skewed_fleet)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = wait_for(lambda: converged(skewed_fleet, "race") or None, timeout=20, message="convergence")
    # A surviving key holds the acknowledged put with the greatest (HLC, origin): a put is the
    # winner, so it beat every other write to that key, every acknowledged put included.
    with skewed_fleet[0].client() as c:
        versions = {k: c.get(f"/v1/kv/race/{k}").headers["etag"].strip('"') for k in final}
    for key, value in final.items():
        clock, winner = max((clock, v) for clock, k, v in acked if k == key)
        assert value == winner
        assert versions[key] == f"{clock[0]}.{clock[1]}"
    for n in skewed_fleet[1:]:
        with n.client() as c:
            assert {k: c.get(f"/v1/kv/race/{k}").headers["etag"].strip('"') for k in final} == versions


def test_sql_rows_converge(skewed_fleet: list[NodeProcess]) -> None:
    a, b, c = skewed_fleet
    with a.client() as ca:
        assert ca.post("/v1/sql/inventory", json={
            "sql": "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, qty INTEGER)"}).status_code == 200
    def table_on(n: NodeProcess) -> Any:
        with n.client() as cl:
            r = cl.post("/v1/sql/inventory", json={"sql": "SELECT count(*) FROM stock"})
            return r.status_code == 200
    wait_for(lambda: all(table_on(n) for n in skewed_fleet), timeout=10, message="table everywhere")
    for i, n in enumerate(skewed_fleet):
        with n.client() as cl:
            for sku in ("apple", "pear", f"only-{i}"):
                r = cl.post("/v1/sql/inventory", json={
                    "sql": "INSERT INTO stock VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET qty = excluded.qty",
                    "params": [sku, i]})
                assert r.status_code == 200, r.text
    with b.client() as cb:
        cb.post("/v1/sql/inventory", json={"sql": "DELETE FROM stock WHERE sku = 'only-0'"})

    def rows(n: NodeProcess) -> Any:
        with n.client() as cl:
            return cl.post("/v1/sql/inventory", json={"sql": "SELECT sku, qty FROM stock ORDER BY sku"}).json()["rows"]

    def same() -> Any:
        all_rows = [rows(n) for n in skewed_fleet]
        return all(r == all_rows[0] for r in all_rows) and len(all_rows[0]) >= 4 and all_rows[0]

    final = wait_for(same, timeout=20, message="SQL convergence")
    # b deleted only-0 after a's insert reached it or before: either way all nodes agree, and
    # the rows b and c inserted on their own keys are there.
    skus = [r[0] for r in final]
    assert {"apple", "pear", "only-1", "only-2"} <= set(skus)


def test_clock_skew_does_not_lose_writes(skewed_fleet: list[NodeProcess]) -> None:
    ahead, behind, _ = skewed_fleet  # clocks SKEW_MS ahead and SKEW_MS behind
    with ahead.client() as ca, behind.client() as cb:
        assert ca.put("/v1/kv/skew/doc", content=b"written on the fast clock").status_code == 200
        wait_for(lambda: cb.get("/v1/kv/skew/doc").status_code == 200, timeout=10, message="replicated to slow")
        # Up to 400 ms "earlier" by its own clock, the slow node writes after seeing the fast one's
        # write: the HLC orders it later, so it must win everywhere.
        assert cb.put("/v1/kv/skew/doc", content=b"written later on the slow clock").status_code == 200
        for i in range(10):
            assert cb.put(f"/v1/kv/skew/slow-{i}", content=b"x").status_code == 200
    expected = {"doc": b"written later on the slow clock", **{f"slow-{i}": b"x" for i in range(10)}}
    wait_for(lambda: converged(skewed_fleet, "skew", expected), timeout=15, message="skewed convergence")


def test_cluster_reports_peers_and_lag(skewed_fleet: list[NodeProcess]) -> None:
    with skewed_fleet[2].client() as c:
        data = c.get("/v1/cluster").json()
        assert data["fleet_enabled"] and len(data["peers"]) == 2
        assert {p["node_id"] for p in data["peers"]} == {skewed_fleet[0].node_id, skewed_fleet[1].node_id}
        assert all(p["healthy"] for p in data["peers"])
        metrics = c.get("/metrics").text
        assert "edgenode_cluster_peer_healthy" in metrics and "edgenode_replication_lag_seconds" in metrics
        status = c.get("/v1/status").json()["capabilities"]["cluster"]
        assert status["peers"] == 2 and status["healthy"] == 2


def test_kill_9_loses_no_acknowledged_write_and_catches_up(tmp_path: Path) -> None:
    a, b = start_fleet(tmp_path, [0, 0])
    try:
        wait_healthy([a, b])
        acked: list[str] = []
        stop = threading.Event()

        def stream() -> None:
            with httpx.Client(base_url=a.url, headers={"authorization": f"Bearer {a.admin_token}"},
                              timeout=5) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.put(f"/v1/kv/stream/k{i:05d}", content=str(i).encode())
                    except httpx.HTTPError:
                        return
                    if r.status_code != 200:
                        return
                    acked.append(f"k{i:05d}")
                    i += 1

        writer = threading.Thread(target=stream)
        writer.start()
        wait_for(lambda: len(acked) > 150, timeout=20, message="writes flowing")
        a.kill()  # SIGKILL mid-stream
        stop.set()
        writer.join()
        # While a is down, b takes writes of its own.
        with b.client() as cb:
            for i in range(20):
                assert cb.put(f"/v1/kv/stream/from-b-{i}", content=b"b").status_code == 200
        a.start()  # same data directory, a new port; it finds b through --peer
        with a.client() as ca:
            keys = set(ca.get("/v1/kv/stream", params={"limit": 10000}).json()["keys"])
        assert set(acked) <= keys, "an acknowledged write was lost by kill -9"
        expected = set(acked) | {f"from-b-{i}" for i in range(20)}

        def caught_up() -> bool:
            for n in (a, b):
                with n.client() as c:
                    if not expected <= set(c.get("/v1/kv/stream", params={"limit": 10000}).json()["keys"]):
                        return False
            return True

        wait_for(caught_up, timeout=30, message="both nodes hold every acknowledged write")
        wait_for(lambda: converged([a, b], "stream"), timeout=15, message="identical state")
    finally:
        a.stop()
        b.stop()


def test_a_late_node_far_behind_catches_up_by_snapshot(tmp_path: Path) -> None:
    env = {**FAST, "EDGENODE_CLUSTER_SNAPSHOT_THRESHOLD_VERSIONS": "20"}
    a = NodeProcess(tmp_path / "a", env=env).start()
    late: NodeProcess | None = None
    try:
        with a.client() as ca:
            for i in range(60):  # 60 versions, 10 live keys: far past the snapshot threshold
                assert ca.put(f"/v1/kv/history/k{i % 10}", content=str(i).encode()).status_code == 200
            assert ca.delete("/v1/kv/history/k0").status_code == 204
            ca.post("/v1/sql/history", json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})
            ca.post("/v1/sql/history", json={"sql": "INSERT INTO t VALUES (1, 'one'), (2, 'two')"})
        late = NodeProcess(tmp_path / "late", env=env, args=["--peer", a.url]).start()
        expected = {f"k{i}": str(50 + i).encode() for i in range(1, 10)}
        wait_for(lambda: converged([a, late], "history", expected), timeout=20, message="snapshot catch-up")
        with late.client() as cl:
            rows = cl.post("/v1/sql/history", json={"sql": "SELECT id, v FROM t ORDER BY id"}).json()["rows"]
            assert rows == [[1, "one"], [2, "two"]]
        with a.client() as ca:
            sent = [line for line in ca.get("/metrics").text.splitlines()
                    if line.startswith("edgenode_replication_snapshots_sent_total")]
            assert sent and float(sent[0].split()[-1]) >= 1
    finally:
        a.stop()
        if late is not None:
            late.stop()
