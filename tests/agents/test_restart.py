"""kill -9 of the node at each stage of a run; on restart every run resumes from its journal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.agents.helpers import FAST, deploy, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for

STAGES = """
from pathlib import Path

def count(path, tag):
    # Each real execution of a step appends a line: the file shows how often it ran.
    with open(path, "a") as f:
        f.write(tag + "\\n")
    return tag

def run(ctx, input):
    a = ctx.step("before", lambda: count(input["log"], "before"))
    ctx.sleep(input["sleep"])
    b = ctx.step("after-sleep", lambda: count(input["log"], "after-sleep"))
    ok = ctx.approval("continue?")
    c = ctx.step("after-approval", lambda: count(input["log"], "after-approval"))
    return [a, b, ok.approved, c]
"""

IN_STEP = """
import time
from pathlib import Path

def slow(path):
    with open(path, "a") as f:
        f.write("attempt\\n")
    time.sleep(1.5)
    return "finished"

def run(ctx, input):
    first = ctx.step("first", lambda: "one")
    second = ctx.step("slow", lambda: slow(input))
    return [first, second]
"""


def test_kill_while_sleeping_and_while_waiting_for_approval(make_node: Callable[..., NodeProcess],
                                                           tmp_path: Path) -> None:
    node = make_node(env=FAST)
    log_file = tmp_path / "steps.log"
    with node.client() as c:
        deploy(c, "stages", STAGES)
        run = start(c, "stages", {"log": str(log_file), "sleep": 1.0})
        wait_status(c, run["id"], "waiting")
    assert log_file.read_text().split() == ["before"]
    node.kill()
    time.sleep(1.2)  # the timer falls due while the node is down
    node.start()
    with node.client() as c:
        # The overdue timer fires after the restart and the run goes on to its approval.
        waiting = wait_status(c, run["id"], "waiting", "failed")
        wait_for(lambda: (run_of(c, run["id"])["waiting"] or {}).get("kind") == "approval", message="approval")
        assert waiting["status"] == "waiting"
    assert log_file.read_text().split() == ["before", "after-sleep"]
    node.kill()
    node.start()
    with node.client() as c:
        wait_for(lambda: (run_of(c, run["id"])["waiting"] or {}).get("kind") == "approval", message="approval")
        assert c.post(f"/v1/agents/runs/{run['id']}/approve").status_code == 200
        done = wait_status(c, run["id"], "completed", "failed")
        assert done["output"] == ["before", "after-sleep", True, "after-approval"]
        entries = journal(c, run["id"])
    # No step ran twice and none was lost; the journal has one entry per call.
    assert log_file.read_text().split() == ["before", "after-sleep", "after-approval"]
    assert [e["name"] for e in entries] == ["before", "sleep", "after-sleep", "continue?", "after-approval"]


def test_kill_inside_a_step_runs_it_again(make_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node = make_node(env=FAST)
    attempts = tmp_path / "attempts"
    with node.client() as c:
        deploy(c, "instep", IN_STEP)
        run = start(c, "instep", str(attempts))
        wait_for(attempts.exists, message="slow step started")
        assert [e["name"] for e in journal(c, run["id"])] == ["first"]
    node.kill()
    node.start()
    with node.client() as c:
        done = wait_status(c, run["id"], "completed", "failed")
        assert done["output"] == ["one", "finished"]
        entries = journal(c, run["id"])
    # At least once: the interrupted step ran again; its result was recorded once.
    assert attempts.read_text().split() == ["attempt", "attempt"]
    assert [(e["name"], e["status"]) for e in entries] == [("first", "ok"), ("slow", "ok")]
