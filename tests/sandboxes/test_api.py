"""The sandbox API end to end on a real node: lifecycle, exec (JSON and streamed), bad input, tenancy."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess, wait_for


def test_create_inspect_list_delete(admin: httpx.Client, node: NodeProcess) -> None:
    created = admin.post("/v1/sandboxes", json={"name": "life", "limits": {"pids": 32}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"].startswith("sb_") and body["name"] == "life"
    assert body["network"] == "none" and body["limits"]["pids"] == 32
    assert body["persistence"] == {"files": True, "processes": False}
    got = admin.get("/v1/sandboxes/life").json()  # by name as well as by id
    assert got["id"] == body["id"] and got["disk_used_bytes"] >= 0
    assert body["id"] in [s["id"] for s in admin.get("/v1/sandboxes").json()["sandboxes"]]
    assert_error(admin.post("/v1/sandboxes", json={"name": "life"}), 409, "conflict")
    workspace = node.data_dir / "sandboxes" / body["id"] / "workspace"
    assert workspace.is_dir()
    assert admin.delete(f"/v1/sandboxes/{body['id']}").status_code == 204
    assert not workspace.exists()
    assert_error(admin.get(f"/v1/sandboxes/{body['id']}"), 404, "sandbox_not_found")
    assert_error(admin.delete(f"/v1/sandboxes/{body['id']}"), 404, "sandbox_not_found")


def test_exec_shell_string_and_argv(admin: httpx.Client, shared_sandbox: str) -> None:
    result = run(admin, shared_sandbox, "echo out; echo err >&2; exit 3")
    assert result["exit_code"] == 3
    assert result["stdout"] == "out\n" and result["stderr"] == "err\n"
    assert result["duration_ms"] > 0 and result["timed_out"] is False
    argv = run(admin, shared_sandbox, ["python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME"])
    assert argv["stdout"] == "['a b', '$HOME']\n"


def test_exec_cwd_env_stdin(admin: httpx.Client, shared_sandbox: str) -> None:
    run(admin, shared_sandbox, "mkdir -p sub/dir")
    assert run(admin, shared_sandbox, "pwd", cwd="sub/dir")["stdout"] == "/workspace/sub/dir\n"
    assert run(admin, shared_sandbox, "pwd", cwd="/tmp")["stdout"] == "/tmp\n"
    assert run(admin, shared_sandbox, "echo $GREETING", env={"GREETING": "hi"})["stdout"] == "hi\n"
    assert run(admin, shared_sandbox, "tr a-z A-Z", stdin="hello\n")["stdout"] == "HELLO\n"
    home = run(admin, shared_sandbox, "echo $HOME; id -un; hostname")["stdout"].split()
    assert home[:2] == ["/workspace", "sandbox"]


def test_exec_missing_command_and_cwd(admin: httpx.Client, shared_sandbox: str) -> None:
    missing = run(admin, shared_sandbox, ["no-such-program-here"])
    assert missing["exit_code"] == 127 and "error" in missing
    bad_cwd = run(admin, shared_sandbox, "true", cwd="does/not/exist")
    assert bad_cwd["exit_code"] == 127


def test_exec_timeout_kills_the_command(admin: httpx.Client, shared_sandbox: str) -> None:
    result = run(admin, shared_sandbox, "echo started; sleep 30", timeout_s=0.5)
    assert result["timed_out"] is True and result["stopped_by"] == "timeout"
    assert result["signal"] == 9 and result["exit_code"] == 137
    assert result["stdout"] == "started\n"
    assert "sleep 30" not in run(admin, shared_sandbox, "ps -eo args")["stdout"]


def test_exec_output_is_capped_and_flagged(admin: httpx.Client, shared_sandbox: str) -> None:
    result = run(admin, shared_sandbox, "head -c 100000 /dev/zero | tr '\\0' x; echo; echo tail >&2",
                 max_output_bytes=1000)
    assert len(result["stdout"]) == 1000
    assert result["truncated"] == {"stdout": True, "stderr": False}
    assert result["stderr"] == "tail\n" and result["exit_code"] == 0


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
    return events


def test_exec_streams_lines_then_exit(admin: httpx.Client, shared_sandbox: str) -> None:
    cmd = "for i in 1 2 3; do echo line $i; echo warn $i >&2; sleep 0.05; done; printf partial; exit 4"
    with admin.stream("POST", f"/v1/sandboxes/{shared_sandbox}/exec", json={"cmd": cmd},
                      headers={"accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    stdout = [e[1]["line"] for e in events if e[0] == "stdout"]
    stderr = [e[1]["line"] for e in events if e[0] == "stderr"]
    assert stdout == ["line 1", "line 2", "line 3", "partial"]
    assert stderr == ["warn 1", "warn 2", "warn 3"]
    assert events[-1][0] == "exit" and events[-1][1]["exit_code"] == 4
    assert sum(1 for e in events if e[0] == "exit") == 1


def test_streamed_timeout_reports_in_the_last_event(admin: httpx.Client, shared_sandbox: str) -> None:
    with admin.stream("POST", f"/v1/sandboxes/{shared_sandbox}/exec", json={"cmd": "echo a; sleep 20",
                      "timeout_s": 0.5}, headers={"accept": "text/event-stream"}) as response:
        events = _events(response)
    assert events[0] == ("stdout", {"line": "a"})
    assert events[-1][0] == "exit" and events[-1][1]["timed_out"] is True


def test_many_lines_arrive_whole_and_in_order_in_both_modes(admin: httpx.Client, shared_sandbox: str) -> None:
    # Megabytes of short lines, non-ASCII and JSON-special characters: written in pieces, never
    # one line lost, split or reordered.
    cmd = "seq 1 150000 | sed 's/$/ é \\\\ \"q\"/'"
    expected = [f'{i} é \\ "q"' for i in range(1, 150001)]
    with admin.stream("POST", f"/v1/sandboxes/{shared_sandbox}/exec", json={"cmd": cmd},
                      headers={"accept": "text/event-stream"}) as response:
        events = _events(response)
    assert [e[1]["line"] for e in events if e[0] == "stdout"] == expected
    assert events[-1][0] == "exit" and events[-1][1]["exit_code"] == 0
    result = run(admin, shared_sandbox, cmd)
    assert result["stdout"] == "\n".join(expected) + "\n" and result["exit_code"] == 0


def test_a_closed_stream_kills_its_command(admin: httpx.Client, shared_sandbox: str) -> None:
    with admin.stream("POST", f"/v1/sandboxes/{shared_sandbox}/exec",
                      json={"cmd": "echo go; exec sleep 77"}, headers={"accept": "text/event-stream"}) as response:
        for line in response.iter_lines():
            if "go" in line:
                break
    wait_for(lambda: "sleep 77" not in run(admin, shared_sandbox, "ps -eo args")["stdout"], timeout=60,
             message="the stream's command to be killed")


def test_a_json_exec_whose_client_leaves_is_killed(admin: httpx.Client, shared_sandbox: str,
                                                   node: NodeProcess) -> None:
    body = json.dumps({"cmd": "sleep 88 & exec sleep 89"}).encode()
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(f"POST /v1/sandboxes/{shared_sandbox}/exec HTTP/1.1\r\nHost: node\r\n"
                  f"Authorization: Bearer {node.admin_token}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: "sleep 89" in run(admin, shared_sandbox, "ps -eo args")["stdout"], timeout=60,
                 message="the command to start")
    # The client is gone: the command and its background child go with it, nothing is left behind.
    wait_for(lambda: not {"sleep 88", "sleep 89"} & set(run(admin, shared_sandbox, "ps -eo args")["stdout"]
                                                        .splitlines()),
             timeout=60, message="the command to be killed")
    wait_for(lambda: '"client disconnected"' in node.log(), timeout=60, message="the disconnect to be logged")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "validation_failed"),
        ({"cmd": ""}, "validation_failed"),
        ({"cmd": []}, "validation_failed"),
        ({"cmd": [1, 2]}, "validation_failed"),
        ({"cmd": "true", "timeout_s": -1}, "validation_failed"),
        ({"cmd": "true", "timeout_s": "5"}, "validation_failed"),
        ({"cmd": "true", "env": {"BAD NAME": "x"}}, "validation_failed"),
        ({"cmd": "true", "env": {"A": 1}}, "validation_failed"),
        ({"cmd": "true", "stdin": 5}, "validation_failed"),
        ({"cmd": "true", "stdin_b64": "!!"}, "validation_failed"),
        ({"cmd": "true", "max_output_bytes": 0}, "validation_failed"),
        ({"cmd": "true", "bogus": 1}, "validation_failed"),
    ],
)
def test_bad_exec_requests(admin: httpx.Client, shared_sandbox: str, body: dict, code: str) -> None:
    assert_error(admin.post(f"/v1/sandboxes/{shared_sandbox}/exec", json=body), 400, code)
    assert run(admin, shared_sandbox, "true")["exit_code"] == 0


def test_malformed_json_bodies(admin: httpx.Client, shared_sandbox: str) -> None:
    assert_error(admin.post("/v1/sandboxes", content=b"{nope", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(admin.post(f"/v1/sandboxes/{shared_sandbox}/exec", content=b"[1]",
                            headers={"content-type": "application/json"}), 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bad Name"},
        {"name": "sb_reserved"},
        {"name": "box\n"},
        {"name": 5},
        {"network": "all"},
        {"network": {"allow": "example.org"}},
        {"network": {"allow": ["ftp://example.org/"]}},
        {"limits": {"memory_mb": 10 ** 9}},
        {"limits": {"pids": "many"}},
        {"limits": {"unknown": 1}},
        {"extra": True},
    ],
)
def test_bad_create_requests(admin: httpx.Client, body: dict) -> None:
    assert_error(admin.post("/v1/sandboxes", json=body), 400, "validation_failed")
    assert admin.get("/healthz").status_code == 200


def test_unknown_sandbox_is_404(admin: httpx.Client) -> None:
    assert_error(admin.post("/v1/sandboxes/sb_nope/exec", json={"cmd": "true"}), 404, "sandbox_not_found")
    assert_error(admin.get("/v1/sandboxes/sb_nope/files/x"), 404, "sandbox_not_found")


def test_tenants_see_only_their_own_sandboxes(admin: httpx.Client, node: NodeProcess) -> None:
    tokens = {}
    for tenant in ("alpha", "beta"):
        issued = admin.post("/v1/tokens", json={"tenant": tenant})
        assert issued.status_code == 201, issued.text
        tokens[tenant] = issued.json()["token"]
    with node.client(tokens["alpha"]) as alpha, node.client(tokens["beta"]) as beta:
        mine = alpha.post("/v1/sandboxes", json={"name": "shared-name"}).json()
        theirs = beta.post("/v1/sandboxes", json={"name": "shared-name"})
        assert theirs.status_code == 201  # names are per tenant
        assert [s["id"] for s in alpha.get("/v1/sandboxes").json()["sandboxes"]] == [mine["id"]]
        assert mine["id"] not in [s["id"] for s in beta.get("/v1/sandboxes").json()["sandboxes"]]
        assert_error(beta.get(f"/v1/sandboxes/{mine['id']}"), 404, "sandbox_not_found")
        assert_error(beta.post(f"/v1/sandboxes/{mine['id']}/exec", json={"cmd": "true"}), 404, "sandbox_not_found")
        assert_error(beta.get(f"/v1/sandboxes/{mine['id']}/files"), 404, "sandbox_not_found")
        assert_error(beta.delete(f"/v1/sandboxes/{mine['id']}"), 404, "sandbox_not_found")
        assert alpha.get(f"/v1/sandboxes/{mine['id']}").status_code == 200
        for c, sid in ((alpha, mine["id"]), (beta, theirs.json()["id"])):
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204


def test_requests_without_a_token_are_refused(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.url) as anonymous:
        assert_error(anonymous.get("/v1/sandboxes"), 401, "unauthorized")


def test_status_reports_bwrap_and_limits(admin: httpx.Client) -> None:
    status = admin.get("/v1/status").json()["capabilities"]["sandboxes"]
    assert status["available"] is True
    assert status["bwrap_source"] in {"system", "wheel", "config"}
    assert tuple(int(x) for x in status["bwrap_version"].split(".")) >= (0, 8, 0)
    mode = status["enforcement"]["mode"]
    assert mode in {"rlimits", "cgroup-v1", "cgroup-v2"} and status["limits"] == f"{mode}+disk-accounting"
    assert status["seccomp"].startswith("bpf")
    # The status says plainly how memory and pids hold here (per sandbox, or per process only) and why.
    assert status["enforcement"]["reason"]
    assert "whole sandbox" in status["enforcement"]["memory"] if mode != "rlimits" \
        else "per process" in status["enforcement"]["memory"]


def test_why_cgroup_v2_is_not_used_is_said_plainly() -> None:
    from edgenode.sandboxes.cgroups import CgroupUnavailable, find_v2

    def why(proc_cgroup: str) -> str:
        with pytest.raises(CgroupUnavailable) as caught:
            find_v2("nkey", proc_cgroup, "")
        return str(caught.value)

    v1 = "9:name=systemd:/\n8:pids:/\n4:memory:/x\n0::/\n"
    assert "memory and pids controller(s) are mounted as cgroup v1" in why(v1)
    assert why("1:cpu:/\n") == "no cgroup v2 hierarchy is mounted"


def test_release_stops_processes_but_keeps_files(admin: httpx.Client, sandbox: str) -> None:
    run(admin, sandbox, "echo kept > file.txt")
    assert admin.get(f"/v1/sandboxes/{sandbox}").json()["state"] == "running"
    assert admin.post(f"/v1/sandboxes/{sandbox}/release").status_code == 204
    assert admin.get(f"/v1/sandboxes/{sandbox}").json()["state"] == "stopped"
    assert run(admin, sandbox, "cat file.txt")["stdout"] == "kept\n"


def test_a_partial_line_streams_once_the_command_pauses(admin: httpx.Client, shared_sandbox: str) -> None:
    with admin.stream("POST", f"/v1/sandboxes/{shared_sandbox}/exec",
                      json={"cmd": "printf 'progress...'; sleep 1; echo ' done'"},
                      headers={"accept": "text/event-stream"}) as response:
        events = _events(response)
    assert events[0] == ("stdout", {"line": "progress...", "partial": True})
    assert events[1] == ("stdout", {"line": " done"})
    assert events[2][0] == "exit"
