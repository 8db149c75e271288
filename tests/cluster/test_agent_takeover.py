"""Agents that outlive their node: three real nodes, kill -9 of a run's owner, the run finishes elsewhere.

The agent charges (a step calling a side-effect server on loopback with an idempotency
key), asks a model (the loopback model double, through a gate here), waits for approval and
ships (another step). The side-effect server can hold a key's first call until the test
lets it go, so a kill lands inside a step or inside the model call on purpose, not by luck.
Tests that need all three nodes come first; each kill test but the last restarts the node.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from edgenode.agents.lease import Leases, token
from edgenode.cluster.transport import NatsTransport
from tests.agents.helpers import FAST as AGENTS_FAST
from tests.agents.helpers import deploy
from tests.agents.model_servers import ModelServer
from tests.cluster.helpers import KEYS, run_status, start_fleet, wait_members
from tests.support import NodeProcess, wait_for

AGENT = """
import json
import urllib.request


def call(url, key):
    request = urllib.request.Request(url + "/effect?key=" + key, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def run(ctx, input):
    url, rid = input["effects"], input["id"]
    charge = ctx.step("charge", lambda: call(url, rid + ":charge"))
    answer = ctx.model("local:m").chat([{"role": "user", "content": "quote " + rid}])
    decision = ctx.approval("ship?", {"id": rid})
    ship = ctx.step("ship", lambda: call(url, rid + ":ship"))
    return {"approved": decision.approved, "answer": answer.text, "charge": charge, "ship": ship}
"""


NAP = """
import json
import urllib.request


def run(ctx, input):
    ctx.sleep(input["s"])
    url = input["effects"]

    def after():
        request = urllib.request.Request(url + "/effect?key=" + input["id"] + ":after", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())

    return ctx.step("after", after)
"""


BOX = """
def run(ctx, input):
    box = input["box"]
    ctx.sandbox_write(box, "plan.txt", "written before the kill")
    built = ctx.sandbox_exec(box, "mkdir notes && mv plan.txt notes/ && echo built > out.txt"
                                  " && chmod +x out.txt && echo ok")
    decision = ctx.approval("keep?", {"box": box})
    # Read back on whichever node runs this now: the workspace followed the run.
    listing = ctx.sandbox_exec(box, "cat notes/plan.txt; echo; cat out.txt; test -x out.txt && echo executable")
    return {"approved": decision.approved, "built": built["stdout"], "listing": listing["stdout"]}
"""


class Effects:
    """Records side effects by idempotency key; holds a key's first call while the key is in ``hold``.

    ``/model/...`` is passed on to the model double the same way (held while the run id in
    the prompt is in ``hold``), so a test can stop a node inside its model call.
    """

    def __init__(self, model_url: str) -> None:
        self.calls: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                if url.path.startswith("/model/"):
                    key = "model:" + _run_in_prompt(body)
                else:
                    key = parse_qs(url.query)["key"][0]
                with server.lock:
                    n = server.calls[key] = server.calls.get(key, 0) + 1
                gate = server.hold.get(key)
                if gate is not None and n == 1:
                    gate.wait(120)  # bounded: a failing test must not hang the server
                if url.path.startswith("/model/"):
                    forward = urllib.request.Request(model_url + url.path[len("/model"):], data=body,
                                                     headers={"content-type": "application/json"})
                    with urllib.request.urlopen(forward, timeout=30) as reply:
                        raw = reply.read()
                else:
                    raw = json.dumps({"key": key, "call": n}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def held(self, key: str) -> threading.Event:
        gate = self.hold[key] = threading.Event()
        return gate

    def close(self) -> None:
        for gate in self.hold.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _run_in_prompt(body: bytes) -> str:
    messages = json.loads(body or b"{}").get("messages") or [{}]
    return str(messages[-1].get("content", "")).removeprefix("quote ")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NodeProcess], Effects]]:
    with ModelServer() as models:
        effects = Effects(models.url)
        env = {**AGENTS_FAST, "EDGENODE_AGENTS_LEASE_TTL_S": "2", "EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8",
               "EDGENODE_AGENTS_MODEL_ENDPOINTS": f"local={effects.url}/model/compat/v1",
               "EDGENODE_AGENTS_MODEL_RETRIES": "0", "EDGENODE_AGENTS_MODEL_TIMEOUT_S": "60"}
        nodes = start_fleet(tmp_path_factory.mktemp("takeover"), 3, env=env)
        try:
            wait_members(nodes)
            # The first node made the streams alone; a kill is survivable once they have three copies.
            # (Only n3 is ever killed: the members bucket keeps one copy, on the first node.)
            wait_for(lambda: not _fewer_copies(nodes[0]), timeout=60, message="every fleet stream on three servers")
            with nodes[0].client() as c:
                deploy(c, "shop", AGENT)
                deploy(c, "nap", NAP)
                deploy(c, "kid", "def run(ctx, input):\n    return ctx.wait_for_event('go')\n")
                deploy(c, "boss", "def run(ctx, input):\n    return ctx.call_agent('kid', input)\n")
                deploy(c, "box", BOX)
            for n in nodes:
                for agent in ("shop", "nap", "kid", "boss", "box"):
                    wait_for(lambda n=n, a=agent: _get(n, f"/v1/agents/{a}").status_code == 200,
                             message="the deployments")
            yield nodes, effects
        finally:
            effects.close()
            for n in nodes:
                n.stop()


def _port(node: NodeProcess) -> int:
    port: int = json.loads((node.data_dir / "nats" / "ports.json").read_text())["client"]
    return port


async def _stream_replicas(port: int) -> dict[str, int]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        return {s.config.name or "": int(s.config.num_replicas or 1) for s in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


def _fewer_copies(node: NodeProcess) -> dict[str, int]:
    """The agent journal and lease streams, if either has fewer than three copies."""
    return {name: n for name, n in asyncio.run(_stream_replicas(_port(node))).items()
            if name.endswith(("_AGENTS", "_KV_LEASES")) and n < 3}


def _get(node: NodeProcess, path: str) -> httpx.Response:
    with node.client() as c:
        return c.get(path)


def _run(node: NodeProcess, run_id: str) -> dict[str, Any] | None:
    r = _get(node, f"/v1/agents/runs/{run_id}")
    return r.json() if r.status_code == 200 else None



def _fleet(node: NodeProcess) -> dict[str, Any]:
    data: dict[str, Any] = _get(node, "/v1/status").json()["capabilities"]["agents"]["fleet"]
    return data


def _start(node: NodeProcess, effects: Effects, run_id: str) -> None:
    with node.client() as c:
        r = c.post("/v1/agents/shop/runs", json={"id": run_id, "input": {"effects": effects.url, "id": run_id}})
        assert r.status_code == 201, r.text
        assert r.json()["placement"] == "fleet"


def _finish_elsewhere(nodes: list[NodeProcess], run_id: str) -> dict[str, Any]:
    """Approve on one survivor once the run waits there; the run completes, seen from the other."""
    a, b = nodes
    wait_for(lambda: run_status(a, run_id, "waiting"), timeout=60, message=f"{run_id} to wait for approval")
    with a.client() as c:
        def approved() -> bool:
            # 503 with Retry-After while the dead owner's lease runs out: a client tries again.
            r = c.post(f"/v1/agents/runs/{run_id}/approve", json={"comment": "ok"})
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                time.sleep(float(r.headers.get("retry-after", "1")))
            return r.status_code == 200

        wait_for(approved, timeout=60, message=f"the approval of {run_id} to be taken")
    run: dict[str, Any] = wait_for(lambda: run_status(b, run_id, "completed"), timeout=60,
                                   message=f"{run_id} to complete")
    return run


def _once_each(node: NodeProcess, run_id: str) -> list[dict[str, Any]]:
    """The run's journal, after checking each journaled call is there exactly once, settled."""
    journal: list[dict[str, Any]] = _get(node, f"/v1/agents/runs/{run_id}/history").json()["journal"]
    names = [(e["kind"], e["name"]) for e in journal]
    assert names == [("step", "charge"), ("model.chat", "local:m"), ("approval", "ship?"), ("step", "ship")], names
    assert all(e["status"] == "ok" for e in journal)
    return journal


async def _read_records(port: int, key: str) -> list[dict[str, Any]]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        js = nc.jetstream()
        stream = next(s.config for s in await js.streams_info() if (s.config.name or "").endswith("_AGENTS"))
        subject = (stream.subjects or [""])[0].replace(">", token(key))
        out, seq = [], 1
        while True:
            try:
                msg = await js.get_msg(stream.name or "", seq, subject=subject, next=True)
            except NotFoundError:
                return out
            out.append(json.loads(msg.data or b"{}"))
            seq = int(msg.seq or 0) + 1
    finally:
        await nc.close()


def _recorded_once(node: NodeProcess, run_id: str) -> None:
    """In the replicated journal itself: each position settled in one record, the outcome in one record."""
    records = asyncio.run(_read_records(_port(node), f"default/{run_id}"))
    settled = [e[0] for r in records for e in r["entries"] if e[5] in ("ok", "error")]
    assert sorted(settled) == [0, 1, 2, 3], settled
    assert [r["run"]["status"] for r in records].count("completed") == 1, [
        (r["node"], r["fence"], r["run"]["status"]) for r in records]
    fences = [r["fence"] for r in records]
    assert fences == sorted(fences)  # a later owner's fence is higher; no record of an older one after it


def _restart(node: NodeProcess, others: list[NodeProcess]) -> None:
    node.start()
    wait_members([node, *others])


def test_a_former_owner_that_lost_its_lease_cannot_append(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    refused = _fleet(n3)["appends_refused"]
    gate = effects.held("f:charge")
    _start(n3, effects, "f")
    wait_for(lambda: effects.calls.get("f:charge") == 1, message="the owner to be inside its first step")
    n3.signal(signal.SIGSTOP)
    try:
        # Paused past its lease: another node takes the run over and runs the step again.
        wait_for(lambda: run_status(n1, "f", "waiting"), timeout=60, message="f to be taken over and park")
        assert effects.calls["f:charge"] == 2
        gate.set()  # the paused owner's step now finishes; it offers the result when it wakes
    finally:
        n3.signal(signal.SIGCONT)
    wait_for(lambda: _fleet(n3)["appends_refused"] > refused, timeout=60, message="the stale append to be refused")
    # It stopped the run locally and re-read its copy: the run waits for approval, as on the others.
    wait_for(lambda: run_status(n3, "f", "waiting"), timeout=60, message="the former owner's copy")
    assert _get(n3, "/v1/status").json()["capabilities"]["agents"]["active"] == 0
    run = _finish_elsewhere([n3, n2], "f")
    assert run["output"]["charge"] == {"key": "f:charge", "call": 2}
    for node in (n1, n2, n3):
        journal = _once_each(node, "f")
        assert journal[0]["result"] == {"key": "f:charge", "call": 2}
    _recorded_once(n1, "f")


def test_a_cancel_sent_elsewhere_reaches_the_node_running_the_run(
        setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    gate = effects.held("k:charge")
    _start(n3, effects, "k")
    wait_for(lambda: effects.calls.get("k:charge") == 1, message="the owner to be inside its first step")
    forwarded = _fleet(n1)["forwarded"]
    with n1.client() as c:
        r = c.post("/v1/agents/runs/k/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert _fleet(n1)["forwarded"] == forwarded + 1
    gate.set()
    wait_for(lambda: run_status(n2, "k", "cancelled"), message="the cancel seen on a third node")
    wait_for(lambda: _fleet(n3)["held"] == 0, message="the owner to let the run go")
    with n2.client() as c:
        again = c.post("/v1/agents/runs/k/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"


def test_one_of_many_contenders_wins_a_lease(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, _ = setup

    async def scenario() -> None:
        t = NatsTransport([f"nats://127.0.0.1:{_port(nodes[0])}"], node_id="t", prefix="edntest",
                          stream_prefix="EDNTEST", user=KEYS.client_user, password=KEYS.client_password, replicas=1)
        await t.connect()
        try:
            bucket = await t.bucket("LEASETEST", ttl_s=60)
            later = [0.0]
            contenders = [Leases(bucket, f"c{i}", ttl_s=5, now=lambda: time.time() + later[0]) for i in range(8)]
            won = await asyncio.gather(*(c.acquire("default/x") for c in contenders))
            winners = [(c, lease) for c, lease in zip(contenders, won, strict=True) if lease is not None]
            assert len(winners) == 1
            first, lease = winners[0]
            assert await first.renew(lease) and not lease.lost
            other = next(c for c in contenders if c is not first)
            assert await other.acquire("default/x") is None  # held and renewed
            later[0] = 10.0  # past the TTL without a renewal: the holder is gone
            taken = await other.acquire("default/x")
            assert taken is not None and taken.fence > lease.fence
            later[0] = 0.0  # back to now: the new lease is fresh
            assert not await first.renew(lease) and lease.lost
            await first.release(lease)  # a former holder's release changes nothing
            holder, _ = await other.holder("default/x")
            assert holder is not None and holder.node == other.node_id
            await other.release(taken)
            assert (await other.holder("default/x"))[0] is None
        finally:
            await t.close()

    asyncio.run(scenario())


def test_a_local_run_stays_on_its_node(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, _ = nodes
    with n2.client() as c:
        r = c.post("/v1/agents/shop/runs", json={"id": "pinned", "placement": "local",
                                                 "input": {"effects": effects.url, "id": "pinned"}})
        assert r.status_code == 201 and r.json()["placement"] == "local", r.text
        bad = c.post("/v1/agents/shop/runs", json={"placement": "everywhere"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_failed"
    wait_for(lambda: run_status(n2, "pinned", "waiting"), message="the pinned run to park")
    assert _run(n1, "pinned") is None  # never replicated
    with n2.client() as c:
        assert c.post("/v1/agents/runs/pinned/approve", json={}).status_code == 200
    wait_for(lambda: run_status(n2, "pinned", "completed"), message="the pinned run to complete")


def test_cancelling_a_parent_on_another_node_cancels_its_sub_agent(
        setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, _ = setup
    n1, n2, n3 = nodes
    with n2.client() as c:
        assert c.post("/v1/agents/boss/runs", json={"id": "boss"}).status_code == 201
    # The sub-agent's run is a fleet run of its own, replicated like its parent.
    kid = wait_for(lambda: run_status(n3, "boss.0", "waiting"), message="the sub-agent to wait, seen on n3")
    assert kid["placement"] == "fleet" and kid["parent_id"] == "boss"
    with n1.client() as c:
        r = c.post("/v1/agents/runs/boss/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    wait_for(lambda: run_status(n3, "boss.0", "cancelled"), message="the sub-agent cancelled with its parent")
    assert run_status(n2, "boss", "cancelled")


def test_kill_9_of_the_owner_in_a_step(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    gate = effects.held("a:charge")
    _start(n3, effects, "a")
    wait_for(lambda: effects.calls.get("a:charge") == 1, message="the owner to be inside its first step")
    n3.kill()
    gate.set()  # the killed owner's call ends unanswered; the new owner's goes through at once
    run = _finish_elsewhere([n1, n2], "a")
    assert run["output"]["approved"] is True
    # The step ran again on the new owner (at least once), and is journaled once, with that result.
    assert effects.calls["a:charge"] == 2 and effects.calls["a:ship"] == 1
    for node in (n1, n2):
        journal = _once_each(node, "a")
        assert journal[0]["result"] == {"key": "a:charge", "call": 2} == run["output"]["charge"]
    assert sum(_fleet(n)["takeovers"] for n in (n1, n2)) >= 1
    _recorded_once(n1, "a")
    _restart(n3, [n1, n2])
    # The old owner's copy catches up from the stream: the run it lost is completed there too.
    wait_for(lambda: run_status(n3, "a", "completed"), timeout=60, message="the restarted node's copy")
    assert _once_each(n3, "a") == _once_each(n1, "a")


def test_kill_9_of_the_owner_during_the_model_call(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    gate = effects.held("model:b")
    _start(n3, effects, "b")
    wait_for(lambda: effects.calls.get("model:b") == 1, message="the owner to be inside its model call")
    n3.kill()
    gate.set()
    run = _finish_elsewhere([n2, n1], "b")
    assert run["output"]["answer"] == "echo: quote b"
    assert effects.calls["b:charge"] == 1 and effects.calls["model:b"] == 2 and effects.calls["b:ship"] == 1
    for node in (n1, n2):
        _once_each(node, "b")
    _recorded_once(n2, "b")
    _restart(n3, [n1, n2])


def test_a_timer_fires_once_when_the_node_that_set_it_is_gone(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    with n3.client() as c:
        r = c.post("/v1/agents/nap/runs", json={"id": "t", "input": {"effects": effects.url, "id": "t", "s": 3}})
        assert r.status_code == 201, r.text
    wait_for(lambda: run_status(n1, "t", "waiting"), message="the timer set, seen on another node")
    n3.kill()
    # Both survivors see the timer due in their copy; the lease lets exactly one of them fire it.
    run = wait_for(lambda: run_status(n2, "t", "completed"), timeout=60, message="the timer to fire elsewhere")
    assert run["output"] == {"key": "t:after", "call": 1} and effects.calls["t:after"] == 1
    for node in (n1, n2):
        journal = _get(node, "/v1/agents/runs/t/history").json()["journal"]
        assert [(e["kind"], e["status"]) for e in journal] == [("sleep", "ok"), ("step", "ok")]
    _restart(n3, [n1, n2])


def test_kill_9_of_the_owner_while_parked(setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, effects = setup
    n1, n2, n3 = nodes
    _start(n3, effects, "c")
    wait_for(lambda: run_status(n3, "c", "waiting"), message="c to park")
    # Parked: no lease held for it anywhere, and every node lists it and its approval.
    wait_for(lambda: _fleet(n3)["held"] == 0, message="the parked run's lease to be released")
    for node in (n1, n2):
        wait_for(lambda node=node: any(a["run"] == "c" for a in _get(node, "/v1/agents/approvals")
                                       .json()["approvals"]), message="the approval listed on every node")
        assert "c" in {r["id"] for r in _get(node, "/v1/agents/runs").json()["runs"]}
    n3.kill()
    run = _finish_elsewhere([n1, n2], "c")
    assert run["output"]["approved"] is True
    assert effects.calls["c:charge"] == 1 and effects.calls["model:c"] == 1 and effects.calls["c:ship"] == 1
    for node in (n1, n2):
        _once_each(node, "c")
    _recorded_once(n1, "c")


def test_kill_9_of_the_first_node_while_parked_its_sandbox_files_follow_the_run(
        setup: tuple[list[NodeProcess], Effects]) -> None:
    nodes, _ = setup
    n1, n2, n3 = nodes
    if n3.proc is None or n3.proc.poll() is not None:
        _restart(n3, [n1, n2])  # the previous test left it dead; three servers keep a quorum after the kill
    # The first node made the fleet's streams alone; every one of them has three copies by now.
    wait_for(lambda: all(n == 3 for name, n in asyncio.run(_stream_replicas(_port(n2))).items()
                         if name.startswith(("EDGENODE", "EDN")) and "TEST" not in name),
             timeout=60, message="every fleet stream on three servers")
    with n1.client() as c:
        r = c.post("/v1/sandboxes", json={"name": "keeper"})
        assert r.status_code == 201, r.text
        box = r.json()["id"]
        r = c.post("/v1/agents/box/runs", json={"id": "s", "input": {"box": box}})
        assert r.status_code == 201 and r.json()["placement"] == "fleet", r.text
    wait_for(lambda: run_status(n2, "s", "waiting"), timeout=60, message="the sandbox run to park, seen on n2")
    wait_for(lambda: _get(n2, f"/v1/sandboxes/{box}/checkpoints").status_code == 200, timeout=60,
             message="the sandbox's checkpoint, seen on n2")
    n1.kill()  # the first node: its HTTP URL was every other node's peer
    run = _finish_elsewhere([n2, n3], "s")
    assert run["output"]["approved"] is True and run["output"]["built"].strip() == "ok"
    assert run["output"]["listing"].split() == ["written", "before", "the", "kill", "built", "executable"]
    journal = _get(n3, "/v1/agents/runs/s/history").json()["journal"]
    assert [(e["kind"], e["status"]) for e in journal] == [
        ("tool.sandbox_write", "ok"), ("tool.sandbox_exec", "ok"), ("approval", "ok"), ("tool.sandbox_exec", "ok")]
