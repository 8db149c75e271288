"""A small fleet on NATS: five real nodes, each given only the first node's URL, clustering their own servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from click.testing import CliRunner

from edgenode.cli import cli
from edgenode.cluster.hlc import pack
from tests.cluster.helpers import KEYS, child_pid, cluster, converged, start_fleet, wait_members
from tests.support import NodeProcess, wait_for


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    # Tombstone collection every second, with no grace: the tests watch it happen (or not).
    nodes = start_fleet(tmp_path_factory.mktemp("fleet"), 5, env={"EDGENODE_CLUSTER_TOMBSTONE_COLLECT_S": "1",
                                                                  "EDGENODE_CLUSTER_TOMBSTONE_GRACE_S": "0"})
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_five_nodes_given_the_first_only_list_five_members(fleet: list[NodeProcess]) -> None:
    wait_members(fleet)
    data = cluster(fleet[4])
    assert data["nats"]["shape"] == "clustered" and data["nats"]["connected"] is True
    assert {m["url"] for m in data["members"]} == {n.url for n in fleet}
    assert all(m["last_seen_ago_s"] >= 0 and m["route"] for m in data["members"])
    # The HTTP view of the members (what Git gossip sends to) follows NATS membership.
    assert {p["url"] for p in data["peers"]} == {n.url for n in fleet[:4]}
    r = CliRunner().invoke(cli, ["--url", fleet[4].url, "--token", fleet[4].admin_token, "cluster"])
    assert r.exit_code == 0 and all(n.node_id in r.output for n in fleet) and "shape=clustered" in r.output


def test_a_write_on_one_node_is_visible_on_all(fleet: list[NodeProcess]) -> None:
    with fleet[4].client() as c:
        assert c.put("/v1/kv/shared/greeting", content=b"hello from five").status_code == 200
    with fleet[1].client() as c:
        r = c.post("/v1/sql/shared", json={"sql": "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"})
        assert r.status_code == 200, r.text
        r = c.post("/v1/sql/shared", json={"sql": "INSERT INTO notes VALUES ('a', 'from two')"})
        assert r.status_code == 200, r.text
    for n in fleet:
        with n.client() as c:
            wait_for(lambda c=c: c.get("/v1/kv/shared/greeting").content == b"hello from five",
                     message=f"the write on {n.node_id}")
            wait_for(lambda c=c: c.post("/v1/sql/shared", json={"sql": "SELECT body FROM notes"})
                     .json().get("rows") == [["from two"]], message=f"the SQL row on {n.node_id}")
    stream = cluster(fleet[0])["stream"]
    assert stream["messages"] >= 3 and stream["max_bytes"] > 0 and stream["replicas"] >= 1
    # Each member reports how far it has applied the stream: once all are current, no lag.
    wait_for(lambda: all(m["lag_messages"] == 0 for m in cluster(fleet[0])["members"]),
             message="every member to have applied the whole stream")


def test_tokens_revocations_and_workers_hold_fleet_wide(fleet: list[NodeProcess]) -> None:
    n1, n2, n4, n5 = fleet[0], fleet[1], fleet[3], fleet[4]
    with n1.client() as c:
        r = c.post("/v1/tokens", json={"tenant": "acme", "name": "fleet-wide"})
        assert r.status_code == 201, r.text
        token, token_id = r.json()["token"], r.json()["id"]

    def status(node: NodeProcess) -> int:
        with node.client(token=token) as c:
            return c.get("/v1/workers").status_code

    # Minted on one node, it works on another (the control plane carried it).
    wait_for(lambda: status(n5) == 200, timeout=30, message="the token minted on node 1 to work on node 5")
    with n2.client() as c:
        wait_for(lambda: c.delete(f"/v1/tokens/{token_id}").status_code == 204, timeout=30,
                 message="node 2 to know the token and revoke it")
    wait_for(lambda: status(n4) == 401, timeout=30, message="the revocation on node 2 to reach node 4")

    with n1.client() as c:
        r = c.put("/v1/workers/hello", json={"files": {"main.py": "def handle(request):\n    return 'hi'\n"}})
        assert r.status_code == 201, r.text
        version = c.get("/v1/workers/hello").json()["version"]

    def answers() -> bool:
        with n5.client() as c:
            r = c.get("/w/hello/x")
            return r.status_code == 200 and r.text == "hi"

    # Deployed once: node 5 installs the same version from the fleet, it is not deployed there again.
    wait_for(answers, timeout=60, message="the worker deployed on node 1 to answer on node 5")
    with n5.client() as c:
        assert c.get("/v1/workers/hello").json()["version"] == version
        control = c.get("/v1/status").json()["capabilities"]["control"]
        assert control["joined"] is True and control["refbus"] is not None
    assert (n5.data_dir / "fleet.db").exists()


async def _publish_raw(port: int, subject: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await nc.close()


async def _stream_copies(port: int) -> dict[str, int]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        return {i.config.name: int(i.config.num_replicas or 1) for i in await nc.jetstream().streams_info()
                if i.config.name}
    finally:
        await nc.close()


def test_every_fleet_stream_gets_three_copies(fleet: list[NodeProcess]) -> None:
    # The first node made the members bucket (and others) while it was alone: one copy, which would
    # die with it. Once the fleet has servers enough, every stream of the fleet is kept three times.
    def three_each() -> dict[str, int] | None:
        copies = asyncio.run(_stream_copies(_client_port(fleet[1])))
        return copies if copies and all(n == 3 for n in copies.values()) else None

    copies = wait_for(three_each, interval=0.5, message="every stream of the fleet to have three copies")
    assert any("MEMBERS" in name for name in copies) and any("STATE" in name for name in copies)
    # A stream of the fleet's made with one copy (as by a node alone) gets its copies too.
    prefix = next(name for name in copies if name.endswith("_STATE")).removesuffix("_STATE")
    asyncio.run(_add_stream(_client_port(fleet[2]), f"{prefix}_MADE_ALONE", "test.made-alone.>"))
    wait_for(lambda: asyncio.run(_stream_copies(_client_port(fleet[3]))).get(f"{prefix}_MADE_ALONE") == 3,
             interval=0.5, message="a stream made with one copy to get three")


async def _add_stream(port: int, name: str, subject: str) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        await nc.jetstream().add_stream(name=name, subjects=[subject], num_replicas=1)
    finally:
        await nc.close()


def _client_port(node: NodeProcess) -> int:
    port: int = json.loads((node.data_dir / "nats" / "ports.json").read_text())["client"]
    return port


def test_a_batch_that_cannot_merge_blocks_only_its_namespace(fleet: list[NodeProcess]) -> None:
    n1, n2 = fleet[0], fleet[1]
    with n1.client() as c:
        r = c.post("/v1/sql/diverged", json={"sql": "CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT)"})
        assert r.status_code == 200, r.text
    with n2.client() as c:
        wait_for(lambda: c.post("/v1/sql/diverged", json={"sql": "SELECT count(*) FROM t"}).status_code == 200,
                 message="the table to replicate")
    foreign = "nforeign0001"
    row = ["t", json.dumps(["x"]), pack(int(time.time() * 1000), 0), foreign, 1, 0, {"id": "x", "zzz": 1}]
    unmergeable = {"origin": foreign, "namespaces": [
        {"tenant": "default", "namespace": "diverged", "rows": [row], "seen": {foreign: [[1, 1]]}}]}
    subject = f"{KEYS.prefix}.state.changes.{foreign}"
    asyncio.run(_publish_raw(_client_port(n1), subject, [b"{not json", json.dumps(unmergeable).encode()]))

    def blocked() -> Any:
        return [b for b in cluster(n2)["blocked_namespaces"] if b["namespace"] == "diverged"]

    entry = wait_for(blocked, message="the namespace to be reported blocked")[0]
    assert entry["peer"] == foreign and entry["code"] == "malformed_changes" and "zzz" in entry["reason"]
    with n2.client() as c:
        metrics = c.get("/metrics").text
        assert "edgenode_state_blocked_namespaces 1.0" in metrics
        assert 'edgenode_state_merge_refusals_total{code="malformed_changes"}' in metrics
        assert "edgenode_replication_refused_total" in metrics
    # Its heartbeat says so to the rest of the fleet.
    wait_for(lambda: any(m["blocked_namespaces"] == 1 for m in cluster(n1)["members"] if m["node_id"] == n2.node_id),
             message="the blocked count in the node's heartbeat")
    # Every other namespace goes on converging.
    with n1.client() as c:
        assert c.put("/v1/kv/after-block/k", content=b"still flowing").status_code == 200
    with n2.client() as c:
        wait_for(lambda: c.get("/v1/kv/after-block/k").content == b"still flowing",
                 message="another namespace to replicate past the blocked one")


async def _delete_consumer(port: int, stream: str, name: str) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        await nc.jetstream().delete_consumer(stream, name)
    finally:
        await nc.close()


def test_a_node_whose_stream_consumer_is_lost_makes_it_again(fleet: list[NodeProcess]) -> None:
    node = fleet[3]
    stream = cluster(node)["stream"]["name"]
    asyncio.run(_delete_consumer(_client_port(fleet[0]), stream, f"state-{node.node_id}"))
    with fleet[0].client() as c:
        assert c.put("/v1/kv/shared/after-consumer-loss", content=b"again").status_code == 200
    with node.client() as c:
        wait_for(lambda: c.get("/v1/kv/shared/after-consumer-loss").content == b"again",
                 message="the node to read the stream again from where it was")


def test_a_dead_child_server_is_restarted(fleet: list[NodeProcess]) -> None:
    node = fleet[1]
    before = child_pid(node)
    assert before is not None
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: (pid := child_pid(node)) is not None and pid != before and pid,
             message="the node to start its server again")
    with fleet[0].client() as c:
        assert c.put("/v1/kv/shared/after-restart", content=b"ok").status_code == 200
    with node.client() as c:
        wait_for(lambda: c.get("/v1/kv/shared/after-restart").content == b"ok",
                 message="writes to reach the node whose server restarted")


async def _consumer_hosts(port: int, stream: str, durables: list[str]) -> list[str | None]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        out: list[str | None] = []
        for name in durables:
            info = await nc.jetstream().consumer_info(stream, name)
            out.append(info.cluster.leader if info.cluster else None)
        return out
    finally:
        await nc.close()


def _durable(node: NodeProcess) -> str:
    path = node.data_dir / "replication.json"
    generation = json.loads(path.read_text()).get("consumer_generation", 0) if path.exists() else 0
    return f"state-{node.node_id}" + (f"-{generation}" if generation else "")


def _tombstones(node: NodeProcess, namespace: str) -> list[str]:
    """The deleted keys' tombstones in the node's own namespace file."""
    paths = list(node.data_dir.glob(f"**/default/{namespace}.db"))
    if not paths:
        return []
    conn = sqlite3.connect(f"file:{paths[0]}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT pk FROM _crdt_clock WHERE deleted = 1 ORDER BY pk")]
    finally:
        conn.close()


def _delete_everywhere(nodes: list[NodeProcess], namespace: str, key: str) -> None:
    with nodes[0].client() as c:
        assert c.put(f"/v1/kv/{namespace}/{key}", content=b"soon gone").status_code == 200
        assert c.put(f"/v1/kv/{namespace}/stays", content=b"here").status_code == 200
    wait_for(lambda: converged(nodes, namespace, {key: b"soon gone", "stays": b"here"}),
             message="both keys on every node")
    with nodes[1].client() as c:
        assert c.delete(f"/v1/kv/{namespace}/{key}").status_code in (200, 204)
    wait_for(lambda: converged(nodes, namespace, {"stays": b"here"}), message="the delete on every node")


def test_a_tombstone_goes_once_every_member_has_seen_the_delete(fleet: list[NodeProcess]) -> None:
    _delete_everywhere(fleet, "tomb", "k1")
    wait_for(lambda: all(_tombstones(n, "tomb") == [] for n in fleet),
             message="every node to collect the tombstone every member has seen")
    assert all(cluster(n)["tombstones"]["collected"] >= 1 for n in fleet)
    # Nothing brings the key back: later writes and catch-ups go on without it.
    with fleet[3].client() as c:
        assert c.put("/v1/kv/tomb/later", content=b"x").status_code == 200
    wait_for(lambda: converged(fleet, "tomb", {"stays": b"here", "later": b"x"}), message="the later write")


def test_kill_9_of_a_node_shows_it_down_everywhere_and_takes_its_server(fleet: list[NodeProcess]) -> None:
    # Kill a node whose server holds another node's stream consumer, if there is one: that node
    # must notice its consumer is gone with the server and make it again elsewhere.
    stream = cluster(fleet[0])["stream"]["name"]
    hosts = asyncio.run(_consumer_hosts(_client_port(fleet[0]), stream, [_durable(n) for n in fleet[1:]]))
    by_id = {n.node_id: n for n in fleet[1:]}
    elsewhere = [by_id[h] for n, h in zip(fleet[1:], hosts, strict=True) if h in by_id and h != n.node_id]
    victim = elsewhere[0] if elsewhere else fleet[2]
    server = child_pid(victim)
    assert server is not None and victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)  # the node only: its server must follow by itself
    victim.proc.wait(30)
    wait_for(lambda: child_pid(victim) is None, message="the dead node's nats-server to exit")
    others = [n for n in fleet if n is not victim]
    for n in others:
        # Listed and marked down, in one reading (not merely absent from the healthy ones).
        def marked_down(n: NodeProcess = n) -> bool:
            return any(m["node_id"] == victim.node_id and m["healthy"] is False for m in cluster(n)["members"])

        wait_for(marked_down, message=f"{n.node_id} to mark it down")
    with others[0].client() as c:  # the rest of the fleet goes on
        assert c.put("/v1/kv/shared/after-kill", content=b"four").status_code == 200
    for n in others:
        with n.client() as c:
            wait_for(lambda c=c: c.get("/v1/kv/shared/after-kill").content == b"four",
                     message="a write after the kill to reach every live node")


def test_no_tombstone_goes_while_a_member_is_down(fleet: list[NodeProcess]) -> None:
    live = [n for n in fleet if n.proc is not None and n.proc.poll() is None]
    dead = [n for n in fleet if n not in live]
    assert dead, "runs after the kill -9 test, with its node still down"
    _delete_everywhere(live, "tomb2", "k2")

    def skipped_for_the_dead_node() -> bool:
        last = cluster(live[0])["tombstones"]
        return "skipped" in last["last_round"] and dead[0].node_id in last["last_round"]

    wait_for(skipped_for_the_dead_node, message="a collection round that names the down member")
    # Rounds go on every second; the dead member may still hold the row, so the tombstone stays.
    assert all(_tombstones(n, "tomb2") == ['["k2"]'] for n in live)
