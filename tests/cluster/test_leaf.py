"""The large-fleet shape: nodes whose servers are leaf nodes of a hub cluster, cut off from it and back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.cluster.natsserver import free_port
from tests.cluster.helpers import FAST, SECRET, cluster, healthy_members, kv_state
from tests.support import NodeProcess, wait_for


class Hub:
    """A hub cluster of ``size`` servers, each ``edgenode hub serve`` (which replaces itself with nats-server)."""

    def __init__(self, data: Path, size: int = 3) -> None:
        self.data = data
        self.leaf_ports = [free_port() for _ in range(size)]
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.leaf_ports]

    def start(self, *which: int) -> Hub:
        env = {**os.environ, "EDGENODE_FLEET_SECRET": SECRET}
        for i in which or range(len(self.procs)):
            data = self.data / f"hub{i}"
            data.mkdir(parents=True, exist_ok=True)
            routes = [a for j, p in enumerate(self.route_ports) if j != i for a in ("--route", f"127.0.0.1:{p}")]
            with open(data / "hub.log", "ab") as log:
                self.procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "edgenode", "hub", "serve", "--data", str(data), "--name", f"hub{i}",
                     "--leaf-listen", f"127.0.0.1:{self.leaf_ports[i]}",
                     "--client-listen", f"127.0.0.1:{self.client_ports[i]}",
                     "--cluster-listen", f"127.0.0.1:{self.route_ports[i]}", *routes],
                    stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def stop(self, *which: int, sig: int = signal.SIGTERM) -> None:
        for i in which or range(len(self.procs)):
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                proc.wait(30)


@pytest.fixture(scope="module")
def hub_and_leaves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, list[NodeProcess]]]:
    root = tmp_path_factory.mktemp("leaf")
    hub = Hub(root / "hub").start()
    leaves: list[NodeProcess] = []
    try:
        # A small stream, so that a node stopped for a while finds batches it never read dropped.
        env = {**FAST, "EDGENODE_CLUSTER_STREAM_MAX_BYTES": str(1024 * 1024),
               "EDGENODE_CLUSTER_SNAPSHOT_THRESHOLD_VERSIONS": "10"}
        for name in ("a", "b"):
            leaves.append(NodeProcess(root / name, env=env, args=[a for u in hub.urls for a in ("--hub", u)])
                          .start())
        yield hub, leaves
    finally:
        for n in leaves:
            n.stop()
        hub.stop()


def test_leaf_nodes_meet_through_the_hub(hub_and_leaves: tuple[Hub, list[NodeProcess]]) -> None:
    _, (a, b) = hub_and_leaves
    for n in (a, b):
        wait_for(lambda n=n: healthy_members(n) == {a.node_id, b.node_id}, message="both leaves as members")
    assert cluster(a)["nats"]["shape"] == "leaf"
    with a.client() as c:
        assert c.put("/v1/kv/edge/first", content=b"through the hub").status_code == 200
    with b.client() as c:
        wait_for(lambda: c.get("/v1/kv/edge/first").content == b"through the hub", message="the write on b")


def test_a_leaf_cut_off_from_the_hub_keeps_writing_and_catches_up(
        hub_and_leaves: tuple[Hub, list[NodeProcess]]) -> None:
    hub, (a, b) = hub_and_leaves
    hub.stop()  # a real cut: nothing answers on the hub's side any more
    wait_for(lambda: healthy_members(a) <= {a.node_id}, message="a to notice the hub is gone")
    written: dict[str, bytes] = {}
    with a.client() as ca, b.client() as cb:
        for i in range(20):
            assert ca.put(f"/v1/kv/edge/cut-a-{i}", content=b"a%d" % i).status_code == 200
            assert cb.put(f"/v1/kv/edge/cut-b-{i}", content=b"b%d" % i).status_code == 200
            written[f"cut-a-{i}"] = b"a%d" % i
            written[f"cut-b-{i}"] = b"b%d" % i
        # Each keeps serving its own writes (and reads) while cut off.
        assert ca.get("/v1/kv/edge/cut-a-19").content == b"a19"
        assert cb.get("/v1/kv/edge/cut-a-19").status_code == 404
        unpublished = ca.get("/v1/cluster").json()["replication"]["unpublished_versions"]
        assert unpublished > 0
    hub.start()
    expected = {"first": b"through the hub", **written}
    for n in (a, b):
        wait_for(lambda n=n: kv_state(n, "edge") == expected, message=f"every write on {n.node_id} after the cut")
    wait_for(lambda: cluster(a)["replication"]["unpublished_versions"] == 0, message="a's outbox to empty")


def test_a_node_behind_the_stream_retention_catches_up_by_snapshot(
        hub_and_leaves: tuple[Hub, list[NodeProcess]]) -> None:
    _, (a, b) = hub_and_leaves
    assert b.stop() == 0
    value = b"v" * 48 * 1024
    with a.client() as c:  # about 2 MiB: more than the stream keeps
        for i in range(40):
            assert c.put(f"/v1/kv/retained/k{i:03d}", content=value).status_code == 200
        wait_for(lambda: c.get("/v1/cluster").json()["replication"]["unpublished_versions"] == 0,
                 message="a's batches to reach the stream")
        stream = c.get("/v1/cluster").json()["stream"]
        assert stream["first_seq"] > 1 and stream["bytes"] <= 1024 * 1024
    b.start()
    expected = {f"k{i:03d}": value for i in range(40)}
    wait_for(lambda: kv_state(b, "retained") == expected, message="b to catch up past the stream's retention")
    with a.client() as c:
        assert "edgenode_replication_snapshots_sent_total 1.0" in c.get("/metrics").text


def test_no_acknowledged_write_is_lost_across_kill_9_of_a_leaf_and_of_a_hub_server(
        hub_and_leaves: tuple[Hub, list[NodeProcess]]) -> None:
    hub, (a, b) = hub_and_leaves
    acked: dict[str, bytes] = {}
    with a.client() as ca, b.client() as cb:
        for i in range(60):
            if i == 20:
                hub.stop(1, sig=signal.SIGKILL)  # one hub server of three dies mid-stream
            if i == 40:
                b.kill()  # and a leaf, with whatever it had not yet published
            target = ca if i >= 40 or i % 2 else cb
            key = f"k{i:03d}"
            if target.put(f"/v1/kv/crash/{key}", content=key.encode()).status_code == 200:
                acked[key] = key.encode()
    assert len(acked) == 60
    hub.start(1)
    b.start()
    for n in (a, b):
        wait_for(lambda n=n: kv_state(n, "crash") == acked, message=f"every acknowledged write on {n.node_id}")
