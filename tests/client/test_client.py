"""The blocking SDK against a real node: every call, and the node's errors as exceptions."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edgenode.client import (
    BuildFailed,
    Client,
    Conflict,
    CpuLimitExceeded,
    Forbidden,
    GuestException,
    NodeTimeout,
    NodeUnreachable,
    NotFound,
    Overloaded,
    Unauthorized,
    ValidationFailed,
    errors,
)
from tests.client.helpers import APPROVAL_AGENT, tenant_token
from tests.support import NodeProcess, wait_for

DOUBLE = "def main(input):\n    print('doubling', input)\n    return {'twice': input * 2}\n"


# -- code mode -------------------------------------------------------------------


def test_run_returns_json_body_logs_and_usage(sdk: Client) -> None:
    result = sdk.run(DOUBLE, input=21)
    assert result.status == 200
    assert result.json == {"twice": 42}
    assert result.body == '{"twice":42}' and result.content == b'{"twice":42}'
    assert "doubling 21" in result.output
    assert result.usage["cpu_ms"] > 0


def test_run_maps_guest_failures_to_their_exceptions(sdk: Client) -> None:
    with pytest.raises(GuestException) as raised:
        sdk.run("def main(input):\n    raise KeyError('boom')\n")
    assert raised.value.code == "guest_exception" and raised.value.http_status == 422
    assert "KeyError" in raised.value.message and raised.value.request_id
    with pytest.raises(CpuLimitExceeded) as spun:
        sdk.run("def main(input):\n    while True:\n        pass\n", cpu_ms=50)
    assert spun.value.limit_ms == 50
    assert isinstance(spun.value, errors.IsolateError)


def test_run_refuses_bad_limits_as_validation_failed(sdk: Client) -> None:
    with pytest.raises(ValidationFailed) as raised:
        sdk.run(DOUBLE, cpu_ms=-5)
    assert raised.value.code == "validation_failed" and raised.value.field
    assert raised.value.http_status == 400


# -- sandboxes -------------------------------------------------------------------


def test_sandbox_exec_files_processes_and_delete(sdk: Client) -> None:
    box = sdk.sandboxes.create("sdk-box")
    assert box.name == "sdk-box" and sdk.sandboxes.get("sdk-box").id == box.id
    result = box.exec("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert box.exec(["python3", "-c", "print(6 * 7)"]).stdout == "42\n"

    assert box.files.write("deep/er/notes.txt", "hello\n") == 6  # parents are created
    assert box.files.read("deep/er/notes.txt") == b"hello\n"
    assert box.files.write("deep/er/notes.txt", b"again") == 5  # and existing ones are fine
    assert [e["name"] for e in box.files.list("deep/er")] == ["notes.txt"]
    assert "deep" in [e["name"] for e in box.files.list()]
    assert box.exec("cat deep/er/notes.txt").stdout == "again"
    with pytest.raises(NotFound):
        box.files.read("missing.txt")
    with pytest.raises(errors.SandboxPathRefused) as refused:
        box.files.write("../escape.txt", "x")
    assert refused.value.reason

    proc = box.processes.start("echo started; sleep 300")
    assert [p.id for p in box.processes.list()] == [proc.id]
    assert proc.refresh().info["state"] == "running"
    wait_for(lambda: "started" in proc.logs(), timeout=60, message="the process's first output")
    proc.kill()
    assert proc.logs(follow=True) == "started\n"  # followed to its end: the process is gone
    assert proc.refresh().info["state"] == "exited"

    box.delete()
    with pytest.raises(errors.SandboxNotFound) as gone:
        sdk.sandboxes.get(box.id)
    assert isinstance(gone.value, NotFound) and gone.value.code == "sandbox_not_found"


def test_sandbox_fork_ports_and_checkout(sdk: Client) -> None:
    box = sdk.sandboxes.create()
    box.files.write("notes.txt", "from the source\n")
    fork = box.fork("sdk-fork")
    assert fork.id != box.id and fork.info["forked_from"] == box.id and fork.name == "sdk-fork"
    fork.files.write("notes.txt", "from the fork\n")
    assert box.files.read("notes.txt") == b"from the source\n"  # independent after the fork
    assert fork.exec("cat notes.txt").stdout == "from the fork\n"

    box.processes.start("python3 -m http.server 8000 --bind 127.0.0.1")
    exposed = box.expose_port(8000)
    assert exposed["port"] == 8000 and exposed["url"].endswith(f"/v1/sandboxes/{box.id}/ports/8000/")
    assert [p["port"] for p in box.ports()] == [8000]
    listing = wait_for(lambda: (r := sdk.http.get(exposed["path"])).status_code == 200 and r, timeout=60,
                       message="the sandbox's server answering through its port")
    assert "notes.txt" in listing.text
    box.unexpose_port(8000)
    assert box.ports() == []
    with pytest.raises(errors.ValidationFailed):
        box.git_checkout("ext::sh -c touch% /tmp/pwned")
    fork.delete()
    box.delete()


def test_sandbox_exec_streams_output_events(sdk: Client) -> None:
    box = sdk.sandboxes.create()
    try:
        events = list(box.exec("echo one; echo two >&2; echo three", stream=True))
        lines = [(e.kind, e.line) for e in events if e.kind != "exit"]
        assert sorted(lines) == sorted([("stdout", "one"), ("stderr", "two"), ("stdout", "three")])
        assert events[-1].kind == "exit" and events[-1].result is not None
        assert events[-1].result.exit_code == 0
        with pytest.raises(ValidationFailed):  # errors raise before any event is read
            box.exec("", stream=True)
    finally:
        box.delete()


# -- workers ---------------------------------------------------------------------


HELLO = (
    "from edgenode_guest import Response\n"
    "def handle(request):\n"
    "    return Response.json({'path': request.path, 'name': request.query.get('name'), 'body': request.text()})\n"
)


def test_workers_deploy_invoke_list_delete(sdk: Client, tmp_path: Path) -> None:
    deployed = sdk.workers.deploy("hello", files={"main.py": HELLO})
    assert deployed["name"] == "hello" and deployed["version"] == 1
    response = sdk.workers.invoke("hello", "/a/b", params={"name": "you"})
    assert response.status_code == 200
    assert response.json() == {"path": "/a/b", "name": "you", "body": ""}
    posted = sdk.workers.invoke("hello", "/", method="POST", json={"x": 1})
    assert posted.json()["body"] == '{"x": 1}'

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("GREETING = 'hi from a package'\n")
    (tmp_path / "main.py").write_text("import pkg\ndef handle(request):\n    return pkg.GREETING\n")
    assert sdk.workers.deploy("from-dir", path=tmp_path)["version"] == 1
    assert sdk.workers.invoke("from-dir").text == "hi from a package"

    assert {w["name"] for w in sdk.workers.list()} >= {"hello", "from-dir"}
    assert sdk.workers.get("hello")["name"] == "hello"
    sdk.workers.delete("from-dir")
    with pytest.raises(errors.WorkerNotFound):
        sdk.workers.invoke("from-dir")
    with pytest.raises(TypeError):
        sdk.workers.deploy("both", files={"main.py": HELLO}, path=tmp_path)


def test_workers_deploy_reports_build_failures(sdk: Client) -> None:
    with pytest.raises(BuildFailed) as raised:
        sdk.workers.deploy("broken", files={"main.py": "def handle(request)\n    return 1\n"})
    assert raised.value.code == "build_failed" and raised.value.output
    with pytest.raises(errors.WorkerNotFound):
        sdk.workers.get("broken")


def test_worker_errors_raise_but_its_own_statuses_do_not(sdk: Client) -> None:
    sdk.workers.deploy("teapot", files={"main.py": (
        "from edgenode_guest import Response\n"
        "def handle(request):\n"
        "    if request.path == '/raise':\n"
        "        raise ValueError('nope')\n"
        "    return Response('short and stout', status=418)\n")})
    assert sdk.workers.invoke("teapot").status_code == 418
    with pytest.raises(GuestException):
        sdk.workers.invoke("teapot", "/raise")


# -- repositories ----------------------------------------------------------------


def test_repos_create_commit_read_refs(sdk: Client) -> None:
    repo = sdk.repos.create("notes")
    assert repo["name"] == "notes"
    first = sdk.repos.commit("notes", {"README.md": "# notes\n", "src/a.py": "A = 1\n"}, message="first")
    assert len(first) == 40
    assert sdk.repos.read_file("notes", "src/a.py") == b"A = 1\n"
    second = sdk.repos.commit("notes", {"src/a.py": None}, message="drop a", parent=first)
    assert sdk.repos.refs("notes")["refs"]["refs/heads/main"] == second
    assert sdk.repos.read_file("notes", "src/a.py", ref=first) == b"A = 1\n"
    assert [c["commit"] for c in sdk.repos.log("notes")][:2] == [second, first]
    assert "notes" in [r["name"] for r in sdk.repos.list()]
    with pytest.raises(errors.ParentMoved) as moved:
        sdk.repos.commit("notes", {"b.txt": "b"}, message="stale", parent=first)
    assert isinstance(moved.value, Conflict) and moved.value.actual == second
    with pytest.raises(errors.ArtifactNotFound):
        sdk.repos.read_file("notes", "src/a.py")
    with pytest.raises(errors.RepoExists):
        sdk.repos.create("notes")
    sdk.repos.delete("notes")
    with pytest.raises(NotFound):
        sdk.repos.refs("notes")


# -- state -----------------------------------------------------------------------


def test_kv_and_sql(sdk: Client) -> None:
    kv = sdk.kv("app")
    assert kv.get("greeting") is None
    version = kv.put("greeting", "hello")
    assert kv.get("greeting") == b"hello"
    assert kv.put("greeting", b"bye", if_match=version) != version
    with pytest.raises(errors.VersionMismatch):
        kv.put("greeting", "again", if_match=version)
    for i in range(5):
        kv.put(f"item/{i}", str(i))
    assert kv.list("item/", page_size=2) == [f"item/{i}" for i in range(5)]
    kv.delete("greeting")
    assert kv.get("greeting") is None

    sdk.sql("app", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    assert sdk.sql("app", "INSERT INTO notes VALUES (?, ?)", ["n1", "first"]).rows_affected == 1
    result = sdk.sql("app", "SELECT id, body FROM notes WHERE id = :id", {"id": "n1"})
    assert result.columns == ["id", "body"] and result.dicts() == [{"id": "n1", "body": "first"}]
    with pytest.raises(errors.SqlError):
        sdk.sql("app", "SELEC nothing")
    with pytest.raises(errors.SqlRefused) as refused:
        sdk.sql("app", "DROP TABLE notes")
    assert isinstance(refused.value, Forbidden)


# -- agents ----------------------------------------------------------------------


def test_agent_run_followed_to_its_approval(sdk: Client) -> None:
    assert sdk.agents.deploy("publisher", files={"main.py": APPROVAL_AGENT})["version"] == 1
    run = sdk.agents.start("publisher", {"title": "hello"}, id="sdk-run-1")
    assert sdk.agents.start("publisher", {"title": "hello"}, id="sdk-run-1").id == run.id  # idempotent
    run.wait_for_approval(timeout=60)
    assert run.awaiting_approval and run.info["waiting"]["prompt"] == "publish?"
    run.approve(comment="ship it")
    run.wait(timeout=60)
    assert run.status == "completed"
    assert run.output == {"approved": True, "comment": "ship it", "draft": {"title": "hello"}}
    with pytest.raises(errors.RunFinished):
        run.approve()


def test_agent_run_events_until_the_run_finishes(sdk: Client) -> None:
    sdk.agents.deploy("publisher", files={"main.py": APPROVAL_AGENT})
    run = sdk.agents.start("publisher", "draft")
    seen = []
    for event in run.events(timeout=120):
        seen.append(event)
        if event.kind == "status" and event.data["status"] == "waiting":
            run.reject(comment="not yet")
    statuses = [e.data["status"] for e in seen if e.kind == "status"]
    assert statuses[-1] == "completed" and "waiting" in statuses
    assert any(e.kind == "journal" and e.data["kind"] == "approval" for e in seen)
    assert run.output["approved"] is False


def test_agent_errors(sdk: Client) -> None:
    with pytest.raises(errors.AgentNotFound):
        sdk.agents.start("nobody")
    with pytest.raises(errors.RunNotFound):
        sdk.agents.run("run_0000000000000000")
    with pytest.raises(BuildFailed):
        sdk.agents.deploy("bad", files={"main.py": "def run(ctx, input)\n"})


# -- auth and transport ----------------------------------------------------------


def test_tenants_are_kept_apart_and_bad_tokens_refused(node: NodeProcess, sdk: Client) -> None:
    box = sdk.sandboxes.create()
    sdk.agents.deploy("publisher", files={"main.py": APPROVAL_AGENT})
    run = sdk.agents.start("publisher", "mine")
    with Client(node.url, tenant_token(node, "rival")) as rival:
        with pytest.raises(errors.SandboxNotFound):
            rival.sandboxes.get(box.id)
        with pytest.raises(errors.RunNotFound):  # another tenant's run looks like a missing one
            rival.agents.run(run.id)
        assert rival.whoami()["tenant"] == "rival"
    with Client(node.url, node.admin_token, tenant="acme") as admin:
        assert admin.sandboxes.get(box.id).id == box.id
    with Client(node.url, "edn_nope_nope") as stranger, pytest.raises(Unauthorized) as raised:
        stranger.sandboxes.list()
    assert raised.value.http_status == 401
    box.delete()


def test_commands_may_outlast_the_client_timeout_but_a_silent_node_may_not(node: NodeProcess, token: str) -> None:
    with Client(node.url, token, timeout=1) as short:
        box = short.sandboxes.create()
        try:
            # The node bounds an exec (its timeout_s), so the client's read timeout does not apply.
            assert box.exec("sleep 2; echo done").stdout == "done\n"
            assert [e.line for e in box.exec("sleep 2; echo late", stream=True) if e.kind == "stdout"] == ["late"]
        finally:
            box.delete()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are queued, never answered
        with Client(f"http://127.0.0.1:{silent.getsockname()[1]}", "t", timeout=0.5) as c:
            with pytest.raises(NodeTimeout) as raised:
                c.whoami()
    assert isinstance(raised.value, NodeUnreachable) and raised.value.code == "client_timeout"


def test_an_unreachable_node_raises_node_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with Client(f"http://127.0.0.1:{port}", "t") as c, pytest.raises(NodeUnreachable) as raised:
            c.whoami()
    assert type(raised.value) is NodeUnreachable


def test_a_full_isolate_pool_raises_overloaded_with_retry_after(make_node: Callable[..., NodeProcess]) -> None:
    busy = make_node("busy", env={"EDGENODE_WORKERS_POOL_SIZE": "1", "EDGENODE_WORKERS_QUEUE_DEPTH": "0"})
    stop = threading.Event()

    def spin() -> None:  # keeps the one isolate thread busy, 300 ms of CPU at a time
        with Client(busy.url, busy.admin_token, timeout=120) as c:
            while not stop.is_set():
                with contextlib.suppress(CpuLimitExceeded, Overloaded):
                    c.run("def main(input):\n    while True:\n        pass\n", cpu_ms=300)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        with Client(busy.url, busy.admin_token) as c:
            def refused() -> Overloaded | None:
                try:
                    c.run(DOUBLE, input=1)
                except Overloaded as exc:
                    return exc
                return None
            exc = wait_for(refused, timeout=60, interval=0.01, message="a run refused by the full pool")
        assert exc.code == "overloaded" and exc.retry_after == 1 and exc.http_status == 503
    finally:
        stop.set()
        spinner.join(timeout=60)
