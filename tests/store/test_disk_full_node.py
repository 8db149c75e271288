"""A real node whose data directory sits on a small tmpfs: a full disk gets 507s, and heals without a restart."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.artifacts.gitutil import git
from tests.store.disk import fill, free_bytes, small_disk
from tests.support import NodeProcess


class Pusher:
    """Pushes of a new branch holding one new commit (256 KiB of fresh bytes) to a repository, as git sends them."""

    def __init__(self, node: NodeProcess, work: Path, repo: str) -> None:
        self.node, self.work, self.repo = node, work, repo
        git("init", "-q", "--bare", str(work), cwd=work.parent)

    def _git(self, *args: str, input: bytes) -> str:
        return git(*args, cwd=self.work, input=input).stdout.decode().strip()

    def __call__(self, n: str) -> httpx.Response:
        blob = self._git("hash-object", "-w", "--stdin", input=os.urandom(256 * 1024))
        tree = self._git("mktree", input=f"100644 blob {blob}\tdata\n".encode())
        commit = self._git("commit-tree", tree, "-m", n, input=b"")
        pack = git("pack-objects", "--stdout", "--revs", cwd=self.work, input=f"{commit}\n".encode()).stdout
        line = f"{'0' * 40} {commit} refs/heads/b-{n}\0report-status\n".encode()
        body = f"{len(line) + 4:04x}".encode() + line + b"0000" + pack
        r = httpx.post(f"{self.node.url}/git/default/{self.repo}.git/git-receive-pack", content=body, timeout=60,
                       auth=("x", self.node.admin_token),
                       headers={"content-type": "application/x-git-receive-pack-request"})
        if r.status_code == 200 and b"unpack ok" not in r.content:
            r.status_code = 500  # refused in the push's own status: not a success
        return r


def _writes(c: httpx.Client, box: str, push: Pusher) -> dict[str, Callable[[str], httpx.Response]]:
    """One kind of write per database (a namespace by KV and SQL, node.db, artifacts.db, sandboxes.db), and files."""
    return {
        "git push": push,
        "api commit": lambda n: c.post("/v1/repos/pushed/commits", json={
            "branch": f"api-{n}", "message": n, "files": {"page.txt": os.urandom(64 * 1024).hex()}}),
        "worker deploy": lambda n: c.put(f"/v1/workers/w-{n}", json={"files": {
            "main.py": f"def handle(request):\n    return {n!r}\n"}}),
        "agent deploy": lambda n: c.put(f"/v1/agents/a-{n}", json={"files": {
            "main.py": f"def run(ctx, input):\n    return {n!r}\n"}}),
        "sandbox file": lambda n: c.put(f"/v1/sandboxes/{box}/files/f-{n}", content=os.urandom(256 * 1024)),
        "kv put (namespace)": lambda n: c.put(f"/v1/kv/app/key-{n}", content=os.urandom(64 * 1024)),
        "kv put (new namespace)": lambda n: c.put(f"/v1/kv/ns-{n}/k", content=b"v"),
        "sql insert (namespace)": lambda n: c.post("/v1/sql/app", json={
            "sql": "INSERT INTO notes (id, body) VALUES (?, ?)", "params": [n, f"note {n} " + "x" * 30_000]}),
        "new token (node.db)": lambda n: c.post("/v1/tokens", json={"tenant": "acme", "name": f"t{n}"}),
        "new repo (artifacts.db)": lambda n: c.post("/v1/repos", json={"name": f"repo-{n}"}),
        "new sandbox (sandboxes.db)": lambda n: c.post("/v1/sandboxes", json={"name": f"box-{n}"}),
    }


def test_full_disk_answers_507_and_the_same_process_writes_again_once_space_is_freed(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 48) as disk:
        node = NodeProcess(disk / "data", env={"EDGENODE_STORE_MIN_FREE_MB": "0"}).start()
        try:
            with node.client(timeout=60) as c:
                assert c.post("/v1/tenants", json={"name": "acme"}).status_code == 201
                assert c.post("/v1/sql/app", json={
                    "sql": "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"}).status_code == 200
                box = c.post("/v1/sandboxes", json={"name": "files"}).json()["id"]
                assert c.post("/v1/repos", json={"name": "pushed"}).status_code == 201
                push = Pusher(node, tmp_path / "work.git", "pushed")
                for name, write in _writes(c, box, push).items():
                    r = write("first")
                    assert r.status_code in (200, 201), (name, r.text)

                # Most of the disk goes to a file beside the node; the node's own writes take the rest.
                fill(disk / "filler", leave_bytes=2 << 20)
                puts = 0
                while (r := c.put(f"/v1/kv/app/fill-{puts}", content=os.urandom(256 * 1024))).status_code == 200:
                    puts += 1
                    assert puts < 100, "the disk never filled"
                assert r.status_code == 507, r.text
                fill(disk / "filler")  # whatever the node's refused writes left free

                # A database may still fit a few writes in log space it allocated before; past that, 507.
                for name, write in _writes(c, box, push).items():
                    for attempt in range(300):
                        r = write(f"full-{attempt}")
                        if r.status_code != 507:
                            assert r.status_code in (200, 201), (name, r.status_code, r.text)
                            continue
                        error = r.json()["error"]
                        assert error["code"] == "insufficient_storage", (name, error)
                        assert error["purpose"] and error["purpose"] != "data directory", (name, error)  # its own
                        assert error["free_bytes"] < 2 << 20, (name, error)
                        break
                    else:
                        raise AssertionError(f"{name}: never refused on a full disk")
                # Reads keep working, health says so.
                assert c.get("/v1/kv/app/key-first").status_code == 200
                assert c.post("/v1/sql/app", json={"sql": "SELECT COUNT(*) FROM notes"}).status_code == 200
                health = c.get("/healthz").json()
                assert health["store"]["ok"] is True and health["store"]["stuck_writers"] == []

                (disk / "filler").unlink()
                assert free_bytes(disk) > 8 << 20
                for name, write in _writes(c, box, push).items():
                    r = write("after")
                    assert r.status_code in (200, 201), (name, r.status_code, r.text)
                assert c.get("/v1/kv/app/key-after").status_code == 200
                assert c.get("/w/w-after").text == "after"
                assert c.get("/v1/repos/pushed/refs").text.count("b-after") == 1
                # A namespace refused on the full disk was not left behind as an empty, "damaged" file.
                assert c.put("/v1/kv/ns-full-0/k", content=b"v").status_code == 200
                assert c.get("/v1/kv/app/fill-0").status_code == 200
                metrics = c.get("/metrics").text
                assert 'edgenode_store_faults_total{kind="full"}' in metrics
            unexpected = [line[:3000] for line in node.log().splitlines() if "Traceback" in line]
            assert not unexpected, unexpected[:2]
        finally:
            assert node.stop() == 0
        node.start()  # and after a restart, everything acknowledged is there
        try:
            with node.client() as c:
                assert c.get("/v1/kv/app/key-after").status_code == 200
                # A namespace refused on the full disk was not left behind as an empty, "damaged" file.
                assert c.put("/v1/kv/ns-full-0/k", content=b"v").status_code == 200
                assert c.get("/v1/repos/repo-after/refs").status_code == 200
        finally:
            node.stop()

