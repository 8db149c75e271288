"""examples/approval-agent end to end: scripted model with a tool call, approval, commit, state."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.agents.helpers import journal, run_of, wait_status
from tests.support import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval-agent"


def test_approval_agent_example(api: httpx.Client) -> None:
    files = {"main.py": (EXAMPLE / "main.py").read_text()}
    assert api.put("/v1/agents/approval-agent", json={"files": files}).status_code in (200, 201)
    assert api.post("/v1/repos", json={"name": "releases"}).status_code == 201
    r = api.post("/v1/agents/approval-agent/runs", json={
        "id": "release-1", "input": {"changes": ["fix login", "faster search"], "repo": "releases"}})
    assert r.status_code == 201
    wait_for(lambda: (run_of(api, "release-1")["waiting"] or {}).get("kind") == "approval", message="approval")
    [pending] = [a for a in api.get("/v1/agents/approvals").json()["approvals"] if a["run"] == "release-1"]
    assert pending["data"] == {"draft": "Release notes: 2 changes, all small and safe."}
    assert api.post("/v1/agents/runs/release-1/approve", json={"comment": "ship it"}).status_code == 200
    done = wait_status(api, "release-1", "completed", "failed")
    assert done["output"]["published"] is True and len(done["output"]["commit"]) == 40, done
    kinds = [e["kind"] for e in journal(api, "release-1")]
    assert kinds == ["model.chat", "step", "model.chat", "approval", "now", "tool.commit", "state.set"]
    tree = api.get("/v1/repos/releases/tree/main/RELEASE.md")
    assert tree.status_code == 200 and "2 changes" in tree.text
    state = api.get("/v1/agents/approval-agent").json()["state"]
    assert state["last"] == "published" and state["approved_by"] == "admin"  # the token that approved, by name
