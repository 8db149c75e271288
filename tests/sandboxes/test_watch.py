"""File watch: a stream of server-sent events for changes that commands in the sandbox make."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node



class Stream:
    """A watch stream read on a thread; ``events`` fills as they come."""

    def __init__(self, node_client: httpx.Client, sandbox: str, **query: str) -> None:
        self.events: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.changed = threading.Condition()
        self._cm = node_client.stream("GET", f"/v1/sandboxes/{sandbox}/watch", params={"follow": "true", **query},
                                      timeout=120)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind = ""
        try:
            for line in self.response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    with self.changed:
                        self.events.append((kind, json.loads(line[6:])))
                        self.changed.notify_all()
                    if kind == "ready":
                        self.ready.set()
        except httpx.HTTPError:
            pass

    def wait(self, kind: str, path: str, timeout: float = 60) -> dict:
        with self.changed:
            found = self.changed.wait_for(lambda: next((d for k, d in self.events if k == kind and d["path"] == path),
                                                       None), timeout)
        assert found, f"no {kind} {path} in {self.events}"
        return dict(found)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def test_a_watch_reports_what_exec_does(admin: httpx.Client, sandbox: str) -> None:
    run(admin, sandbox, "mkdir -p src/deep")
    stream = Stream(admin, sandbox, path="src", recursive="true")
    try:
        assert stream.ready.wait(60)
        run(admin, sandbox, "echo hi > src/a.txt")
        stream.wait("created", "src/a.txt")
        stream.wait("modified", "src/a.txt")
        run(admin, sandbox, "echo deeper > src/deep/b.txt && mkdir src/new && echo x > src/new/c.txt")
        stream.wait("created", "src/deep/b.txt")
        stream.wait("created", "src/new")
        stream.wait("created", "src/new/c.txt")  # in a directory made a moment before
        run(admin, sandbox, "mv src/a.txt src/renamed.txt && rm src/deep/b.txt")
        moved = stream.wait("moved", "src/renamed.txt")
        assert moved["from"] == "src/a.txt"
        stream.wait("deleted", "src/deep/b.txt")
        # Outside the watched path: not reported.
        run(admin, sandbox, "echo no > outside.txt && echo end > src/end.txt")
        stream.wait("created", "src/end.txt")
        assert not [d for _, d in stream.events if d.get("path") == "outside.txt"]
    finally:
        stream.close()


def test_a_watch_without_recursion_sees_one_level(admin: httpx.Client, sandbox: str) -> None:
    run(admin, sandbox, "mkdir -p top/sub")
    stream = Stream(admin, sandbox, path="top")
    try:
        assert stream.ready.wait(60)
        run(admin, sandbox, "echo a > top/sub/inner.txt && echo b > top/outer.txt")
        stream.wait("created", "top/outer.txt")
        assert not [d for _, d in stream.events if d.get("path") == "top/sub/inner.txt"]
    finally:
        stream.close()


def test_a_watch_refuses_bad_paths(admin: httpx.Client, sandbox: str) -> None:
    url = f"/v1/sandboxes/{sandbox}/watch"
    # Without follow, the answer ends after saying the path can be watched.
    checked = admin.get(url, params={"path": "", "recursive": "true"})
    assert checked.status_code == 200 and checked.text.startswith("event: ready\n")
    run(admin, sandbox, "echo x > file.txt && ln -s / escape")
    assert_error(admin.get(url, params={"path": "../etc"}), 400, "path_refused")
    assert_error(admin.get(url, params={"path": "/etc"}), 400, "path_refused")
    assert_error(admin.get(url, params={"path": "escape"}), 400, "path_refused")
    assert_error(admin.get(url, params={"path": "missing"}), 404, "not_found")
    assert_error(admin.get(url, params={"path": "file.txt"}), 409, "conflict")
