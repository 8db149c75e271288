"""Peer routes take only requests signed with the fleet secret; forged or malformed data applies nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgenode.cluster import sign
from edgenode.cluster.hlc import pack
from tests.support import NodeProcess, wait_for

SECRET = "peer-auth-test-secret"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("fleet-node"), env={"EDGENODE_FLEET_SECRET": SECRET})
    proc.start()
    yield proc
    proc.stop()


def signed_post(node: NodeProcess, path: str, body: Any, *, secret: str = SECRET, sender: str = "n-peer",
                now: float | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    h = headers or sign(secret.encode(), "POST", path, content, node_id=sender, url="http://127.0.0.1:9", now=now)
    return httpx.post(node.url + path, content=content, headers={**h, "content-type": "application/json"})


def push_body(key: str, value: bytes = b"v", **row_changes: Any) -> dict[str, Any]:
    import base64

    row = ["_kv", json.dumps([key]), pack(int(time.time() * 1000), 0), "n-peer", 1, 0,
           {"key": key, "value": {"$base64": base64.b64encode(value).decode()}}]
    for index, value_ in row_changes.items():
        row[int(index[1:])] = value_
    return {"namespaces": [{"tenant": "default", "namespace": "auth", "rows": [row], "seen": {"n-peer": [[1, 1]]}}]}


def code(r: httpx.Response) -> str:
    c: str = r.json()["error"]["code"]
    return c


def test_unsigned_and_bearer_requests_are_refused(node: NodeProcess) -> None:
    r = httpx.post(node.url + "/v1/peer/state/push", json=push_body("unsigned"))
    assert r.status_code == 401 and code(r) == "peer_auth_failed"
    with node.client() as admin:  # even the admin token is not a peer credential
        r = admin.post("/v1/peer/state/push", json=push_body("bearer"))
        assert r.status_code == 401 and code(r) == "peer_auth_failed"
        r = admin.post("/v1/peer/cluster/hello", json={})
        assert r.status_code == 401
        assert admin.get("/v1/kv/auth/unsigned").status_code == 404
        assert admin.get("/v1/kv/auth/bearer").status_code == 404


@pytest.mark.parametrize("how", ["wrong-secret", "stale", "tampered-body", "replay"])
def test_forged_requests_are_refused_and_nothing_is_applied(node: NodeProcess, how: str) -> None:
    key = f"forged-{how}"
    body = push_body(key)
    path = "/v1/peer/state/push"
    if how == "wrong-secret":
        r = signed_post(node, path, body, secret="not-the-fleet-secret")
    elif how == "stale":
        r = signed_post(node, path, body, now=time.time() - 3600)
    elif how == "tampered-body":
        content = json.dumps(body).encode()
        h = sign(SECRET.encode(), "POST", path, content, node_id="n-peer", url="http://127.0.0.1:9")
        r = signed_post(node, path, push_body(key, b"evil"), headers=h)
    else:
        content = json.dumps(push_body("replay-first")).encode()
        h = sign(SECRET.encode(), "POST", path, content, node_id="n-peer", url="http://127.0.0.1:9")
        assert signed_post(node, path, content, headers=h).status_code == 200
        with node.client() as admin:
            admin.delete("/v1/kv/auth/replay-first")
        r = signed_post(node, path, content, headers=h)  # the same request again
        key = "replay-first"
    assert r.status_code == 401 and code(r) == "peer_auth_failed", r.text
    with node.client() as admin:
        assert admin.get(f"/v1/kv/auth/{key}").status_code == 404


def test_signed_push_applies(node: NodeProcess) -> None:
    r = signed_post(node, "/v1/peer/state/push", push_body("genuine", b"ok"))
    assert r.status_code == 200 and r.json() == {"applied": 1}
    with node.client() as admin:
        assert admin.get("/v1/kv/auth/genuine").content == b"ok"


@pytest.mark.parametrize("body,path", [
    ({"nope": 1}, "/v1/peer/state/push"),
    (push_body("m1", r3="bad origin!"), "/v1/peer/state/push"),
    (push_body("m2", r4=7), "/v1/peer/state/push"),           # a version the sender does not vouch for
    (push_body("m3", r2=-1), "/v1/peer/state/push"),
    (b"{not json", "/v1/peer/state/push"),
    ({"books": {"default/ok": {"n-x": [[5, 1]]}}}, "/v1/peer/state/sync"),
    ({"books": "x"}, "/v1/peer/state/sync"),
])
def test_malformed_changes_are_refused_logged_and_not_applied(node: NodeProcess, body: Any, path: str) -> None:
    if isinstance(body, dict) and body.get("namespaces"):
        # a good namespace beside the bad one: nothing of the request may land
        good = push_body("innocent-bystander")["namespaces"][0]
        good["namespace"] = "bystander"
        body["namespaces"].insert(0, good)
    r = signed_post(node, path, body)
    assert r.status_code == 400 and code(r) in {"malformed_changes", "invalid_json"}, r.text
    with node.client() as admin:
        for key in ("m1", "m2", "m3", "m4"):
            assert admin.get(f"/v1/kv/auth/{key}").status_code == 404
        assert admin.get("/v1/kv/auth/no_such_table").status_code == 404
        assert admin.get("/v1/kv/bystander/innocent-bystander").status_code == 404
        assert admin.get("/healthz").status_code == 200
    assert "refused" in node.log()


def test_a_namespace_that_cannot_merge_blocks_only_itself(node: NodeProcess) -> None:
    body = push_body("m4", r0="no_such_table")  # well formed, but names a table this node lacks
    good = push_body("applied-bystander")["namespaces"][0]
    good["namespace"] = "bystander-2"
    body["namespaces"].insert(0, good)
    r = signed_post(node, "/v1/peer/state/push", body)
    assert r.status_code == 200 and r.json() == {"applied": 1}, r.text
    with node.client() as admin:
        assert admin.get("/v1/kv/bystander-2/applied-bystander").status_code == 200
        assert admin.get("/v1/kv/auth/m4").status_code == 404
        blocked = admin.get("/v1/cluster").json()["blocked_namespaces"]
        assert [(b["namespace"], b["peer"], b["code"]) for b in blocked] == [("auth", "n-peer", "malformed_changes")]
        assert "no_such_table" in blocked[0]["reason"]


def test_signed_hello_is_answered(node: NodeProcess) -> None:
    r = signed_post(node, "/v1/peer/cluster/hello", {"node_id": "n-peer", "url": "http://127.0.0.1:9",
                                                     "peers": [], "seen": {}})
    assert r.status_code == 200 and r.json()["node_id"] == node.node_id


def test_nodes_of_different_fleets_do_not_replicate(tmp_path: Any) -> None:
    fast = {"EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.2", "EDGENODE_CLUSTER_SYNC_INTERVAL_S": "0.3"}
    ours = NodeProcess(tmp_path / "ours", env={**fast, "EDGENODE_FLEET_SECRET": SECRET}).start()
    theirs = NodeProcess(tmp_path / "theirs", env={**fast, "EDGENODE_FLEET_SECRET": "another-fleet"},
                         args=["--peer", ours.url]).start()
    try:
        with theirs.client() as ct, ours.client() as co:
            assert ct.put("/v1/kv/secret/k", content=b"theirs").status_code == 200

            def refused() -> Any:
                peers = ct.get("/v1/cluster").json()["peers"]
                return peers and not peers[0]["healthy"] and "peer_auth_failed" in (peers[0]["last_error"] or "")

            wait_for(refused, timeout=10, message="the other fleet refuses us, and says why")
            time.sleep(0.5)  # a few more rounds of pushes and pulls
            assert co.get("/v1/kv/secret/k").status_code == 404
    finally:
        theirs.stop()
        ours.stop()
