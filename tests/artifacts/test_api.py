"""The /v1/repos API: repositories, commits, reads, forks, tokens, events, and bad input."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artifacts.gitutil import api_commit, create_repo, git, git_url, refs_of, repo_dir, repo_token
from tests.support import NodeProcess


@pytest.fixture
def api(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return dict(error)


def test_create_list_get_delete(api: httpx.Client) -> None:
    created = create_repo(api, "alpha", default_branch="trunk")
    assert created["name"] == "alpha" and created["default_branch"] == "trunk"
    assert created["head"] == "refs/heads/trunk" and created["refs"] == {}
    names = [r["name"] for r in api.get("/v1/repos").json()["repos"]]
    assert "alpha" in names
    _error(api.post("/v1/repos", json={"name": "alpha"}), 409, "repo_exists")
    assert api.delete("/v1/repos/alpha").status_code == 204
    _error(api.get("/v1/repos/alpha"), 404, "artifact_not_found")
    _error(api.delete("/v1/repos/alpha"), 404, "artifact_not_found")


@pytest.mark.parametrize("name", ["", "UPPER", "-dash", "a/b", "x.git", "a..b", "a" * 101, "sp ace"])
def test_bad_repo_names(api: httpx.Client, name: str) -> None:
    _error(api.post("/v1/repos", json={"name": name}), 400, "validation_failed")


def test_repos_are_per_tenant(node: NodeProcess, api: httpx.Client) -> None:
    create_repo(api, "mine")
    other = api.post("/v1/tokens", json={"tenant": "acme"}).json()["token"]
    with node.client(other) as acme:
        _error(acme.get("/v1/repos/mine"), 404, "artifact_not_found")
        assert acme.get("/v1/repos").json()["repos"] == []
        create_repo(acme, "mine")  # same name, other tenant
        assert acme.get("/v1/repos/mine").json()["tenant"] == "acme"
    # acme's bearer token is no password for the default tenant's repository.
    r = httpx.get(f"{node.url}/git/default/mine.git/info/refs?service=git-upload-pack", auth=("x", other))
    _error(r, 401, "git_auth_required")
    r = httpx.get(f"{node.url}/git/acme/mine.git/info/refs?service=git-upload-pack", auth=("x", other))
    assert r.status_code == 200


def test_commits_reads_and_diff(api: httpx.Client) -> None:
    create_repo(api, "hist")
    c1 = api_commit(api, "hist", {"a.txt": "one\n", "dir/b.txt": "bee\n",
                                  "bin.dat": {"base64": base64.b64encode(b"\x00\xff").decode()},
                                  "run.sh": {"text": "#!/bin/sh\n", "executable": True}}, message="first")
    c2 = api_commit(api, "hist", {"a.txt": "two\n", "dir/b.txt": None}, message="second", parent=c1)

    log = api.get("/v1/repos/hist/log").json()["commits"]
    assert [c["commit"] for c in log] == [c2, c1]
    assert log[0]["parents"] == [c1] and log[0]["message"] == "second\n"
    assert [c["commit"] for c in api.get("/v1/repos/hist/log?limit=1").json()["commits"]] == [c2]

    root = api.get("/v1/repos/hist/tree/main").json()
    assert {e["name"]: e["type"] for e in root["entries"]} == {"a.txt": "blob", "bin.dat": "blob", "run.sh": "blob"}
    assert {e["name"]: e["mode"] for e in root["entries"]}["run.sh"] == "100755"
    old = api.get(f"/v1/repos/hist/tree/{c1}/dir").json()
    assert [e["name"] for e in old["entries"]] == ["b.txt"]
    assert api.get("/v1/repos/hist/tree/main/a.txt").json()["text"] == "two\n"
    assert api.get("/v1/repos/hist/tree/main/bin.dat").json()["base64"] == base64.b64encode(b"\x00\xff").decode()
    assert api.get("/v1/repos/hist/blob/main/bin.dat").content == b"\x00\xff"

    d = api.get(f"/v1/repos/hist/diff?from={c1}&to={c2}").json()
    changes = {(c["change"], c["old_path"] or c["new_path"]) for c in d["changes"]}
    assert changes == {("modify", "a.txt"), ("delete", "dir/b.txt")}
    assert "-one" in d["patch"] and "+two" in d["patch"]

    # Branch names with slashes resolve in /tree.
    api_commit(api, "hist", {"f.txt": "feature\n"}, branch="feat/x", parent="")
    assert api.get("/v1/repos/hist/tree/feat/x/f.txt").json()["text"] == "feature\n"

    _error(api.get("/v1/repos/hist/tree/main/missing.txt"), 404, "artifact_not_found")
    _error(api.get("/v1/repos/hist/tree/nosuchref"), 404, "artifact_not_found")
    _error(api.get("/v1/repos/hist/diff?from=main"), 400, "validation_failed")
    _error(api.get("/v1/repos/hist/log?limit=0"), 400, "validation_failed")
    _error(api.get("/v1/repos/hist/log?ref=nope"), 404, "artifact_not_found")


def test_commit_parent_check_gives_409(api: httpx.Client) -> None:
    create_repo(api, "race")
    c1 = api_commit(api, "race", {"a": "1"})
    api_commit(api, "race", {"a": "2"}, parent=c1)
    r = api.post("/v1/repos/race/commits", json={"branch": "main", "message": "stale", "files": {"a": "3"},
                                                  "parent": c1})
    error = _error(r, 409, "parent_moved")
    assert error["expected"] == c1 and error["actual"] != c1
    # parent "" means "the branch must not exist yet".
    _error(api.post("/v1/repos/race/commits", json={"branch": "main", "message": "m", "files": {"a": "3"},
                                                     "parent": ""}), 409, "parent_moved")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"message": "m", "files": {"a": "1"}}, "validation_failed"),  # no branch
        ({"branch": "main", "files": {"a": "1"}}, "validation_failed"),  # no message
        ({"branch": "main", "message": "m", "files": {}}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {"../escape": "x"}}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {".git/config": "x"}}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {"a": 5}}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {"a": {"base64": "@@@"}}}, "validation_failed"),
        ({"branch": "bad..name", "message": "m", "files": {"a": "1"}}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {"a": "1"}, "author": "no email"}, "validation_failed"),
        ({"branch": "main", "message": "m", "files": {"a": "1"}, "parent": 7}, "validation_failed"),
    ],
)
def test_bad_commits(api: httpx.Client, body: dict[str, Any], code: str) -> None:
    if api.get("/v1/repos/badc").status_code == 404:
        create_repo(api, "badc")
    _error(api.post("/v1/repos/badc/commits", json=body), 400, code)


def test_bad_json_and_missing_repo(api: httpx.Client) -> None:
    _error(api.post("/v1/repos", content=b"{nope", headers={"content-type": "application/json"}), 400,
           "invalid_json")
    _error(api.post("/v1/repos/ghost/commits", json={"branch": "main", "message": "m", "files": {"a": "1"}}),
           404, "artifact_not_found")
    _error(api.post("/v1/repos/ghost/tokens", json={"access": "read"}), 404, "artifact_not_found")


def test_tokens_validation(api: httpx.Client) -> None:
    create_repo(api, "tok")
    _error(api.post("/v1/repos/tok/tokens", json={"access": "admin"}), 400, "validation_failed")
    _error(api.post("/v1/repos/tok/tokens", json={"access": "read", "ttl_s": -1}), 400, "validation_failed")
    _error(api.post("/v1/repos/tok/tokens", json={"access": "read", "ttl_s": 10**9}), 400, "validation_failed")
    issued = api.post("/v1/repos/tok/tokens", json={"access": "read"}).json()
    assert issued["expires_at"] - issued["created_at"] == pytest.approx(86_400)
    _error(api.delete("/v1/repos/tok/tokens/0000000000000000"), 404, "artifact_not_found")
    # A repository token is not a bearer token for the API.
    r = httpx.get(f"{api.base_url}/v1/repos", headers={"authorization": f"Bearer {issued['token']}"})
    assert r.status_code == 401


def test_fork_is_cheap_and_independent(node: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "parent")
    base = api_commit(api, "parent", {"big.txt": "x" * 100_000, "a.txt": "1\n"})
    fork = api.post("/v1/repos/parent/fork", json={"name": "child"})
    assert fork.status_code == 201, fork.text
    assert fork.json()["fork_of"] == "parent" and fork.json()["refs"]["refs/heads/main"] == base

    # No object was copied: the fork borrows the parent's object directory.
    objects = repo_dir(node, "child") / "objects"
    assert [p for p in objects.rglob("*") if p.is_file() and "info" not in p.parts] == []
    assert (objects / "info" / "alternates").read_text().strip() == str(repo_dir(node, "parent") / "objects")

    # Independent histories.
    on_fork = api_commit(api, "child", {"a.txt": "fork\n"}, parent=base)
    on_parent = api_commit(api, "parent", {"a.txt": "parent\n"}, parent=base)
    assert refs_of(api, "child")["refs/heads/main"] == on_fork
    assert refs_of(api, "parent")["refs/heads/main"] == on_parent
    # git pushes to the fork: the thin pack's bases live in the parent's objects.
    git("clone", git_url(node, "child", repo_token(api, "child")), "pushfork", cwd=tmp_path)
    work = tmp_path / "pushfork"
    (work / "big.txt").write_text("x" * 100_000 + "tail\n")
    git("add", ".", cwd=work)
    git("commit", "-qm", "pushed to fork", cwd=work)
    git("push", "origin", "main", cwd=work)
    on_fork = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert refs_of(api, "child")["refs/heads/main"] == on_fork
    assert git("fsck", "--full", cwd=repo_dir(node, "child"), check=False).returncode == 0
    _error(api.post("/v1/repos/parent/fork", json={"name": "child"}), 409, "repo_exists")
    _error(api.post("/v1/repos/nope/fork", json={"name": "x1"}), 404, "artifact_not_found")

    # Deleting the parent leaves the fork whole (its objects get hard-linked in).
    assert api.delete("/v1/repos/parent").status_code == 204
    assert api.get("/v1/repos/child/tree/main/big.txt").json()["size"] == 100_005
    git("clone", git_url(node, "child", repo_token(api, "child")), "c", cwd=tmp_path)
    assert git("log", "--format=%H", cwd=tmp_path / "c").stdout.split()[-1] == base
    assert git("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == on_fork
    assert git("fsck", "--full", cwd=repo_dir(node, "child")).returncode == 0
    assert not (objects / "info" / "alternates").exists()


def test_import_refuses_bad_urls(api: httpx.Client) -> None:
    # Imports that work, and the egress policy they go through, are in test_import.py.
    _error(api.post("/v1/repos", json={"name": "bad1", "import": {"url": "file:///etc"}}), 400,
           "validation_failed")
    _error(api.post("/v1/repos", json={"name": "bad2", "import": {"url": "http://127.0.0.1:1/x.git"}}), 400,
           "import_failed")
    _error(api.get("/v1/repos/bad2"), 404, "artifact_not_found")  # nothing left behind


def test_events_filter_and_paging(api: httpx.Client) -> None:
    create_repo(api, "ev")
    api_commit(api, "ev", {"a": "1"})
    all_events = api.get("/v1/repos/ev/events").json()["events"]
    assert [e["kind"] for e in all_events] == ["create", "commit"]
    after = api.get(f"/v1/repos/ev/events?after={all_events[0]['id']}").json()["events"]
    assert [e["kind"] for e in after] == ["commit"]
    assert [e["kind"] for e in api.get("/v1/repos/ev/events?kind=create").json()["events"]] == ["create"]
    _error(api.get("/v1/repos/ev/events?limit=x"), 400, "validation_failed")


def test_repos_per_tenant_are_capped(make_node: Any) -> None:
    node = make_node(env={"EDGENODE_ARTIFACTS_MAX_REPOS_PER_TENANT": "2"})
    with node.client() as admin:
        other = admin.post("/v1/tokens", json={"tenant": "other"}).json()["token"]
        create_repo(admin, "one")
        create_repo(admin, "two")
        for refused in (admin.post("/v1/repos", json={"name": "three"}),
                        admin.post("/v1/repos/one/fork", json={"name": "four"})):
            error = _error(refused, 429, "tenant_quota_exceeded")
            assert refused.headers["retry-after"] == "60" and error["limit"] == 2
        assert admin.get("/v1/repos/three").status_code == 404
        with node.client(other) as c:  # another tenant has its own count
            create_repo(c, "three")
        assert admin.delete("/v1/repos/two").status_code == 204
        create_repo(admin, "three")
