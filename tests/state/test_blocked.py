"""A namespace that cannot merge a peer's changes blocks only itself, and is reported. In-process nodes, real files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgenode.api import build_app
from edgenode.cluster import RangeSet
from edgenode.cluster.hlc import physical_ms
from edgenode.config import Config
from edgenode.node import Node
from edgenode.state import Changes
from edgenode.state.payload import parse_changes
from tests.support import NodeProcess, wait_for

HOUR_MS = 3_600_000


class Running:
    """A node served in-process, and a client holding its admin token."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.node = Node(Config.load(env={}, overrides={"data_dir": root, **overrides}))
        self.client = TestClient(build_app(self.node), headers={"authorization": f"Bearer {self.node.admin_token}"})
        self.client.__enter__()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def everything(self, namespace: str) -> Changes:
        changes = self.node.state.read_changes("default", namespace, {self.node.id: RangeSet([(1, 1 << 40)])}, 10**6)
        assert changes is not None
        return changes

    def metric(self, name: str) -> float:
        line = next(x for x in self.client.get("/metrics").text.splitlines() if x.startswith(name + " "))
        return float(line.split()[-1])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Running, Running]]:
    root = tmp_path_factory.mktemp("blocked")
    peer = Running(root / "peer", **{"cluster.sync_batch_rows": 5})
    here = Running(root / "here")
    fast = Running(root / "fast", **{"cluster.clock_offset_ms": HOUR_MS})
    try:
        yield peer, here, fast
    finally:
        for r in (peer, here, fast):
            r.close()


def sql(r: Running, namespace: str, query: str, params: Any = None) -> Any:
    response = r.client.post(f"/v1/sql/{namespace}", json={"sql": query, "params": params or []})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_diverged_namespace_blocks_only_itself(nodes: tuple[Running, Running, Running]) -> None:
    peer, here, _ = nodes
    # During a partition, both defined the table differently ("diverged" sorts before "fine").
    sql(peer, "diverged", "CREATE TABLE t (id TEXT PRIMARY KEY, v)")
    sql(here, "diverged", "CREATE TABLE t (id TEXT PRIMARY KEY, w)")
    for i in range(20):  # more rows than the peer sends in one sync answer
        sql(peer, "diverged", "INSERT INTO t VALUES (?, ?)", [f"r{i}", i])
        assert peer.client.put(f"/v1/kv/fine/k{i}", content=b"v").status_code == 200

    # Arriving together (one stream message): the diverged one is refused, the other is applied.
    merged = [here.node.state.merge(peer.node.id, peer.everything(ns)) for ns in ("diverged", "fine")]
    assert merged == [None, 20]
    assert here.client.get("/v1/kv/fine/k19").content == b"v"
    blocked = here.client.get("/v1/cluster").json()["blocked_namespaces"]
    assert [(b["tenant"], b["namespace"], b["peer"], b["code"]) for b in blocked] == [
        ("default", "diverged", peer.node.id, "malformed_changes")]
    assert "lacks here" in blocked[0]["reason"] or "columns" in blocked[0]["reason"]
    assert here.metric("edgenode_state_blocked_namespaces") == 1
    assert here.client.get("/v1/status").json()["capabilities"]["state"]["blocked"] == 1
    assert sql(here, "diverged", "SELECT count(*) FROM t")["rows"] == [[0]]
    # Its books lack what it refused, so a catch-up asks for it again later.
    assert peer.node.id not in here.node.state.book("default", "diverged")

    # Caught up: the diverged namespace, first in order and bigger than an answer, must not crowd out the rest.
    assert peer.client.put("/v1/kv/fine/later", content=b"pulled").status_code == 200
    here_replicator, peer_replicator = here.node.state.replicator, peer.node.state.replicator
    assert here_replicator is not None and peer_replicator is not None
    answer = asyncio.run(peer_replicator.answer_sync(here_replicator.wanted_body()))
    assert [n["namespace"] for n in answer["namespaces"]] == ["fine"]
    for entry in answer["namespaces"]:
        asyncio.run(here_replicator._apply_one(peer.node.id, parse_changes(entry)))
    assert here.client.get("/v1/kv/fine/later").content == b"pulled"
    # Once it is no longer recent, the blocked namespace is asked for again (and refused again here).
    later = asyncio.run(peer_replicator.answer_sync({**here_replicator.wanted_body(), "blocked": []}))
    assert [n["namespace"] for n in later["namespaces"]] == ["diverged"]


def test_a_namespace_started_again_forgets_the_versions_it_reused(nodes: tuple[Running, Running, Running]) -> None:
    peer, here, _ = nodes
    me = here.node.id
    for i in range(3):
        here.node.state.kv_put("restart", "ns", f"old-{i}", b"1")  # versions 1..3 of this node
    changes = here.node.state.read_changes("restart", "ns", {me: RangeSet([(1, 3)])}, 100)
    assert changes is not None and peer.node.state.merge(me, changes) == 3
    asyncio.run(here.node.state.purge_tenant("restart"))  # the files are gone: the namespace starts again
    here.node.state.kv_put("restart", "ns", "new", b"after")  # version 1 again, for another write
    assert here.node.state.book("restart", "ns") == {me: RangeSet([(1, 1)])}
    theirs = peer.node.state.book("restart", "ns")[me].minus(RangeSet([(1, 1)]))
    back = peer.node.state.read_changes("restart", "ns", {me: theirs}, 100)
    assert back is not None
    sent: list[tuple[str, str, int]] = []
    on_commit, here.node.state.on_commit = here.node.state.on_commit, lambda *args: sent.append(args)
    try:
        assert here.node.state.merge(peer.node.id, back) == 2
    finally:
        here.node.state.on_commit = on_commit
    # The node's rows moved past what the fleet has seen (4), sent like a commit; version 1 is asked for again.
    assert here.node.state.book("restart", "ns") == {me: RangeSet([(2, 4)])}
    assert sent == [("restart", "ns", 4)]


def test_a_batch_stamped_an_hour_ahead_is_refused_counted_and_leaves_the_clock(
        nodes: tuple[Running, Running, Running]) -> None:
    _, here, fast = nodes
    assert fast.client.put("/v1/kv/clocks/k", content=b"from the future").status_code == 200
    assert fast.client.put("/v1/kv/elsewhere/k", content=b"from the future").status_code == 200
    assert here.client.put("/v1/kv/clocks/mine", content=b"here").status_code == 200
    assert here.node.state.merge(fast.node.id, fast.everything("clocks")) is None
    assert here.client.get("/v1/kv/clocks/k").status_code == 404
    assert here.node.state.merge(fast.node.id, fast.everything("elsewhere")) is None
    assert not here.node.state.path("default", "elsewhere").exists()  # a refused batch leaves no file
    state = here.client.get("/v1/status").json()["capabilities"]["state"]
    assert state["clock_refusals"] == 2
    assert here.metric("edgenode_state_clock_refusals_total") == 2
    entry = next(b for b in here.node.state.blocked_namespaces() if b["namespace"] == "clocks")
    assert entry["code"] == "clock_offset_exceeded" and entry["peer"] == fast.node.id
    # This node's next stamp is its own time, not an hour ahead.
    version = here.client.put("/v1/kv/clocks/next", content=b"x").json()["version"]
    assert physical_ms(int(version.split(".")[0])) < physical_ms(fast.node.state.hlc.peek()) - HOUR_MS // 2

    # Once the batch fits (here: the bound is raised), it applies and the namespace is cleared. (This node's
    # clock follows it an hour ahead: this test runs last of those sharing the nodes.)
    # The replicator does the same, and does not forget what a refusal left out: it asks for it again.
    replicator = here.node.state.replicator
    assert replicator is not None
    replicator._catch_up.clear()
    assert asyncio.run(replicator._apply_one(fast.node.id, fast.everything("clocks"))) == 0
    assert ("default", "clocks") in replicator._refetch and not replicator._catch_up.is_set()
    here.node.state.hlc.max_offset_ms = 2 * HOUR_MS
    try:
        assert asyncio.run(replicator._apply_one(fast.node.id, fast.everything("clocks"))) == 1
    finally:
        here.node.state.hlc.max_offset_ms = 500
    assert replicator._catch_up.is_set()  # it merges again: a catch-up fetches what it refused meanwhile
    assert here.client.get("/v1/kv/clocks/k").content == b"from the future"
    assert all(b["namespace"] != "clocks" for b in here.node.state.blocked_namespaces())


def test_real_nodes_refuse_a_peer_an_hour_fast_and_say_so(tmp_path: Path) -> None:
    env = {"EDGENODE_FLEET_SECRET": "clock-test", "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.2",
           "EDGENODE_CLUSTER_SYNC_INTERVAL_S": "0.3"}
    here = NodeProcess(tmp_path / "here", env=env).start()
    fast = NodeProcess(tmp_path / "fast", env={**env, "EDGENODE_CLUSTER_CLOCK_OFFSET_MS": str(HOUR_MS)},
                       args=["--peer", here.url]).start()
    try:
        with here.client() as ch, fast.client() as cf:
            assert cf.put("/v1/kv/from-fast/k", content=b"an hour ahead").status_code == 200
            assert ch.put("/v1/kv/from-here/k", content=b"on time").status_code == 200

            def reported() -> Any:
                blocked = ch.get("/v1/cluster").json()["blocked_namespaces"]
                return [b for b in blocked if b["code"] == "clock_offset_exceeded"] or None

            entry = wait_for(reported, timeout=20, message="the fast peer's batch refused and listed")[0]
            assert (entry["namespace"], entry["peer"]) == ("from-fast", fast.node_id)
            assert ch.get("/v1/status").json()["capabilities"]["state"]["clock_refusals"] >= 1
            assert "edgenode_state_clock_refusals_total" in ch.get("/metrics").text
            assert ch.get("/v1/kv/from-fast/k").status_code == 404
            # Its own writes are stamped with its own time, not the fast peer's.
            version = ch.put("/v1/kv/from-here/later", content=b"x").json()["version"]
            assert physical_ms(int(version.split(".")[0])) < fast_ms(cf) - HOUR_MS // 2
            # The other way round nothing is refused: the fast node takes writes stamped behind it.
            wait_for(lambda: cf.get("/v1/kv/from-here/later").status_code == 200, timeout=20,
                     message="the on-time node's writes reach the fast one")
    finally:
        fast.stop()
        here.stop()


def fast_ms(client: Any) -> int:
    """The physical part of a fresh stamp on a node."""
    version = client.put("/v1/kv/probe/k", content=b"x").json()["version"]
    return physical_ms(int(version.split(".")[0]))
