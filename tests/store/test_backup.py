"""edgenode backup of a node under write load, restored into a new data directory: every acknowledged write is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.artifacts.gitutil import create_repo, git, git_url
from tests.store.disk import small_disk
from tests.support import MIN_WAIT_S, NodeProcess


def edgenode(*args: str) -> subprocess.CompletedProcess[str]:
    """The edgenode command line, in a child process."""
    return subprocess.run([sys.executable, "-m", "edgenode", *args], capture_output=True, text=True, timeout=300)


class Load:
    """A thread doing KV puts and SQL inserts, recording each one the node acknowledged."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.keys: list[str] = []
        self.rows: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.node.client(timeout=60) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                r = c.put(f"/v1/kv/load/k{n}", content=f"v{n}".encode())
                if r.status_code == 200:
                    self.keys.append(f"k{n}")
                else:
                    self.errors.append(r.text)
                r = c.post("/v1/sql/load", json={"sql": "INSERT INTO rows (id) VALUES (?)", "params": [n]})
                if r.status_code == 200:
                    self.rows.append(n)
                else:
                    self.errors.append(r.text)
                with self.progress:
                    self.progress.notify_all()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + MIN_WAIT_S
        with self.progress:
            while len(self.rows) < count:
                assert time.monotonic() < deadline, "the load made no progress"
                self.progress.wait(1)


class Pushes:
    """A thread pushing one new commit after another to a branch, recording each one the node took."""

    def __init__(self, node: NodeProcess, work: Path, repo: str) -> None:
        self.url = git_url(node, repo, node.admin_token)
        self.work = work
        self.pushed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            (self.work / f"page-{n}.html").write_bytes(os.urandom(2048))
            git("add", ".", cwd=self.work)
            git("commit", "-q", "-m", f"page {n}", cwd=self.work)
            if git("push", "-q", self.url, "HEAD:refs/heads/load", cwd=self.work, check=False).returncode == 0:
                self.pushed.append(git("rev-parse", "HEAD", cwd=self.work).stdout.strip())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("live") / "data").start()
    try:
        yield node
    finally:
        node.stop()


def test_a_backup_under_write_load_restores_every_acknowledged_write(live: NodeProcess, tmp_path: Path) -> None:
    with live.client() as c:
        assert c.post("/v1/sql/load", json={"sql": "CREATE TABLE rows (id INTEGER PRIMARY KEY)"}).status_code == 200
        create_repo(c, "site")
        box = c.post("/v1/sandboxes", json={"name": "work"}).json()["id"]
        assert c.put(f"/v1/sandboxes/{box}/files/notes.txt", content=b"kept").status_code == 201
    workspace = live.data_dir / "sandboxes" / box / "workspace"
    (workspace / "sub").mkdir()
    (workspace / "sub" / "inner.txt").write_bytes(b"in")
    (workspace / "link-to-sub").symlink_to("sub")  # as a command in the sandbox would make them
    (workspace / "link-to-notes").symlink_to("notes.txt")
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "index.html").write_text("hello\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", git_url(live, "site", live.admin_token), "main", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    with live.client() as c:
        assert c.post("/v1/repos/site/fork", json={"name": "site-fork"}).status_code == 201

    load = Load(live)
    pushes = Pushes(live, work, "site")
    load.thread.start()
    pushes.thread.start()
    try:
        load.wait_for(20)
        deadline = time.monotonic() + MIN_WAIT_S
        while not pushes.pushed:
            assert time.monotonic() < deadline and pushes.thread.is_alive(), "no push went through"
            time.sleep(0.05)
        # Acknowledged before the backup began:
        keys, rows, commits = list(load.keys), list(load.rows), list(pushes.pushed)
        done = edgenode("backup", str(tmp_path / "backup"), "--data", str(live.data_dir))
        assert done.returncode == 0, done.stderr
        load.wait_for(len(rows) + 5)  # the node kept taking writes during and after the backup
    finally:
        load.stop.set()
        pushes.stop.set()
        load.thread.join(MIN_WAIT_S)
        pushes.thread.join(MIN_WAIT_S)
    assert not load.errors, load.errors[:3]
    report = json.loads(done.stdout)
    assert "state/default/load.db" in report["databases"] and "node.db" in report["databases"]
    assert "artifacts/default/site.git" in report["repositories"]

    data = tmp_path / "restored"
    done = edgenode("restore", str(tmp_path / "backup"), str(data))
    assert done.returncode == 0, done.stderr
    node = NodeProcess(data).start()
    try:
        assert node.node_id == live.node_id and node.admin_token == live.admin_token
        with node.client() as c:
            missing = [k for k in keys if c.get(f"/v1/kv/load/{k}").content != f"v{k[1:]}".encode()]
            assert not missing, missing[:5]
            ids = {row[0] for row in c.post("/v1/sql/load", json={"sql": "SELECT id FROM rows"}).json()["rows"]}
            assert set(rows) <= ids, sorted(set(rows) - ids)[:5]
            assert c.get(f"/v1/sandboxes/{box}/files/notes.txt").content == b"kept"
        restored_ws = data / "sandboxes" / box / "workspace"
        assert os.readlink(restored_ws / "link-to-sub") == "sub" and os.readlink(restored_ws / "link-to-notes") == \
            "notes.txt"
        assert (restored_ws / "sub" / "inner.txt").read_bytes() == b"in"
        for repo in ("site", "site-fork"):
            clone = tmp_path / f"clone-{repo}"
            git("clone", "-q", git_url(node, repo, node.admin_token), str(clone), cwd=tmp_path)
            assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
            git("fsck", "--full", cwd=clone)
        # Every push taken before the backup is there, and the copy of a repository pushed to meanwhile is whole.
        site = data / "artifacts/default/site.git"
        for sha in commits:
            git("cat-file", "-e", f"{sha}^{{commit}}", cwd=site)
        git("fsck", "--full", "--no-dangling", cwd=site)
        # The fork borrows its parent's objects from the restored directory, not the live one.
        alternates = (data / "artifacts/default/site-fork.git/objects/info/alternates").read_text()
        assert str(data) in alternates and str(live.data_dir) not in alternates
    finally:
        assert node.stop() == 0


def test_restore_refuses_a_non_empty_directory_without_force_and_moves_it_aside_with(
        live: NodeProcess, tmp_path: Path) -> None:
    assert edgenode("backup", str(tmp_path / "b"), "--data", str(live.data_dir)).returncode == 0
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("mine")
    done = edgenode("restore", str(tmp_path / "b"), str(target))
    assert done.returncode != 0 and "not empty" in done.stderr and "--force" in done.stderr, done.stderr
    assert (target / "precious").read_text() == "mine" and not (target / "node.db").exists()

    done = edgenode("restore", str(tmp_path / "b"), str(target), "--force")
    assert done.returncode == 0, done.stderr
    assert (target / "node.db").exists() and not (target / "precious").exists()
    moved = Path(json.loads(done.stdout)["moved_aside"])
    assert (moved / "precious").read_text() == "mine"

    # Never into the directory a node serves from, forced or not.
    done = edgenode("restore", str(tmp_path / "b"), str(live.data_dir), "--force")
    assert done.returncode != 0 and "stop it" in done.stderr, done.stderr


def test_bad_backup_sources_and_targets_are_refused(live: NodeProcess, tmp_path: Path) -> None:
    assert edgenode("backup", str(tmp_path / "b3"), "--data", str(live.data_dir)).returncode == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for args, words in [
        (("backup", str(tmp_path / "full"), "--data", str(live.data_dir)), "not an empty directory"),
        (("backup", str(live.data_dir / "inside"), "--data", str(live.data_dir)), "inside the data directory"),
        (("backup", str(tmp_path / "b2"), "--data", str(tmp_path / "full")), "not a node's data directory"),
        (("restore", str(tmp_path / "full"), str(tmp_path / "new")), "not a backup"),
        (("restore", str(tmp_path / "full"), str(tmp_path / "new"), "--timestamp", "yesterday"), "ISO 8601"),
        (("restore", str(tmp_path / "full"), str(tmp_path / "new"), "--timestamp", "nan"), "ISO 8601"),
        (("restore", str(tmp_path / "b3"), str(tmp_path / "new"), "--only", "nope.db"), "holds no database nope.db"),
    ]:
        done = edgenode(*args)
        assert done.returncode != 0 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "b2").exists() and not (tmp_path / "new").exists()
    assert not (live.data_dir / "inside").exists()


def test_the_backup_holds_no_log_sidecars_and_is_private(live: NodeProcess, tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, headers={"authorization": f"Bearer {live.admin_token}"}) as c:
        assert c.put("/v1/kv/side/k", content=b"v").status_code == 200
    dest = tmp_path / "b"
    assert edgenode("backup", str(dest), "--data", str(live.data_dir)).returncode == 0
    assert not [p for p in dest.rglob("*") if p.name.endswith(("-wal", "-shm"))]
    assert dest.stat().st_mode & 0o077 == 0
    assert not list(tmp_path.glob(".*partial"))


def test_a_backup_to_a_full_disk_says_so_and_leaves_nothing(live: NodeProcess, tmp_path: Path) -> None:
    with small_disk(tmp_path / "small", 1) as small:
        with live.client() as c:  # more than the small disk holds
            for i in range(8):
                assert c.put(f"/v1/kv/bulk/k{i}", content=os.urandom(256 * 1024)).status_code == 200
        done = edgenode("backup", str(small / "b"), "--data", str(live.data_dir))
        assert done.returncode != 0 and "no space left on the disk holding the backup" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert list(small.iterdir()) == []
