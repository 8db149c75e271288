"""Branch and tag deletions between real nodes: they travel, and anti-entropy never brings them back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.artifacts.gitutil import api_commit, create_repo, git, git_url, repo_token
from tests.support import NodeProcess, wait_for

SECRET = "test-fleet-secret-for-ref-deletions"
ADMIN = "edn_admin_fleet_git_admin_token_0123456789"


def _env() -> dict[str, str]:
    return {"EDGENODE_FLEET_SECRET": SECRET, "EDGENODE_ADMIN_TOKEN": ADMIN,
            "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.5", "EDGENODE_ARTIFACTS_ANTI_ENTROPY_INTERVAL_S": "0.5"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    root = tmp_path_factory.mktemp("gitpair")
    first = NodeProcess(root / "n1", env=_env()).start()
    second = NodeProcess(root / "n2", env=_env(), args=["--peer", first.url])
    try:
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()


def _refs(node: NodeProcess, repo: str) -> dict[str, str]:
    with node.client() as c:
        r = c.get(f"/v1/repos/{repo}/refs")
        return dict(r.json()["refs"]) if r.status_code == 200 else {}


def _rounds(node: NodeProcess) -> int:
    with node.client() as c:
        return int(c.get("/v1/status").json()["capabilities"]["artifacts"]["anti_entropy_rounds"])


def test_a_deleted_branch_and_tag_stay_deleted_and_a_new_commit_brings_the_branch_back(
        pair: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    n1, n2 = pair
    with n1.client() as api:
        create_repo(api, "branchy")
        api_commit(api, "branchy", {"a.txt": "main\n"})
        feature = api_commit(api, "branchy", {"f.txt": "feature\n"}, branch="feature")
        git("clone", "-q", git_url(n1, "branchy", repo_token(api, "branchy")), "work", cwd=tmp_path)
    work = tmp_path / "work"
    git("fetch", "-q", "origin", "feature", cwd=work)
    git("tag", "v1", "origin/feature", cwd=work)
    git("push", "-q", "origin", "v1", cwd=work)
    wait_for(lambda: _refs(n2, "branchy").get("refs/heads/feature") == feature
             and "refs/tags/v1" in _refs(n2, "branchy"), message="branch and tag on n2")

    git("push", "-q", "origin", "--delete", "feature", "v1", cwd=work)
    assert "refs/heads/feature" not in _refs(n1, "branchy")
    wait_for(lambda: not {"refs/heads/feature", "refs/tags/v1"} & set(_refs(n2, "branchy")),
             message="the deletions on n2")
    # Several anti-entropy rounds each way: neither node lists the branch to the other again.
    start = (_rounds(n1), _rounds(n2))
    wait_for(lambda: _rounds(n1) >= start[0] + 3 and _rounds(n2) >= start[1] + 3, message="anti-entropy rounds")
    for node in pair:
        assert not {"refs/heads/feature", "refs/tags/v1"} & set(_refs(node, "branchy")), node.url

    with n2.client() as api:
        again = api_commit(api, "branchy", {"g.txt": "new work\n"}, branch="feature")
    wait_for(lambda: _refs(n1, "branchy").get("refs/heads/feature") == again, message="the new branch on n1")


def test_a_node_that_missed_a_deletion_drops_the_branch_instead_of_bringing_it_back(
        pair: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    n1, n2 = pair
    with n1.client() as api:
        create_repo(api, "missed")
        api_commit(api, "missed", {"a.txt": "main\n"})
        topic = api_commit(api, "missed", {"t.txt": "topic\n"}, branch="topic")
        token = repo_token(api, "missed")
    wait_for(lambda: _refs(n2, "missed").get("refs/heads/topic") == topic, message="the branch on n2")
    n2.stop()  # n2 hears nothing of the deletion
    git("clone", "-q", git_url(n1, "missed", token), "work", cwd=tmp_path)
    git("push", "-q", "origin", "--delete", "topic", cwd=tmp_path / "work")
    n2.start()
    # n2 still lists the branch to n1, and n1 lists its deletion to n2: the deletion wins on both.
    start = (_rounds(n1), _rounds(n2))
    wait_for(lambda: "refs/heads/topic" not in _refs(n2, "missed"), message="the missed deletion applied on n2")
    wait_for(lambda: _rounds(n1) >= start[0] + 3 and _rounds(n2) >= start[1] + 3, message="anti-entropy rounds")
    assert "refs/heads/topic" not in _refs(n1, "missed")
    assert "refs/heads/topic" not in _refs(n2, "missed")


def test_no_state_a_deletion_covers_brings_the_ref_back_but_a_later_setting_does(tmp_path: Path) -> None:
    import asyncio

    from edgenode.config import Config
    from edgenode.node import Node

    async def scenario() -> dict[str, list[str]]:
        node = Node(Config.load(env={}, overrides={"data_dir": tmp_path / "data"}))
        await node.start()
        try:
            arts = node.artifacts
            info = await arts.create("default", "solo")
            await arts.commit("default", "solo", branch="main", message="m", author=None, files={"a": "1"},
                              parent=None)
            older = (await arts.commit("default", "solo", branch="topic", message="t", author=None,
                                       files={"b": "2"}, parent=None))["commit"]
            topic = (await arts.commit("default", "solo", branch="topic", message="t2", author=None,
                                       files={"b": "3"}, parent=older))["commit"]
            gossip = arts.gossip
            meta = {**gossip._meta(info), "repo": "solo"}
            seen: dict[str, list[str]] = {}

            def refs() -> list[str]:
                with arts.repos.open(info) as repo:
                    return sorted(k.decode() for k in repo.refs.as_dict() if k.startswith(b"refs/heads/"))

            deleted_at = 1000.0
            gossip._apply_sync(meta, [], "npeer", "", [("refs/heads/topic", topic)], deleted_at)
            seen["after the deletion"] = refs()
            gossip._apply_sync(meta, [("refs/heads/topic", topic)], "nstale", "", [], None)  # a stale listing
            gossip._apply_sync(meta, [("refs/heads/topic", older)], "nstale", "", [], None)  # an older state
            gossip._apply_sync(meta, [("refs/heads/topic", topic)], "nstale", "", [], deleted_at - 1)
            seen["after stale states"] = refs()
            gossip._apply_sync(meta, [("refs/heads/topic", topic)], "nlater", "", [], deleted_at + 1)
            seen["after a later setting"] = refs()
            return seen
        finally:
            await node.stop()

    seen = asyncio.run(scenario())
    assert seen == {"after the deletion": ["refs/heads/main"], "after stale states": ["refs/heads/main"],
                    "after a later setting": ["refs/heads/main", "refs/heads/topic"]}
