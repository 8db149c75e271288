"""Who does the pack work: git (upload-pack for clones, index-pack for pushes) or the dulwich fallback."""

from __future__ import annotations

import base64
import gzip
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dulwich.protocol import pkt_line

from tests.artifacts.gitutil import api_commit, create_repo, git, git_url, object_files, refs_of, repo_dir, repo_token
from tests.artifacts.test_git import _pack_of, _post_receive, _receive_pack_request
from tests.support import NodeProcess, wait_for

#: The git node kills a run after this long; the stalled-client test relies on it.
TIMEOUT_S = 4
BIG_BYTES = 24 * 1024 * 1024  # more than loopback socket and pipe buffers hold together


@pytest.fixture(scope="module")
def gitnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("gitup"),
                       env={"EDGENODE_ARTIFACTS_UPLOAD_PACK": "git",
                            "EDGENODE_ARTIFACTS_UPLOAD_PACK_TIMEOUT_S": str(TIMEOUT_S)})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dulnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("dulup"), env={"EDGENODE_ARTIFACTS_UPLOAD_PACK": "dulwich"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def big(gitnode: NodeProcess) -> tuple[str, str]:
    """A repository on the git node whose pack is far larger than the buffers between git and
    the client: (read token, head commit)."""
    with gitnode.client() as api:
        create_repo(api, "big")
        token = repo_token(api, "big", access="read")
    data = os.urandom(BIG_BYTES)
    stream = (b"blob\nmark :1\ndata %d\n" % len(data) + data + b"\n"
              b"commit refs/heads/main\nmark :2\ncommitter T <t@example.com> 1700000000 +0000\ndata 4\nbig\n"
              b"M 100644 :1 big.bin\n\n")
    git("fast-import", "--quiet", cwd=repo_dir(gitnode, "big"), input=stream)
    head = git("rev-parse", "refs/heads/main", cwd=repo_dir(gitnode, "big")).stdout.strip()
    return token, head


def _status(node: NodeProcess) -> dict[str, object]:
    with node.client() as api:
        status: dict[str, object] = api.get("/v1/status").json()["capabilities"]["artifacts"]
    return status


def _git_children(node: NodeProcess) -> list[int]:
    """Every live ``git`` process descended from the node."""
    assert node.proc is not None
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if rest[0] == "Z":
            continue
        parents[int(entry)], names[int(entry)] = int(rest[1]), name
    found = []
    for pid, name in names.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != node.proc.pid:
            ancestor = parents.get(ancestor)
        if ancestor == node.proc.pid and name.startswith("git"):
            found.append(pid)
    return found


def _clone_events(api: httpx.Client, name: str, kind: str) -> int:
    return len(api.get(f"/v1/repos/{name}/events?kind={kind}").json()["events"])


def _want(head: str) -> bytes:
    return (pkt_line(f"want {head} side-band-64k thin-pack ofs-delta\n".encode()) + pkt_line(None)
            + pkt_line(b"done\n"))


UPLOAD = {"content-type": "application/x-git-upload-pack-request"}


def test_git_answers_clones_over_v2_and_v0(gitnode: NodeProcess, tmp_path: Path) -> None:
    status = _status(gitnode)
    assert status["upload_pack"] == "git" and status["receive_pack"] == "dulwich+git index-pack"
    with gitnode.client() as api:
        create_repo(api, "two")
        first = api_commit(api, "two", {"a.txt": "1\n", "d/b.txt": "2\n"})
        token = repo_token(api, "two", access="read")
        url = git_url(gitnode, "two", token)
        info = f"{gitnode.url}/git/default/two.git/info/refs?service=git-upload-pack"
        # v0 unless the client asks for v2 through the Git-Protocol header, as git http-backend does.
        v0 = httpx.get(info, auth=("x", token))
        assert v0.status_code == 200 and v0.content.startswith(b"001e# service=git-upload-pack\n0000")
        assert first.encode() + b" HEAD" in v0.content
        v2 = httpx.get(info, auth=("x", token), headers={"git-protocol": "version=2"})
        assert v2.status_code == 200 and v2.content.startswith(b"000eversion 2\n")
        # A header that is not a plain key=value list never reaches git: v0 answer.
        odd = httpx.get(info, auth=("x", token), headers={"git-protocol": "version=2 $(touch /tmp/x)"})
        assert odd.status_code == 200 and odd.content.startswith(b"001e# service=")

        # A v2 ls-refs is not a clone: no event; a whole clone is one, a fetch with haves another.
        ls = httpx.post(f"{gitnode.url}/git/default/two.git/git-upload-pack",
                        content=pkt_line(b"command=ls-refs\n") + b"0001" + pkt_line(None),
                        headers={**UPLOAD, "git-protocol": "version=2"}, auth=("x", token))
        assert ls.status_code == 200 and f"{first} refs/heads/main".encode() in ls.content
        assert _clone_events(api, "two", "clone") == 0
        git("-c", "protocol.version=2", "clone", url, "c", cwd=tmp_path)
        assert (tmp_path / "c" / "d" / "b.txt").read_text() == "2\n"
        assert _clone_events(api, "two", "clone") == 1
        second = api_commit(api, "two", {"a.txt": "changed\n"}, parent=first)
        git("-c", "protocol.version=0", "clone", url, "c0", cwd=tmp_path)
        assert git("rev-parse", "HEAD", cwd=tmp_path / "c0").stdout.strip() == second
        git("fetch", "origin", cwd=tmp_path / "c")
        assert git("rev-parse", "origin/main", cwd=tmp_path / "c").stdout.strip() == second
        assert _clone_events(api, "two", "clone") == 2 and _clone_events(api, "two", "fetch") == 1
        used = api.get("/v1/repos/two/events?kind=token_used").json()["events"]
        assert used and all(e["service"] == "git-upload-pack" for e in used)

        # A fork shares its parent's objects through alternates; git follows them.
        assert api.post("/v1/repos/two/fork", json={"name": "two-fork"}).status_code == 201
        git("clone", git_url(gitnode, "two-fork", repo_token(api, "two-fork", access="read")), "f", cwd=tmp_path)
        assert git("rev-parse", "HEAD", cwd=tmp_path / "f").stdout.strip() == second
        git("fsck", "--full", cwd=tmp_path / "f")
        # A push to the fork: git's index-pack completes the thin pack from the parent's objects.
        f = tmp_path / "f"
        (f / "fork.txt").write_text("fork\n")
        git("add", ".", cwd=f)
        git("commit", "-qm", "in the fork", cwd=f)
        pushed = git("rev-parse", "HEAD", cwd=f).stdout.strip()
        git("push", git_url(gitnode, "two-fork", repo_token(api, "two-fork")), "main", cwd=f)
        assert refs_of(api, "two-fork")["refs/heads/main"] == pushed
        assert refs_of(api, "two")["refs/heads/main"] == second
        assert git("fsck", "--full", "--strict", cwd=repo_dir(gitnode, "two-fork"), check=False).returncode == 0
        # Shallow clones deepen (dulwich's server could not).
        git("clone", "--depth", "1", url, "s", cwd=tmp_path)
        assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "s").stdout.strip() == "1"
        git("fetch", "--deepen", "1", cwd=tmp_path / "s")
        assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "s").stdout.strip() == "2"
        # Partial clone filters are allowed (uploadpack.allowFilter).
        git("clone", "--filter=blob:none", url, "p", cwd=tmp_path)
        assert (tmp_path / "p" / "a.txt").read_text() == "changed\n"


def test_bad_upload_requests_on_the_git_path(gitnode: NodeProcess, tmp_path: Path) -> None:
    with gitnode.client() as api:
        create_repo(api, "badreq")
        head = api_commit(api, "badreq", {"a.txt": "1\n"})
        token = repo_token(api, "badreq", access="read")
    url = f"{gitnode.url}/git/default/badreq.git/git-upload-pack"
    gz = {**UPLOAD, "content-encoding": "gzip"}
    r = httpx.post(url, content=gzip.compress(_want(head)), headers=gz, auth=("x", token))
    assert r.status_code == 200 and b"PACK" in r.content
    r = httpx.post(url, content=b"\x1f\x8b\x08 not gzip after all", headers=gz, auth=("x", token))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    # A gzip bomb is cut off while it inflates: 413, git never sees the excess.
    r = httpx.post(url, content=gzip.compress(b"0" * (17 * 1024 * 1024)), headers=gz, auth=("x", token))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = httpx.post(url, content=_want("3" * 40), headers=UPLOAD, auth=("x", token))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert "not our ref" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"garbage that is no pkt-line", headers=UPLOAD, auth=("x", token))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = httpx.post(url, content=_want(head), headers=UPLOAD, auth=("x", "wrong"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "git_auth_required"
    wait_for(lambda: not _git_children(gitnode), message="no git process left")
    assert _status(gitnode)["upload_pack_running"] == 0
    assert httpx.get(f"{gitnode.url}/healthz").status_code == 200


def _open_clone(node: NodeProcess, token: str, head: str) -> socket.socket:
    """A raw connection that asked for the whole pack and read its first bytes.

    The small receive buffer stops the kernel from taking the pack off git's hands (loopback
    autotuning would otherwise buffer tens of MiB) while the test reads nothing.
    """
    host, port = node.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((host, int(port)))
    body = _want(head)
    auth = base64.b64encode(f"x:{token}".encode()).decode()
    sock.sendall(f"POST /git/default/big.git/git-upload-pack HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Basic {auth}\r\nContent-Type: {UPLOAD['content-type']}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    return sock


def test_a_client_leaving_mid_clone_leaves_no_git_behind(gitnode: NodeProcess, big: tuple[str, str]) -> None:
    sock = _open_clone(gitnode, *big)
    received = 0
    while received < 1024 * 1024:
        received += len(sock.recv(65536))
    # git is still writing: most of the pack has not left it yet.
    assert _git_children(gitnode)
    sock.close()  # mid-pack
    wait_for(lambda: not _git_children(gitnode), message="git killed after the client left")
    wait_for(lambda: _status(gitnode)["upload_pack_running"] == 0, message="run reaped")
    assert httpx.get(f"{gitnode.url}/healthz").status_code == 200


def test_a_stalled_clone_is_killed_at_the_time_limit(gitnode: NodeProcess, big: tuple[str, str]) -> None:
    sock = _open_clone(gitnode, *big)
    try:
        started = time.monotonic()
        assert _git_children(gitnode)
        # The client holds the connection open and reads nothing: only the limit ends git.
        wait_for(lambda: not _git_children(gitnode), timeout=TIMEOUT_S + 20, message="git killed at the limit")
        assert time.monotonic() - started >= 1  # it did not die of something else at once
        wait_for(lambda: _status(gitnode)["upload_pack_running"] == 0, message="run reaped")
    finally:
        sock.close()
    assert httpx.get(f"{gitnode.url}/healthz").status_code == 200


def test_dulwich_fallback_serves_clones(dulnode: NodeProcess, tmp_path: Path) -> None:
    status = _status(dulnode)
    assert status["upload_pack"] == "dulwich" and status["receive_pack"] == "dulwich"
    with dulnode.client() as api:
        create_repo(api, "fb")
        first = api_commit(api, "fb", {"a.txt": "1\n"})
        token = repo_token(api, "fb", access="read")
        url = git_url(dulnode, "fb", token)
        # dulwich speaks v0/v1 only: a v2 request gets the v0 advertisement and git falls back.
        info = httpx.get(f"{dulnode.url}/git/default/fb.git/info/refs?service=git-upload-pack",
                         auth=("x", token), headers={"git-protocol": "version=2"})
        assert info.content.startswith(b"001e# service=git-upload-pack")
        git("clone", url, "c", cwd=tmp_path)
        assert git("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == first
        second = api_commit(api, "fb", {"a.txt": "2\n"}, parent=first)
        git("fetch", "origin", cwd=tmp_path / "c")
        assert git("rev-parse", "origin/main", cwd=tmp_path / "c").stdout.strip() == second
        assert _clone_events(api, "fb", "clone") == 1 and _clone_events(api, "fb", "fetch") == 1
        r = httpx.post(f"{dulnode.url}/git/default/fb.git/git-upload-pack", content=_want("3" * 40),
                       headers=UPLOAD, auth=("x", token))
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"

        # Pushes: dulwich indexes the pack and checks connectivity itself.
        write = repo_token(api, "fb")
        w = tmp_path / "c"
        git("merge", "-q", "--ff-only", "origin/main", cwd=w)
        (w / "new.txt").write_text("new\n")
        git("add", ".", cwd=w)
        git("commit", "-qm", "new", cwd=w)
        new = git("rev-parse", "HEAD", cwd=w).stdout.strip()
        before = object_files(dulnode, "fb")
        r = _post_receive(dulnode, "fb", write, _receive_pack_request(second, new, "refs/heads/main",
                                                                      _pack_of(w, [new])))
        assert b"ng refs/heads/main" in r.content and b"not connected" in r.content
        assert object_files(dulnode, "fb") == before
        git("push", git_url(dulnode, "fb", write), "HEAD:main", cwd=w)
        assert refs_of(api, "fb")["refs/heads/main"] == new
    assert git("fsck", "--full", "--strict", cwd=repo_dir(dulnode, "fb"), check=False).returncode == 0
    assert not _git_children(dulnode)


@pytest.mark.parametrize(("name", "value"), [("UPLOAD_PACK", "svn"), ("UPLOAD_PACK_TIMEOUT_S", "0")])
def test_a_bad_upload_pack_setting_stops_the_node(tmp_path: Path, name: str, value: str) -> None:
    node = NodeProcess(tmp_path / "bad", env={f"EDGENODE_ARTIFACTS_{name}": value})
    with pytest.raises(RuntimeError):
        node.start(timeout=20)
    assert f"artifacts.{name.lower()}" in node.log()
