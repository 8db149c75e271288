"""The real git client against a real node: clone, push, fetch, auth, and refused pushes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dulwich.protocol import pkt_line

from tests.artifacts.gitutil import (
    api_commit,
    create_repo,
    git,
    git_url,
    object_files,
    refs_of,
    repo_dir,
    repo_token,
)
from tests.support import NodeProcess

PACK_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def gnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("gitnode"),
                       env={"EDGENODE_ARTIFACTS_MAX_PACK_BYTES": str(PACK_LIMIT)})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def api(gnode: NodeProcess) -> Iterator[httpx.Client]:
    with gnode.client() as c:
        yield c


def _fsck(gnode: NodeProcess, name: str) -> None:
    result = git("fsck", "--full", "--strict", cwd=repo_dir(gnode, name), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    leftovers = [p.name for p in (repo_dir(gnode, name) / "objects").iterdir() if p.name.startswith("incoming-")]
    assert leftovers == []


def test_clone_push_fetch_round_trip(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "round")
    first = api_commit(api, "round", {"README.md": "# hello\n", "src/app.py": "print(1)\n"}, message="from api")
    token = repo_token(api, "round")
    url = git_url(gnode, "round", token)

    git("clone", url, "a", cwd=tmp_path)
    a = tmp_path / "a"
    # API commits are real history: git log shows them.
    assert git("log", "--format=%H %s", cwd=a).stdout.split("\n")[0] == f"{first} from api"
    assert (a / "src" / "app.py").read_text() == "print(1)\n"

    (a / "notes.txt").write_text("pushed by git\n")
    git("add", ".", cwd=a)
    git("commit", "-qm", "from git", cwd=a)
    git("push", "origin", "main", cwd=a)
    pushed = git("rev-parse", "HEAD", cwd=a).stdout.strip()
    assert refs_of(api, "round")["refs/heads/main"] == pushed

    # A new branch, then a fetch from a second clone sees both.
    git("checkout", "-qb", "feature", cwd=a)
    (a / "feature.txt").write_text("f\n")
    git("add", ".", cwd=a)
    git("commit", "-qm", "feature", cwd=a)
    git("push", "origin", "feature", cwd=a)
    git("clone", url, "b", cwd=tmp_path)
    b = tmp_path / "b"
    api_commit(api, "round", {"later.txt": "later\n"}, message="later api commit", parent=pushed)
    git("fetch", "origin", cwd=b)
    assert git("log", "-1", "--format=%s", "origin/main", cwd=b).stdout.strip() == "later api commit"
    assert git("rev-parse", "origin/feature", cwd=b).stdout.strip() == refs_of(api, "round")["refs/heads/feature"]

    # The API reads what git pushed.
    tree = api.get("/v1/repos/round/tree/feature/feature.txt").json()
    assert tree["text"] == "f\n"
    kinds = [e["kind"] for e in api.get("/v1/repos/round/events").json()["events"]]
    assert {"create", "commit", "clone", "push", "fetch", "token_used"} <= set(kinds)
    _fsck(gnode, "round")


def test_tenant_bearer_token_works_as_password(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "bearer")
    api_commit(api, "bearer", {"a": "1"})
    git("clone", git_url(gnode, "bearer", gnode.admin_token), "c", cwd=tmp_path)
    # A token as the user name with no password works too (https://TOKEN@host/... style).
    token = repo_token(api, "bearer", access="read")
    git("ls-remote", gnode.url.replace("http://", f"http://{token}@") + "/git/default/bearer.git", cwd=tmp_path)
    # The short form /git/{name}.git is the default tenant.
    short = gnode.url.replace("http://", f"http://x:{gnode.admin_token}@") + "/git/bearer.git"
    git("ls-remote", short, cwd=tmp_path)


def test_wrong_missing_expired_and_read_only_tokens(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "guarded")
    api_commit(api, "guarded", {"a": "1"})
    other = create_repo(api, "other")["name"]

    # No credentials: 401 with a Basic challenge, so git asks (and, without a prompt, fails).
    r = httpx.get(f"{gnode.url}/git/default/guarded.git/info/refs?service=git-upload-pack")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "git_auth_required"
    assert r.headers["www-authenticate"].startswith("Basic")
    failed = git("clone", git_url(gnode, "guarded", None), "x0", cwd=tmp_path, check=False)
    assert failed.returncode != 0

    # A wrong token, and a token of another repository.
    failed = git("clone", git_url(gnode, "guarded", "edr_0000000000000000_notarealtokenatallxxxxx"), "x1",
                 cwd=tmp_path, check=False)
    assert failed.returncode != 0 and ("401" in failed.stderr or "Authentication failed" in failed.stderr)
    foreign = repo_token(api, other)
    r = httpx.get(f"{gnode.url}/git/default/guarded.git/info/refs?service=git-upload-pack", auth=("x", foreign))
    assert r.status_code == 401

    # An expired token.
    expired = repo_token(api, "guarded", ttl_s=0.5)
    time.sleep(0.7)
    r = httpx.get(f"{gnode.url}/git/default/guarded.git/info/refs?service=git-upload-pack", auth=("x", expired))
    assert r.status_code == 401
    assert r.json()["error"]["reason"] == "token_expired"
    failed = git("clone", git_url(gnode, "guarded", expired), "x2", cwd=tmp_path, check=False)
    assert failed.returncode != 0 and "Authentication failed" in failed.stderr

    # A read token clones but cannot push: 403.
    read = repo_token(api, "guarded", access="read")
    git("clone", git_url(gnode, "guarded", read), "r", cwd=tmp_path)
    r_dir = tmp_path / "r"
    (r_dir / "b").write_text("2")
    git("add", ".", cwd=r_dir)
    git("commit", "-qm", "nope", cwd=r_dir)
    failed = git("push", "origin", "main", cwd=r_dir, check=False)
    assert failed.returncode != 0 and "403" in failed.stderr
    r = httpx.get(f"{gnode.url}/git/default/guarded.git/info/refs?service=git-receive-pack", auth=("x", read))
    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only_token"

    # A revoked token stops at once.
    write = api.post("/v1/repos/guarded/tokens", json={"access": "write", "ttl_s": 60}).json()
    assert api.delete(f"/v1/repos/guarded/tokens/{write['id']}").status_code == 204
    r = httpx.get(f"{gnode.url}/git/default/guarded.git/info/refs?service=git-upload-pack",
                  auth=("x", write["token"]))
    assert r.status_code == 401 and r.json()["error"]["reason"] == "token_revoked"
    states = {t["id"]: t["state"] for t in api.get("/v1/repos/guarded/tokens").json()["tokens"]}
    assert states[write["id"]] == "revoked"
    assert gnode.proc is not None and gnode.proc.poll() is None


def test_force_push_to_protected_branch_is_refused(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "protect")
    base = api_commit(api, "protect", {"a.txt": "1\n"})
    head = api_commit(api, "protect", {"a.txt": "2\n"})
    url = git_url(gnode, "protect", repo_token(api, "protect"))
    git("clone", url, "w", cwd=tmp_path)
    w = tmp_path / "w"
    git("reset", "-q", "--hard", base, cwd=w)
    (w / "b.txt").write_text("rewritten\n")
    git("add", ".", cwd=w)
    git("commit", "-qm", "rewrite", cwd=w)
    before_objects = object_files(gnode, "protect")

    failed = git("push", "--force", "origin", "main", cwd=w, check=False)
    assert failed.returncode != 0
    assert "protected branch" in failed.stderr
    assert refs_of(api, "protect")["refs/heads/main"] == head
    # Deleting the protected branch is refused too.
    failed = git("push", "origin", ":main", cwd=w, check=False)
    assert failed.returncode != 0
    assert refs_of(api, "protect")["refs/heads/main"] == head
    # Nothing of the refused push stayed behind.
    assert object_files(gnode, "protect") == before_objects
    _fsck(gnode, "protect")

    # Force-pushing an unprotected branch is allowed.
    git("push", "origin", "HEAD:refs/heads/scratch", cwd=w)
    git("reset", "-q", "--hard", base, cwd=w)
    git("push", "--force", "origin", "HEAD:refs/heads/scratch", cwd=w)
    assert refs_of(api, "protect")["refs/heads/scratch"] == base
    events = api.get("/v1/repos/protect/events?kind=push_refused").json()["events"]
    assert events and "protected branch" in events[0]["refs"][0]["reason"]


def _receive_pack_request(old: str, new: str, ref: str, pack: bytes) -> bytes:
    line = f"{old} {new} {ref}\0report-status side-band-64k agent=test".encode()
    return pkt_line(line) + pkt_line(None) + pack


def _post_receive(gnode: NodeProcess, name: str, token: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{gnode.url}/git/default/{name}.git/git-receive-pack", content=body, auth=("x", token),
                      headers={"content-type": "application/x-git-receive-pack-request"}, timeout=30)


def _pack_of(work: Path, objects: list[str]) -> bytes:
    result = subprocess.run(["git", "pack-objects", "--stdout"], cwd=work, input="\n".join(objects).encode() + b"\n",
                            capture_output=True, check=True)
    return result.stdout


def test_bad_packs_are_refused_and_leave_nothing(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "badpack")
    head = api_commit(api, "badpack", {"a.txt": "1\n"})
    token = repo_token(api, "badpack")
    git("clone", git_url(gnode, "badpack", token), "w", cwd=tmp_path)
    w = tmp_path / "w"
    (w / "new.txt").write_text("some new content " * 50)
    git("add", ".", cwd=w)
    git("commit", "-qm", "new", cwd=w)
    new = git("rev-parse", "HEAD", cwd=w).stdout.strip()
    tree = git("rev-parse", "HEAD^{tree}", cwd=w).stdout.strip()
    blob = git("rev-parse", "HEAD:new.txt", cwd=w).stdout.strip()
    before = object_files(gnode, "badpack")

    # 1. A corrupted pack (a flipped byte in the compressed data): unpack fails.
    pack = bytearray(_pack_of(w, [new, tree, blob]))
    pack[len(pack) // 2] ^= 0xFF
    r = _post_receive(gnode, "badpack", token, _receive_pack_request(head, new, "refs/heads/main", bytes(pack)))
    assert r.status_code == 200
    assert b"unpack ok" not in r.content and b"unpack " in r.content
    assert refs_of(api, "badpack")["refs/heads/main"] == head

    # 2. A well-formed pack that is not connected (the commit without its tree).
    r = _post_receive(gnode, "badpack", token, _receive_pack_request(head, new, "refs/heads/main",
                                                                      _pack_of(w, [new])))
    assert r.status_code == 200
    assert b"ng refs/heads/main" in r.content and b"not connected" in r.content
    assert refs_of(api, "badpack")["refs/heads/main"] == head

    # 3. A truncated pack.
    r = _post_receive(gnode, "badpack", token, _receive_pack_request(head, new, "refs/heads/main",
                                                                      _pack_of(w, [new, tree, blob])[:40]))
    assert b"unpack ok" not in r.content
    assert refs_of(api, "badpack")["refs/heads/main"] == head

    # 4. Garbage instead of the protocol: 400 with a JSON code.
    r = _post_receive(gnode, "badpack", token, b"0010this is junk" + b"zzzz")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"

    # 5. Wrong content type.
    r = httpx.post(f"{gnode.url}/git/default/badpack.git/git-receive-pack", content=b"0000", auth=("x", token))
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"

    assert object_files(gnode, "badpack") == before
    _fsck(gnode, "badpack")
    # And the real push still works afterwards.
    git("push", "origin", "main", cwd=w)
    assert refs_of(api, "badpack")["refs/heads/main"] == new
    _fsck(gnode, "badpack")


def test_oversized_pack_gets_413_and_leaves_nothing(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "big")
    head = api_commit(api, "big", {"a.txt": "1\n"})
    token = repo_token(api, "big")
    git("clone", git_url(gnode, "big", token), "w", cwd=tmp_path)
    w = tmp_path / "w"
    (w / "random.bin").write_bytes(os.urandom(PACK_LIMIT + 64 * 1024))  # incompressible
    git("add", ".", cwd=w)
    git("commit", "-qm", "too big", cwd=w)
    before = object_files(gnode, "big")

    failed = git("push", "origin", "main", cwd=w, check=False)
    assert failed.returncode != 0 and "413" in failed.stderr
    assert refs_of(api, "big")["refs/heads/main"] == head
    assert object_files(gnode, "big") == before
    _fsck(gnode, "big")

    r = _post_receive(gnode, "big", token, b"0" * (PACK_LIMIT + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "pack_too_large"
    assert api.get("/v1/repos/big").status_code == 200


def test_push_against_a_moved_ref_is_reported_not_ok(gnode: NodeProcess, api: httpx.Client,
                                                     tmp_path: Path) -> None:
    create_repo(api, "moved")
    base = api_commit(api, "moved", {"a.txt": "1\n"}, branch="dev", parent="")
    token = repo_token(api, "moved")
    git("clone", "-b", "dev", git_url(gnode, "moved", token), "w", cwd=tmp_path)
    w = tmp_path / "w"
    (w / "mine.txt").write_text("mine\n")
    git("add", ".", cwd=w)
    git("commit", "-qm", "mine", cwd=w)
    mine = git("rev-parse", "HEAD", cwd=w).stdout.strip()
    objects = [mine, git("rev-parse", "HEAD^{tree}", cwd=w).stdout.strip(),
               git("rev-parse", "HEAD:mine.txt", cwd=w).stdout.strip()]
    # The branch moves after the client read the advertisement.
    theirs = api_commit(api, "moved", {"b.txt": "theirs\n"}, branch="dev", parent=base)
    r = _post_receive(gnode, "moved", token, _receive_pack_request(base, mine, "refs/heads/dev",
                                                                  _pack_of(w, objects)))
    assert r.status_code == 200
    assert b"ok refs/heads/dev" not in r.content and b"ng refs/heads/dev" in r.content
    assert refs_of(api, "moved")["refs/heads/dev"] == theirs
    refused = api.get("/v1/repos/moved/events?kind=push_refused").json()["events"]
    assert refused[0]["refs"] == [{"ref": "refs/heads/dev", "reason": "changed during the push"}]
    _fsck(gnode, "moved")


def test_a_crashed_push_quarantine_is_cleared_at_start(make_node: Any, tmp_path: Path) -> None:
    node = make_node("restart")
    with node.client() as api:
        create_repo(api, "crash")
        head = api_commit(api, "crash", {"a": "1"})
    node.kill()  # no clean shutdown, as after a crash mid-push
    leftover = repo_dir(node, "crash") / "objects" / "incoming-abc123"
    (leftover / "q" / "pack").mkdir(parents=True)
    (leftover / "q" / "pack" / "tmp_pack_x").write_bytes(b"half a pack")
    node.start()
    assert not leftover.exists()
    with node.client() as api:
        assert refs_of(api, "crash")["refs/heads/main"] == head
    _fsck(node, "crash")


def test_shallow_clone(gnode: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    create_repo(api, "shallow")
    for i in range(4):
        head = api_commit(api, "shallow", {f"f{i}.txt": f"{i}\n"}, message=f"c{i}")
    git("clone", "--depth", "1", git_url(gnode, "shallow", repo_token(api, "shallow")), "s", cwd=tmp_path)
    assert git("log", "--format=%H", cwd=tmp_path / "s").stdout.split() == [head]
    assert (tmp_path / "s" / "f0.txt").read_text() == "0\n"


def test_gzipped_fetch_request_and_bad_gzip(gnode: NodeProcess, api: httpx.Client) -> None:
    import gzip

    create_repo(api, "gz")
    head = api_commit(api, "gz", {"a.txt": "1\n"})
    token = repo_token(api, "gz", access="read")
    body = pkt_line(f"want {head} side-band-64k thin-pack ofs-delta\n".encode()) + pkt_line(None) + pkt_line(b"done\n")
    url = f"{gnode.url}/git/default/gz.git/git-upload-pack"
    headers = {"content-type": "application/x-git-upload-pack-request", "content-encoding": "gzip"}
    r = httpx.post(url, content=gzip.compress(body), headers=headers, auth=("x", token))
    assert r.status_code == 200 and b"PACK" in r.content, r.text
    r = httpx.post(url, content=b"definitely not gzip", headers=headers, auth=("x", token))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    # A want the repository never advertised is a protocol error, not a crash.
    bogus = pkt_line(b"want " + b"2" * 40 + b" side-band-64k thin-pack\n") + pkt_line(None) + pkt_line(b"done\n")
    r = httpx.post(url, content=bogus, headers={"content-type": "application/x-git-upload-pack-request"},
                   auth=("x", token))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert api.get("/healthz").status_code == 200
