"""Ref gossip between real nodes: propagation, divergent pushes, forged announcements, anti-entropy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgenode.artifacts.gossip import ANNOUNCE_PATH, check_peer_password, peer_password, sign
from edgenode.cluster.signing import sign as sign_request
from tests.artifacts.gitutil import api_commit, create_repo, git, git_url, repo_dir, repo_token
from tests.support import NodeProcess, wait_for

SECRET = "test-fleet-secret-for-artifacts"
ADMIN = "edn_admin_artifacts_fleet_admin_token_0123456789"
BOUND_S = 30.0  # generous: the pass/fail check is convergence, not speed


def _env() -> dict[str, str]:
    return {
        "EDGENODE_FLEET_SECRET": SECRET,
        "EDGENODE_ADMIN_TOKEN": ADMIN,
        "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.5",
        "EDGENODE_ARTIFACTS_ANTI_ENTROPY_INTERVAL_S": "1",
    }


def _peers(node: NodeProcess) -> set[str]:
    with node.client() as c:
        return {p["url"] for p in c.get("/v1/cluster").json()["peers"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    root = tmp_path_factory.mktemp("fleet")
    nodes: list[NodeProcess] = []
    try:
        first = NodeProcess(root / "n1", env=_env()).start()
        nodes.append(first)
        for name in ("n2", "n3"):
            nodes.append(NodeProcess(root / name, env=_env(), args=[a for n in nodes for a in ("--peer", n.url)])
                         .start())
        for node in nodes:
            others = {n.url for n in nodes if n is not node}
            wait_for(lambda node=node, others=others: others <= _peers(node), timeout=20, message="peer exchange")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _refs(node: NodeProcess, repo: str) -> dict[str, str]:
    with node.client() as c:
        r = c.get(f"/v1/repos/{repo}/refs")
        return dict(r.json()["refs"]) if r.status_code == 200 else {}


def _shared(refs: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in refs.items() if k.startswith(("refs/heads/", "refs/tags/"))}


def test_push_to_one_node_reaches_the_others(fleet: list[NodeProcess], tmp_path: Path) -> None:
    n1, n2, n3 = fleet
    with n1.client() as api:
        create_repo(api, "shared")
        api_commit(api, "shared", {"a.txt": "1\n"})
        git("clone", git_url(n1, "shared", repo_token(api, "shared")), "w", cwd=tmp_path)
    w = tmp_path / "w"
    for i in range(3):
        (w / f"f{i}.txt").write_text(f"{i}\n")
        git("add", ".", cwd=w)
        git("commit", "-qm", f"c{i}", cwd=w)
    git("checkout", "-qb", "topic", cwd=w)
    git("tag", "v1", cwd=w)
    git("push", "origin", "main", "topic", "v1", cwd=w)
    expected = _shared(_refs(n1, "shared"))
    assert len(expected) == 3

    for other in (n2, n3):
        wait_for(lambda other=other: _shared(_refs(other, "shared")) == expected, timeout=BOUND_S,
                 message=f"refs on {other.url}")
        assert git("fsck", "--full", cwd=repo_dir(other, "shared"), check=False).returncode == 0
    # A clone from another node has the same history.
    with n3.client() as api3:
        git("clone", git_url(n3, "shared", repo_token(api3, "shared")), "from3", cwd=tmp_path)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "from3").stdout.strip() == expected["refs/heads/main"]

    # An API commit on the second node travels back to the first.
    with n2.client() as api2:
        moved = api_commit(api2, "shared", {"b.txt": "from n2\n"}, parent=expected["refs/heads/main"])
    for other in (n1, n3):
        wait_for(lambda other=other: _refs(other, "shared").get("refs/heads/main") == moved, timeout=BOUND_S,
                 message="API commit propagation")
    with n1.client() as api1:
        kinds = {e["kind"] for e in api1.get("/v1/repos/shared/events").json()["events"]}
    assert "sync" in kinds


def test_divergent_concurrent_pushes_keep_both_histories(fleet: list[NodeProcess], tmp_path: Path) -> None:
    n1, n2, n3 = fleet
    with n1.client() as api:
        create_repo(api, "split")
        base = api_commit(api, "split", {"base.txt": "base\n"})
    wait_for(lambda: all(_refs(n, "split").get("refs/heads/main") == base for n in fleet), timeout=BOUND_S,
             message="base everywhere")

    clones = {}
    for name, node in (("a", n1), ("b", n2)):
        with node.client() as api:
            git("clone", git_url(node, "split", repo_token(api, "split")), name, cwd=tmp_path)
        work = tmp_path / name
        (work / f"{name}.txt").write_text(f"only on {name}\n")
        git("add", ".", cwd=work)
        git("commit", "-qm", f"divergent {name}", cwd=work)
        clones[name] = (work, git("rev-parse", "HEAD", cwd=work).stdout.strip())

    errors: list[str] = []

    # --force on an unprotected branch: whichever order the pushes and the gossip meet in,
    # each node takes its own client's push (a plain push could lose the race to gossip and
    # be refused by git as not a fast-forward, which keeps nothing to test).
    # The gossip of the other push may also land between this push's reading of the ref and its
    # compare-and-swap: the node refuses that push ("failed to write": the ref changed during the
    # push), as git does, and the client pushes again, as a user would.
    def push(work: Path) -> None:
        for _ in range(5):
            result = git("push", "--force", "origin", "main:work", cwd=work, check=False)
            if result.returncode == 0 or "failed to write" not in result.stderr:
                break
        if result.returncode != 0:
            errors.append(result.stderr)

    threads = [threading.Thread(target=push, args=(clones[k][0],)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    a, b = clones["a"][1], clones["b"][1]

    def both_kept(node: NodeProcess) -> bool:
        refs = _refs(node, "split")
        kept = {v for k, v in refs.items() if k == "refs/heads/work" or k.startswith("refs/conflicts/")}
        return {a, b} <= kept

    for node in fleet:
        wait_for(lambda node=node: both_kept(node), timeout=BOUND_S, message=f"both histories on {node.url}")
    # The node that took a push keeps its own main and files the other under refs/conflicts/<origin>/.
    # (Under refs/conflicts/<the node it came from>/: which node that is depends on the order the
    # pushes, a retried push and the gossip met in.)
    for node, own, other in ((n1, a, b), (n2, b, a)):
        refs = _refs(node, "split")
        assert refs["refs/heads/work"] == own
        assert other in {v for k, v in refs.items() if k.startswith("refs/conflicts/") and k.endswith("/heads/work")}
    with n1.client() as api:
        conflicts = api.get("/v1/repos/split/events?kind=conflict").json()["events"]
    assert conflicts and conflicts[0]["kept_as"].startswith("refs/conflicts/")
    for node in fleet:
        assert git("fsck", "--full", cwd=repo_dir(node, "split"), check=False).returncode == 0


def _signed_post(node: NodeProcess, body: bytes, *, secret: str = SECRET) -> httpx.Response:
    headers = sign_request(secret.encode(), "POST", ANNOUNCE_PATH, body, node_id="nforger", url="")
    headers["content-type"] = "application/json"
    return httpx.post(node.url + ANNOUNCE_PATH, content=body, headers=headers)


def test_forged_and_unsigned_announcements_are_refused(fleet: list[NodeProcess]) -> None:
    n1 = fleet[0]
    fake = "1" * 40
    announcement = {"v": 1, "kind": "refs", "tenant": "default", "repo": "forged", "created_at": time.time(),
                    "default_branch": "main", "fork_of": None, "origin": "nforger", "url": "http://127.0.0.1:9",
                    "at": time.time(), "nonce": "x", "updates": [{"ref": "refs/heads/main", "old": None, "new": fake}]}
    body = json.dumps(announcement).encode()

    # No request signature at all, or a client bearer token: the peer layer refuses.
    r = httpx.post(n1.url + ANNOUNCE_PATH, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "peer_auth_failed"
    r = httpx.post(n1.url + ANNOUNCE_PATH, content=body, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "peer_auth_failed"
    # A request signed with the wrong fleet key.
    r = _signed_post(n1, body, secret="not-the-fleet-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "peer_auth_failed"
    # A validly signed request whose announcement carries no signature of its own.
    r = _signed_post(n1, body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "announcement_rejected"
    # ...or a forged one, or one signed and then altered.
    r = _signed_post(n1, json.dumps({**announcement, "sig": "0" * 64}).encode())
    assert r.status_code == 401 and r.json()["error"]["code"] == "announcement_rejected"
    signed = sign(b"another-key", announcement)
    r = _signed_post(n1, json.dumps(signed).encode())
    assert r.status_code == 401 and r.json()["error"]["code"] == "announcement_rejected"
    tampered = {**sign(SECRET.encode(), announcement), "repo": "other"}
    r = _signed_post(n1, json.dumps(tampered).encode())
    assert r.status_code == 401 and r.json()["error"]["code"] == "announcement_rejected"
    # A stale one, correctly signed.
    stale = sign(SECRET.encode(), {**announcement, "at": time.time() - 3600})
    r = _signed_post(n1, json.dumps(stale).encode())
    assert r.status_code == 401 and r.json()["error"]["code"] == "announcement_rejected"
    # Malformed JSON behind a valid request signature.
    r = _signed_post(n1, b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"

    with n1.client() as api:
        assert api.get("/v1/repos/forged").status_code == 404
        assert api.get("/healthz").status_code == 200


def test_peer_read_credential_is_scoped() -> None:
    now = time.time()
    password = peer_password(b"k", "default", "one", "nabc", now)
    assert check_peer_password(b"k", "default", "one", password, now)
    assert not check_peer_password(b"k", "default", "two", password, now)
    assert not check_peer_password(b"other", "default", "one", password, now)
    assert not check_peer_password(b"k", "default", "one", password, now + 3600)
    assert not check_peer_password(b"k", "default", "one", "edp_garbage", now)


def test_peer_credential_reads_but_never_pushes(fleet: list[NodeProcess]) -> None:
    n1 = fleet[0]
    with n1.client() as api:
        create_repo(api, "peerread")
    password = peer_password(SECRET.encode(), "default", "peerread", "nsomeone", time.time())
    base = f"{n1.url}/git/default/peerread.git/info/refs"
    assert httpx.get(base + "?service=git-upload-pack", auth=("peer", password)).status_code == 200
    r = httpx.get(base + "?service=git-receive-pack", auth=("peer", password))
    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only_token"


def test_late_node_catches_up_by_anti_entropy(fleet: list[NodeProcess], tmp_path: Path) -> None:
    n1 = fleet[0]
    with n1.client() as api:
        create_repo(api, "before-join")
        head = api_commit(api, "before-join", {"early.txt": "missed every announcement\n"})
    # This node joins after the fact: it only learns through anti-entropy.
    late = NodeProcess(tmp_path / "late", env=_env(), args=["--peer", n1.url]).start()
    try:
        wait_for(lambda: _refs(late, "before-join").get("refs/heads/main") == head, timeout=BOUND_S,
                 message="anti-entropy catch-up")
        # Every other repository of the fleet comes along too.
        wait_for(lambda: _shared(_refs(late, "shared")) == _shared(_refs(n1, "shared")), timeout=BOUND_S,
                 message="older repositories on the late node")
    finally:
        late.stop()


def test_deletes_travel_and_are_not_resurrected(fleet: list[NodeProcess]) -> None:
    n1, n2, n3 = fleet

    def exists(node: NodeProcess) -> bool:
        with node.client() as c:
            return c.get("/v1/repos/doomed").status_code == 200

    with n1.client() as api:
        create_repo(api, "doomed")
        api_commit(api, "doomed", {"a": "1"})
    wait_for(lambda: exists(n2) and exists(n3), timeout=BOUND_S, message="repository on every node")
    with n2.client() as api2:
        assert api2.delete("/v1/repos/doomed").status_code == 204
    wait_for(lambda: not exists(n1) and not exists(n3), timeout=BOUND_S, message="delete everywhere")
    time.sleep(2.5)  # a few anti-entropy rounds: the tombstone keeps it gone
    assert not any(exists(n) for n in fleet)
