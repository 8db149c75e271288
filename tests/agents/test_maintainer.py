"""examples/maintainer-agent end to end on a real node: fork, clone into a sandbox, failing tests,
a scripted model's fix, passing tests, an approval over HTTP, a pushed branch and a merge request."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.agents.helpers import error_code, journal, run_of, wait_status
from tests.support import NodeProcess, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "maintainer-agent"


def seed(api: httpx.Client, name: str) -> None:
    """The example's fixture repository (a calculator with a bug) as artifacts repo ``name``."""
    fixture = EXAMPLE / "fixture"
    files = {p.name: p.read_text() for p in sorted(fixture.iterdir()) if p.is_file()}
    assert api.post("/v1/repos", json={"name": name}).status_code == 201
    r = api.post(f"/v1/repos/{name}/commits", json={"branch": "main", "message": "calc", "files": files})
    assert r.status_code in (200, 201), r.text


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.timeout(120)
def test_maintainer_agent_fixes_and_opens_a_merge_request(api: httpx.Client, agent_node: NodeProcess,
                                                          tmp_path: Path) -> None:
    files = {"main.py": (EXAMPLE / "main.py").read_text()}
    assert api.put("/v1/agents/maintainer", json={"files": files}).status_code in (200, 201)
    seed(api, "calc")
    r = api.post("/v1/agents/maintainer/runs", json={"id": "maint-1", "input": {"repo": "calc", "fork": "calc-fix"}})
    assert r.status_code == 201, r.text

    wait_for(lambda: (run_of(api, "maint-1")["waiting"] or {}).get("kind") == "approval"
             or run_of(api, "maint-1")["status"] in ("completed", "failed", "blocked"), timeout=60,
             message="the approval")
    run = run_of(api, "maint-1")
    assert run["status"] == "waiting", (run["output"], run["error"])
    [pending] = [a for a in api.get("/v1/agents/approvals").json()["approvals"] if a["run"] == "maint-1"]
    data = pending["data"]
    assert "-    return a - b" in data["diff"] and "+    return a + b" in data["diff"]
    assert "FAILED" in data["tests_before"] and "OK" in data["tests_after"]
    assert data["summary"].startswith("Fix add()")
    # Nothing is committed before the human says so.
    assert "refs/heads/fix/failing-tests" not in api.get("/v1/repos/calc-fix/refs").json()["refs"]

    # The parked run survives kill -9 of the node, sandbox workspace included.
    agent_node.kill()
    agent_node.start()
    with agent_node.client() as fresh:
        approve_and_check(fresh, agent_node, tmp_path)


def approve_and_check(api: httpx.Client, agent_node: NodeProcess, tmp_path: Path) -> None:
    """Approve the parked run over HTTP, then check the branch, the merge request and the journal."""
    assert run_of(api, "maint-1")["status"] == "waiting"
    assert api.post("/v1/agents/runs/maint-1/approve", json={"comment": "lgtm"}).status_code == 200
    done = wait_status(api, "maint-1", "completed", "failed", "blocked", timeout=60)
    assert done["status"] == "completed" and done["output"]["status"] == "merge_request", done
    out = done["output"]
    mr = out["merge_request"]
    assert mr["source"] == "calc-fix" and mr["branch"] == "fix/failing-tests" and mr["commit"] == out["commit"]
    assert mr["repo"] == "calc" and mr["title"].startswith("Fix add()") and mr["state"] == "open"

    # The merge request lives in the upstream's event log; the agent's state lists it.
    events = api.get("/v1/repos/calc/events", params={"kind": "merge_request"}).json()["events"]
    assert [(e["mr"], e["commit"], e["run"]) for e in events] == [(mr["id"], out["commit"], "maint-1")]
    assert api.get("/v1/agents/maintainer").json()["state"]["merge_requests"] == [mr["id"]]

    # Real git: the branch of the fork has the fix on top of main; main (fork and upstream) does not.
    token = api.post("/v1/repos/calc-fix/tokens", json={"access": "read", "ttl_s": 60}).json()["token"]
    url = agent_node.url.replace("http://", f"http://git:{token}@") + "/git/calc-fix.git"
    git("clone", "-q", url, "clone", cwd=tmp_path)
    clone = tmp_path / "clone"
    assert git("rev-parse", "origin/fix/failing-tests", cwd=clone).strip() == out["commit"]
    assert "return a + b" in git("show", "origin/fix/failing-tests:calc.py", cwd=clone)
    assert "return a - b" in git("show", "origin/main:calc.py", cwd=clone)
    assert git("rev-parse", "origin/fix/failing-tests^", cwd=clone) == git("rev-parse", "origin/main", cwd=clone)
    upstream_main = api.get("/v1/repos/calc/blob/main/calc.py")
    assert upstream_main.status_code == 200 and "return a - b" in upstream_main.text

    kinds = [e["kind"] for e in journal(api, "maint-1")]
    assert kinds[:4] == ["tool.fork", "tool.sandbox_create", "tool.repo_token", "tool.sandbox_exec"]
    assert kinds.count("model.chat") == 3 and kinds.count("approval") == 1
    assert kinds[-5:] == ["tool.sandbox_exec", "tool.merge_request", "state.get", "state.set", "tool.sandbox_delete"]
    # The sandbox is gone once the run is done.
    assert out["sandbox"].startswith("sb_")
    assert all(s["id"] != out["sandbox"] for s in api.get("/v1/sandboxes").json()["sandboxes"])


def test_maintainer_tools_reject_bad_input(api: httpx.Client) -> None:
    seed(api, "calc-mr")
    source = """
from edgenode_guest.agent import HostError

CALLS = [
    lambda ctx: ctx.merge_request("calc-mr", source="calc-mr", branch="no-such-branch", title="x"),
    lambda ctx: ctx.merge_request("calc-mr", source="calc-mr", branch="main", title=" "),
    lambda ctx: ctx.merge_request("calc-mr", source="calc-mr", branch="../x", title="x"),
    lambda ctx: ctx.merge_request("calc-mr", source="missing-repo", branch="main", title="x"),
    lambda ctx: ctx.fork("missing-repo", "calc-mr-fork"),
    lambda ctx: ctx.fork("calc-mr", "Bad Name"),
    lambda ctx: ctx.repo_token("calc-mr", "admin"),
    lambda ctx: ctx.repo_token("calc-mr", "read", ttl_s=-1),
    lambda ctx: ctx.sandbox_create(network={"allow": 5}),
    # Forking again to a fork of the same source returns it (at least once after a crash); another name is taken.
    lambda ctx: ctx.fork("calc-mr", "calc-mr-twice"),
    lambda ctx: ctx.fork("calc-mr", "calc-mr-twice"),
    lambda ctx: ctx.fork("calc-mr-twice", "calc-mr"),
]

def run(ctx, input):
    codes = []
    for call in CALLS:
        try:
            call(ctx)
            codes.append("ok")
        except HostError as exc:
            codes.append(exc.code)
    return codes
"""
    assert api.put("/v1/agents/mr-check", json={"files": {"main.py": source}}).status_code in (200, 201)
    r = api.post("/v1/agents/mr-check/runs", json={"id": "mr-check-1"})
    assert r.status_code == 201, r.text
    done = wait_status(api, "mr-check-1", "completed", "failed")
    assert done["output"] == ["validation_failed", "validation_failed", "validation_failed", "artifact_not_found",
                              "artifact_not_found", "validation_failed", "validation_failed", "validation_failed",
                              "validation_failed", "ok", "ok", "repo_exists"], done
    assert api.get("/v1/repos/calc-mr/events", params={"kind": "merge_request"}).json()["events"] == []
    assert api.get("/v1/repos/calc-mr-fork").status_code == 404
    # The node keeps serving, and the HTTP API's own errors stay JSON.
    assert error_code(api.get("/v1/repos/no-such-repo/events")) == "artifact_not_found"
