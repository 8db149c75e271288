"""Background processes: start, list, logs (with follow), signal, kill; released on destroy and on idle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess, wait_for


def _start(admin: httpx.Client, sandbox: str, cmd: str) -> dict:
    response = admin.post(f"/v1/sandboxes/{sandbox}/processes", json={"cmd": cmd})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_start_list_logs_and_exit(admin: httpx.Client, sandbox: str) -> None:
    proc = _start(admin, sandbox, "for i in 1 2 3; do echo tick $i; sleep 0.1; done; echo bye >&2")
    assert proc["state"] == "running" and proc["id"] == 1
    base = f"/v1/sandboxes/{sandbox}/processes/{proc['id']}"
    followed = admin.get(f"{base}/logs?follow=true").text
    assert followed == "tick 1\ntick 2\ntick 3\nbye\n"
    done = admin.get(base).json()
    assert done["state"] == "exited" and done["exit_code"] == 0
    assert admin.get(f"{base}/logs?offset=7").text == "tick 2\ntick 3\nbye\n"
    listed = admin.get(f"/v1/sandboxes/{sandbox}/processes").json()["processes"]
    assert [p["id"] for p in listed] == [1]


def test_background_server_reachable_from_exec(admin: httpx.Client, sandbox: str) -> None:
    _start(admin, sandbox, "echo served > index.html; exec python3 -m http.server 8000 --bind 127.0.0.1")
    fetch = "curl -s --retry 20 --retry-delay 0 --retry-connrefused http://127.0.0.1:8000/index.html"
    assert run(admin, sandbox, fetch)["stdout"] == "served\n"


def test_signal_and_kill(admin: httpx.Client, sandbox: str) -> None:
    trap = _start(admin, sandbox, "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done")
    base = f"/v1/sandboxes/{sandbox}/processes/{trap['id']}"
    wait_for(lambda: "ready" in admin.get(f"{base}/logs").text, message="the trap to be set")
    assert admin.post(f"{base}/signal", json={"signal": "TERM"}).status_code == 200
    wait_for(lambda: admin.get(base).json()["state"] == "exited", message="exit after TERM")
    assert admin.get(base).json()["exit_code"] == 7
    assert "got TERM" in admin.get(f"{base}/logs").text
    sleeper = _start(admin, sandbox, "exec sleep 300")
    base = f"/v1/sandboxes/{sandbox}/processes/{sleeper['id']}"
    assert admin.delete(base).status_code == 200
    wait_for(lambda: admin.get(base).json()["state"] == "exited", message="exit after kill")
    assert admin.get(base).json()["signal"] == 9


def test_follow_streams_while_running(admin: httpx.Client, sandbox: str) -> None:
    proc = _start(admin, sandbox, "echo first; sleep 0.5; echo second")
    with admin.stream("GET", f"/v1/sandboxes/{sandbox}/processes/{proc['id']}/logs?follow=1") as response:
        received = []
        for chunk in response.iter_text():
            received.append((time.monotonic(), chunk))
    text = "".join(c for _, c in received)
    assert text == "first\nsecond\n"


def test_bad_process_requests(admin: httpx.Client, sandbox: str) -> None:
    base = f"/v1/sandboxes/{sandbox}/processes"
    assert_error(admin.get(f"{base}/99"), 404, "process_not_found")
    assert_error(admin.get(f"{base}/abc"), 400, "validation_failed")
    assert_error(admin.post(base, json={"cmd": 5}), 400, "validation_failed")
    proc = _start(admin, sandbox, "sleep 30")
    assert_error(admin.post(f"{base}/{proc['id']}/signal", json={"signal": "NOPE"}), 400, "validation_failed")
    assert_error(admin.post(f"{base}/{proc['id']}/signal", json={"signal": 99}), 400, "validation_failed")
    assert_error(admin.get(f"{base}/{proc['id']}/logs?offset=-1"), 400, "validation_failed")


def test_destroy_reaps_processes(admin: httpx.Client, node: NodeProcess) -> None:
    sid = admin.post("/v1/sandboxes", json={}).json()["id"]
    _start(admin, sid, "exec sleep 301")
    wait_for(lambda: "sleep 301" in run(admin, sid, "ps -eo args")["stdout"], message="the sleeper")
    assert admin.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert not _host_has("sleep 301")


def _host_has(needle: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def test_idle_sandboxes_release_processes_and_keep_files(make_node) -> None:
    node = make_node("idle", env={"EDGENODE_SANDBOXES_IDLE_TIMEOUT_S": "1",
                                  "EDGENODE_SANDBOXES_REAPER_INTERVAL_S": "0.2"})
    with node.client() as c:
        sid = c.post("/v1/sandboxes", json={}).json()["id"]
        c.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"kept")
        _start(c, sid, "exec sleep 302")
        wait_for(lambda: _host_has("sleep 302"), message="the sleeper")
        wait_for(lambda: c.get(f"/v1/sandboxes/{sid}").json()["state"] == "stopped", timeout=15,
                 message="idle release")
        assert not _host_has("sleep 302")
        assert c.get(f"/v1/sandboxes/{sid}/processes").json()["processes"] == []
        assert run(c, sid, "cat keep.txt")["stdout"] == "kept"


def test_node_stop_reaps_every_sandbox_process(make_node) -> None:
    node = make_node("reap")
    with node.client() as c:
        sid = c.post("/v1/sandboxes", json={}).json()["id"]
        _start(c, sid, "exec sleep 303")
        wait_for(lambda: _host_has("sleep 303"), message="the sleeper")
    node.stop()
    assert not _host_has("sleep 303")


def test_exec_returns_when_the_command_exits_even_if_children_linger(admin: httpx.Client, sandbox: str) -> None:
    result = run(admin, sandbox, "sleep 30 & echo done", timeout_s=20)
    assert result["stdout"] == "done\n" and result["exit_code"] == 0 and result["timed_out"] is False


def test_orphans_are_reaped(admin: httpx.Client, sandbox: str) -> None:
    # The subshell exits at once; its sleep is re-parented to the supervisor (PID 1) and must not stay a zombie.
    run(admin, sandbox, "(sleep 0.2 &)")
    wait_for(lambda: " Z" not in run(admin, sandbox, "ps -eo pid,stat,args")["stdout"]
             and "sleep 0.2" not in run(admin, sandbox, "ps -eo args")["stdout"], timeout=10,
             message="the orphan to be reaped")
    assert run(admin, sandbox, "cat /proc/1/cmdline | tr '\\0' ' '")["stdout"].startswith("/usr/bin/python3")
    # PID 1 ignores signals from inside its namespace: a command cannot take the supervisor down.
    run(admin, sandbox, "kill -9 1")
    assert run(admin, sandbox, "echo alive")["stdout"] == "alive\n"
    assert admin.get(f"/v1/sandboxes/{sandbox}").json()["state"] == "running"


def test_running_sandboxes_are_capped_least_recently_used_first(make_node) -> None:
    node = make_node("capped", env={"EDGENODE_SANDBOXES_MAX_RUNNING": "2"})
    with node.client() as c:
        ids = [c.post("/v1/sandboxes", json={}).json()["id"] for _ in range(3)]
        for sid in ids:
            assert run(c, sid, "echo hi")["stdout"] == "hi\n"
        states = [c.get(f"/v1/sandboxes/{sid}").json()["state"] for sid in ids]
        assert states == ["stopped", "running", "running"]  # the first, least recently used, made room
        # With every running sandbox busy with an exec, another must wait: this tenant holds them all,
        # past its share of the node, so 429 with Retry-After.
        results: list[dict] = []

        def long_exec(sid: str) -> None:
            with node.client() as own:
                results.append(run(own, sid, "sleep 4"))

        threads = [threading.Thread(target=long_exec, args=(sid,)) for sid in ids[1:]]
        for t in threads:
            t.start()
        for sid in ids[1:]:
            wait_for(lambda sid=sid: "sleep 4" in run(c, sid, "ps -eo args")["stdout"], message="the long execs")
        refused = c.post(f"/v1/sandboxes/{ids[0]}/exec", json={"cmd": "true"})
        assert_error(refused, 429, "tenant_over_share")
        assert refused.headers["retry-after"] == "5"
        for t in threads:
            t.join()
        assert [r["exit_code"] for r in results] == [0, 0]
        assert run(c, ids[0], "echo back")["stdout"] == "back\n"


def test_one_tenant_cannot_evict_anothers_sandboxes(make_node) -> None:
    node = make_node("fair", env={"EDGENODE_SANDBOXES_MAX_RUNNING": "2", "EDGENODE_SANDBOXES_MAX_PER_TENANT": "3"})
    with node.client() as admin:
        tokens = {t: admin.post("/v1/tokens", json={"tenant": t}).json()["token"] for t in ("alice", "bob")}
    with node.client(tokens["alice"]) as alice, node.client(tokens["bob"]) as bob:
        mine = bob.post("/v1/sandboxes", json={}).json()["id"]
        proc = _start(bob, mine, "sleep 1000")
        theirs = [alice.post("/v1/sandboxes", json={}).json()["id"] for _ in range(3)]
        for sid in theirs:  # each needs a slot; with the node full, alice makes room among her own
            assert run(alice, sid, "echo hi")["stdout"] == "hi\n"
        states = [alice.get(f"/v1/sandboxes/{sid}").json()["state"] for sid in theirs]
        assert states == ["stopped", "stopped", "running"]
        assert bob.get(f"/v1/sandboxes/{mine}").json()["state"] == "running"
        assert bob.get(f"/v1/sandboxes/{mine}/processes/{proc['id']}").json()["state"] == "running"
        # A tenant's number of sandboxes is capped too: 429 with Retry-After.
        refused = alice.post("/v1/sandboxes", json={})
        assert_error(refused, 429, "tenant_quota_exceeded")
        assert refused.headers["retry-after"] == "60"
        assert bob.post("/v1/sandboxes", json={}).status_code == 201
