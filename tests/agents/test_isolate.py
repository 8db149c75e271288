"""Agents in WebAssembly isolates: the same journal and replay, a fresh instance per activation.

Each new agent source costs a component build (about 10 s), so these tests share one agent;
replay mismatches, controls and the rest are runner-independent and tested with the process runner.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.agents.helpers import deploy, error_code, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for

pytestmark = pytest.mark.slow

AGENT = """
from edgenode_guest.agent import StepFailed

def spin():
    while True:  # CPU-bound, so the isolate's epoch deadline cuts it off at the step's timeout
        pass

def run(ctx, input):
    draft = ctx.model("scripted:writer").chat([{"role": "user", "content": input["topic"]}]).text
    try:
        ctx.step("hang", spin, timeout=0.3, retries=1, backoff=0.05)
        hang = "finished"
    except StepFailed as exc:
        hang = exc.error["type"]
    ctx.sleep(input["sleep"])
    decision = ctx.approval("publish?", {"draft": draft})
    return {"draft": draft, "hang": hang, "approved": decision.approved}
"""


@pytest.fixture(scope="module")
def iso_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    env = {"EDGENODE_AGENTS_SCHEDULER_INTERVAL_S": "0.05", "EDGENODE_AGENTS_RUNNER": "isolate"}
    proc = NodeProcess(tmp_path_factory.mktemp("iso"), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture
def iso(iso_node: NodeProcess) -> Iterator[httpx.Client]:
    with iso_node.client(timeout=300) as c:
        yield c


def test_isolate_run_survives_kill_and_times_out_steps(iso: httpx.Client, iso_node: NodeProcess) -> None:
    assert iso.get("/v1/status").json()["capabilities"]["agents"]["runner"] == "isolate"
    deploy(iso, "writer", AGENT)
    run = start(iso, "writer", {"topic": "wasm", "sleep": 1.0})
    wait_for(lambda: (run_of(iso, run["id"])["waiting"] or {}).get("kind") == "sleep", timeout=120,
             message="sleeping")
    iso_node.kill()
    iso_node.start()
    with iso_node.client() as c:
        wait_for(lambda: (run_of(c, run["id"])["waiting"] or {}).get("kind") == "approval", timeout=120,
                 message="waiting for approval after restart")
        assert c.post(f"/v1/agents/runs/{run['id']}/approve").status_code == 200
        done = wait_status(c, run["id"], "completed", "failed", timeout=60)
        entries = journal(c, run["id"])
    assert done["output"] == {"draft": "writer: wasm", "hang": "TimeoutError", "approved": True}, done
    assert [(e["kind"], e["name"]) for e in entries] == [
        ("model.chat", "scripted:writer"), ("step", "hang"), ("sleep", "sleep"), ("approval", "publish?")]
    assert entries[1]["status"] == "error" and entries[1]["attempts"] == 2


def test_isolate_build_error_rejects_the_deploy(iso: httpx.Client) -> None:
    # Compiles, but the build imports main.py and fails: the deploy is refused with the reason.
    r = iso.put("/v1/agents/broken", json={"files": {"main.py": "import no_such_module\n\ndef run(ctx, input):\n"
                                                                "    return 1\n"}})
    assert r.status_code == 400 and error_code(r) == "build_failed"
    assert "no_such_module" in r.json()["error"]["output"]
    assert iso.get("/v1/agents/broken").status_code == 404
