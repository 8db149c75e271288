"""Forks: copy-on-write workspaces that diverge independently, with the source untouched and quotas kept."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node



def _fork(client: httpx.Client, sandbox: str, **body: object) -> dict:
    response = client.post(f"/v1/sandboxes/{sandbox}/fork", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_three_forks_diverge_and_the_source_is_untouched(admin: httpx.Client, sandbox: str) -> None:
    run(admin, sandbox, "mkdir -p src && echo original > src/main.txt && echo shared > keep.txt")
    forks = [_fork(admin, sandbox)["id"] for _ in range(3)]
    for i, fork in enumerate(forks):
        # In place (an append to a file the source wrote), a new file, a delete: each only in this fork.
        result = run(admin, fork, f"echo fix{i} >> src/main.txt && echo {i} > mine.txt && rm keep.txt && id -un")
        assert result["exit_code"] == 0, result
        assert result["stdout"] == "sandbox\n"
    for i, fork in enumerate(forks):
        assert admin.get(f"/v1/sandboxes/{fork}/files/src/main.txt").text == f"original\nfix{i}\n"
        assert run(admin, fork, "ls")["stdout"] == "mine.txt\nsrc\n"
    assert admin.get(f"/v1/sandboxes/{sandbox}/files/src/main.txt").text == "original\n"
    assert run(admin, sandbox, "ls")["stdout"] == "keep.txt\nsrc\n"
    # The source goes on writing; its forks do not see it.
    run(admin, sandbox, "echo later >> src/main.txt")
    assert admin.get(f"/v1/sandboxes/{forks[0]}/files/src/main.txt").text == "original\nfix0\n"
    for fork in forks:
        admin.delete(f"/v1/sandboxes/{fork}")


def test_a_fork_of_a_fork_and_layers_outliving_their_source(admin: httpx.Client, node: NodeProcess) -> None:
    source = admin.post("/v1/sandboxes", json={}).json()["id"]
    run(admin, source, "echo one > a.txt")
    child = _fork(admin, source)["id"]
    run(admin, child, "echo two > b.txt")
    grandchild = _fork(admin, child, name="grandchild")
    assert grandchild["name"] == "grandchild" and grandchild["forked_from"] == child
    assert admin.delete(f"/v1/sandboxes/{source}").status_code == 204
    assert admin.delete(f"/v1/sandboxes/{child}").status_code == 204
    assert run(admin, "grandchild", "cat a.txt b.txt")["stdout"] == "one\ntwo\n"
    layers = node.data_dir / "sandboxes" / "layers"
    assert any(layers.iterdir())
    assert admin.delete("/v1/sandboxes/grandchild").status_code == 204
    assert not any(layers.iterdir()), "layers no workspace stacks are removed"


def test_disk_quota_counts_what_a_fork_sees(admin: httpx.Client) -> None:
    source = admin.post("/v1/sandboxes", json={"limits": {"disk_mb": 8}}).json()["id"]
    run(admin, source, "head -c 5000000 /dev/urandom > big.bin")
    fork = _fork(admin, source)
    assert fork["limits"]["disk_mb"] == 8
    used = admin.get(f"/v1/sandboxes/{fork['id']}").json()["disk_used_bytes"]
    assert used >= 5_000_000
    # The inherited 5 MB count against the fork's quota: 4 MB more is refused.
    refused = admin.put(f"/v1/sandboxes/{fork['id']}/files/more.bin", content=b"x" * 4_000_000)
    assert_error(refused, 413, "disk_quota_exceeded")
    run(admin, fork["id"], "rm big.bin")
    assert admin.get(f"/v1/sandboxes/{fork['id']}").json()["disk_used_bytes"] < 1_000_000
    assert admin.put(f"/v1/sandboxes/{fork['id']}/files/more.bin", content=b"x" * 4_000_000).status_code == 201
    assert admin.get(f"/v1/sandboxes/{source}").json()["disk_used_bytes"] >= 5_000_000
    for sid in (source, fork["id"]):
        admin.delete(f"/v1/sandboxes/{sid}")


def test_fork_refuses_bad_input(admin: httpx.Client, node: NodeProcess, shared_sandbox: str) -> None:
    url = f"/v1/sandboxes/{shared_sandbox}/fork"
    assert_error(admin.post(url, json={"nme": "x"}), 400, "validation_failed")
    assert_error(admin.post(url, json={"name": 7}), 400, "validation_failed")
    assert_error(admin.post(url, json={"name": "Bad Name"}), 400, "validation_failed")
    assert_error(admin.post(url, content=b"[1]", headers={"content-type": "application/json"}), 400, "invalid_json")
    assert_error(admin.post("/v1/sandboxes/sb_0000000000000000/fork", json={}), 404, "sandbox_not_found")
    taken = _fork(admin, shared_sandbox, name="taken")
    assert_error(admin.post(url, json={"name": "taken"}), 409, "conflict")
    issued = admin.post("/v1/tokens", json={"tenant": "mallory"}).json()["token"]
    with node.client(issued) as other:
        assert_error(other.post(url, json={}), 404, "sandbox_not_found")
    admin.delete(f"/v1/sandboxes/{taken['id']}")


def test_forks_survive_a_restart(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", env={"EDGENODE_SANDBOXES_POOL_SIZE": "0"}).start()
    try:
        with node.client() as c:
            source = c.post("/v1/sandboxes", json={}).json()["id"]
            run(c, source, "echo kept > k.txt")
            fork = _fork(c, source)["id"]
            run(c, fork, "echo mine >> k.txt")
        node.stop()
        node.start()
        with node.client() as c:
            assert c.get(f"/v1/sandboxes/{fork}/files/k.txt").text == "kept\nmine\n"
            assert run(c, source, "cat k.txt")["stdout"] == "kept\n"
    finally:
        node.stop()
