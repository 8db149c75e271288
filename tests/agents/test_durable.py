"""Durable-execution features: per-tenant run ids, restart from a step, wait_any, cascade cancel, guards."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from click.testing import CliRunner

from edgenode.agents.store import MIGRATIONS, finish_run
from edgenode.cli import cli
from edgenode.client import Client
from edgenode.store import Database
from tests.agents.helpers import deploy, error_code, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for

COUNTED = """
import os

def count(path, tag):
    # Each real execution of a step appends a line: the file shows how often it ran.
    with open(path, "a") as f:
        f.write(tag + "\\n")
    return tag

def flaky(path):
    if not os.path.exists(path + ".fixed"):
        raise RuntimeError("not fixed yet")
    return count(path, "flaky")

def run(ctx, input):
    a = ctx.step("first", lambda: count(input, "first"))
    b = ctx.step("flaky", lambda: flaky(input))
    c = ctx.step("last", lambda: count(input, "last"))
    return [a, b, c]
"""


def _token(api: httpx.Client, tenant: str) -> str:
    r = api.post("/v1/tokens", json={"tenant": tenant})
    assert r.status_code in (200, 201), r.text
    token: str = r.json()["token"]
    return token


# -- run ids per tenant ------------------------------------------------------------------


def test_run_ids_are_scoped_per_tenant(api: httpx.Client, agent_node: NodeProcess) -> None:
    source = "def run(ctx, input):\n    return {'input': input}\n"
    deploy(api, "scoped", source)
    mine = start(api, "scoped", "default's", id="shared-id")
    assert mine["created"] is True
    only_default = start(api, "scoped", "only here", id="default-only")
    with agent_node.client(_token(api, "acme")) as acme:
        deploy(acme, "scoped", source)
        r = acme.post("/v1/agents/scoped/runs", json={"input": "acme's", "id": "shared-id"})
        assert r.status_code == 201, r.text  # an id another tenant used is free here
        assert wait_status(acme, "shared-id", "completed")["output"] == {"input": "acme's"}
        for r in (acme.get(f"/v1/agents/runs/{only_default['id']}"),
                  acme.get(f"/v1/agents/runs/{only_default['id']}/events"),
                  acme.post(f"/v1/agents/runs/{only_default['id']}/restart", json={"from_step": 0})):
            assert r.status_code == 404 and error_code(r) == "run_not_found", r.text
    assert wait_status(api, "shared-id", "completed")["output"] == {"input": "default's"}
    # Within one tenant an id is still one run: reusing it for another agent is a conflict.
    deploy(api, "scoped-other", source)
    r = api.post("/v1/agents/scoped-other/runs", json={"id": "shared-id"})
    assert r.status_code == 409 and error_code(r) == "conflict", r.text


def test_migration_keys_existing_runs_by_tenant(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    with Database(path, MIGRATIONS[:1]) as old:
        def seed(c: sqlite3.Connection) -> None:
            for tenant, run_id in (("default", "r1"), ("acme", "r2")):
                c.execute("INSERT INTO runs (id, tenant, agent, version, status, parent_id, created_at, updated_at) "
                          "VALUES (?, ?, 'a', 1, 'waiting', ?, 0, 0)", (run_id, tenant, None))
                c.execute("INSERT INTO journal (run_id, position, kind, name, request, result, status, created_at, "
                          "updated_at) VALUES (?, 0, 'now', 'now', '{}', '1', 'ok', 0, 0)", (run_id,))
                c.execute("INSERT INTO events (run_id, type, payload, created_at) VALUES (?, 'x', 'null', 0)",
                          (run_id,))
        old.write_sync(seed)
    with Database(path, MIGRATIONS) as db:
        runs = db.read_sync(lambda c: [tuple(r) for r in c.execute("SELECT key, id, tenant FROM runs ORDER BY key")])
        assert runs == [("acme/r2", "r2", "acme"), ("default/r1", "r1", "default")]
        assert db.read_sync(lambda c: sorted(r[0] for r in c.execute("SELECT run_id FROM journal"))) == \
            ["acme/r2", "default/r1"]
        assert db.read_sync(lambda c: sorted(r[0] for r in c.execute("SELECT run_id FROM events"))) == \
            ["acme/r2", "default/r1"]


# -- the exactly-once outcome guard -----------------------------------------------------------


def test_finish_run_records_an_outcome_once(tmp_path: Path) -> None:
    with Database(tmp_path / "agents.db", MIGRATIONS) as db:
        db.write_sync(lambda c: c.execute(
            "INSERT INTO runs (key, id, tenant, agent, version, status, created_at, updated_at) "
            "VALUES ('t/r', 'r', 't', 'a', 1, 'running', 0, 0)"))
        assert db.write_sync(lambda c: finish_run(c, "t/r", "cancelled", 1.0, error={"code": "cancelled"}))
        # The activation that was running comes back with its own outcome: it must change nothing.
        assert not db.write_sync(lambda c: finish_run(c, "t/r", "completed", 2.0, output="late"))
        assert not db.write_sync(lambda c: finish_run(c, "t/r", "failed", 3.0, error={"code": "agent_error"}))
        row = db.read_sync(lambda c: c.execute("SELECT status, output, finished_at FROM runs").fetchone())
        assert tuple(row) == ("cancelled", None, 1.0)


def test_a_cancel_wins_over_the_activation_finishing_after_it(api: httpx.Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    deploy(api, "slow-finisher", """
        import os, time

        def run(ctx, input):
            # No host call between here and the return: the cancel cannot stop this activation,
            # only the outcome guard keeps its result from overwriting the cancel.
            open(input + ".inside", "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(input) and time.monotonic() < deadline:
                time.sleep(0.01)
            open(input + ".returning", "w").close()
            return "finished anyway"
    """)
    run = start(api, "slow-finisher", str(gate))
    wait_for(lambda: Path(str(gate) + ".inside").exists(), message="the agent to be inside its body")
    assert api.post(f"/v1/agents/runs/{run['id']}/cancel").json()["status"] == "cancelled"
    gate.touch()
    wait_for(lambda: Path(str(gate) + ".returning").exists(), message="the agent to return")
    wait_for(lambda: _idle(api), message="the activation to end")
    done = run_of(api, run["id"])
    assert done["status"] == "cancelled" and done["output"] is None, done


def _idle(api: httpx.Client) -> bool:
    """Whether the node has no agent activation running (its outcome has been recorded)."""
    active: int = api.get("/v1/status").json()["capabilities"]["agents"]["active"]
    return active == 0


# -- replay checks ---------------------------------------------------------------------------


def test_code_that_finishes_before_its_journal_ends_is_blocked(api: httpx.Client) -> None:
    v1 = deploy(api, "shrinking", """
        def run(ctx, input):
            ctx.step("one", lambda: 1)
            return ctx.wait_for_event("go")
    """)
    run = start(api, "shrinking")
    wait_status(api, run["id"], "waiting")
    api.post(f"/v1/agents/runs/{run['id']}/pause")
    v2 = deploy(api, "shrinking", "def run(ctx, input):\n    return 'early'\n")
    assert v2["version"] == v1["version"] + 1
    api.post(f"/v1/agents/runs/{run['id']}/move", json={"version": v2["version"]})
    api.post(f"/v1/agents/runs/{run['id']}/resume")
    blocked = wait_status(api, run["id"], "blocked", "completed")
    assert blocked["status"] == "blocked", blocked
    assert blocked["error"]["code"] == "replay_mismatch"
    assert blocked["error"]["expected"] == {"kind": "step", "name": "one"}
    assert blocked["error"]["actual"] == {"kind": "return", "name": "run finished"}
    api.post(f"/v1/agents/runs/{run['id']}/cancel")


# -- restart from a step ---------------------------------------------------------------------


def test_restart_a_failed_run_from_a_step_keeps_the_old_history(api: httpx.Client, tmp_path: Path) -> None:
    log_file = tmp_path / "steps.log"
    deploy(api, "restartable", COUNTED)
    failed = start(api, "restartable", str(log_file))
    assert wait_status(api, failed["id"], "failed", "completed")["status"] == "failed"
    old_history = journal(api, failed["id"])
    assert [(e["name"], e["status"]) for e in old_history] == [("first", "ok"), ("flaky", "error")]
    assert log_file.read_text().split() == ["first"]

    Path(str(log_file) + ".fixed").touch()
    r = api.post(f"/v1/agents/runs/{failed['id']}/restart", json={"from_step": 1, "id": "restarted-1"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] == "restarted-1" and new["restarted_from"] == {"run": failed["id"], "step": 1}
    done = wait_status(api, "restarted-1", "completed", "failed")
    assert done["output"] == ["first", "flaky", "last"], done
    # Step 0 was answered from the copied journal; steps from 1 on ran again.
    assert log_file.read_text().split() == ["first", "flaky", "last"]
    assert [e["name"] for e in journal(api, "restarted-1")] == ["first", "flaky", "last"]
    # The failed run and its history are as they were.
    assert run_of(api, failed["id"])["status"] == "failed"
    assert journal(api, failed["id"]) == old_history
    # Restarting again with the same id and step is the same restart.
    again = api.post(f"/v1/agents/runs/{failed['id']}/restart", json={"from_step": 1, "id": "restarted-1"})
    assert again.status_code == 200 and again.json()["created"] is False


def test_restart_refuses_what_it_cannot_do(api: httpx.Client) -> None:
    deploy(api, "restart-guards", "def run(ctx, input):\n    ctx.now()\n    return ctx.wait_for_event('go')\n")
    waiting = start(api, "restart-guards")
    wait_status(api, waiting["id"], "waiting")
    base = f"/v1/agents/runs/{waiting['id']}/restart"
    r = api.post(base, json={"from_step": 0})
    assert r.status_code == 409 and error_code(r) == "run_state_conflict", r.text
    api.post(f"/v1/agents/runs/{waiting['id']}/cancel")
    for body, status, code in (({}, 400, "validation_failed"),
                               ({"from_step": -1}, 400, "validation_failed"),
                               ({"from_step": "1"}, 400, "validation_failed"),
                               ({"from_step": 3}, 400, "validation_failed"),  # past the journal's end
                               ({"from_step": 2}, 400, "validation_failed"),  # after the unfinished wait
                               ({"from_step": 0, "id": "bad id!"}, 400, "validation_failed"),
                               ({"from_step": 0, "id": waiting["id"]}, 409, "conflict")):
        r = api.post(base, json=body)
        assert r.status_code == status and error_code(r) == code, (body, r.text)
    assert api.post("/v1/agents/runs/no-such-run/restart", json={"from_step": 0}).status_code == 404
    r = api.post(base, json={"from_step": 1})
    assert r.status_code == 201, r.text
    assert wait_status(api, r.json()["id"], "waiting")["waiting"]["type"] == "go"


# -- wait_any -----------------------------------------------------------------------------------


WAIT_ANY = """
def run(ctx, input):
    first = ctx.wait_any(ctx.on_event("paid"), ctx.on_event("cancelled"), ctx.timer(input))
    ctx.step("after", lambda: "after")
    ok = ctx.approval("ship?")
    return {"index": first.index, "kind": first.kind, "type": first.type, "payload": first.payload,
            "approved": ok.approved}
"""


def test_wait_any_takes_the_first_event_and_replays_it(api: httpx.Client) -> None:
    deploy(api, "any-of", WAIT_ANY)
    run = start(api, "any-of", 3600)
    waiting = wait_status(api, run["id"], "waiting")
    assert waiting["waiting"]["kind"] == "wait_any" and waiting["waiting"]["types"] == ["cancelled", "paid"]
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "cancelled", "payload": {"why": "late"}})
    assert r.json()["delivered"] is True
    wait_for(lambda: (run_of(api, run["id"])["waiting"] or {}).get("kind") == "approval", message="the approval")
    # A second event after the first won is not taken by the finished wait.
    api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "paid"})
    api.post(f"/v1/agents/runs/{run['id']}/approve")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"index": 1, "kind": "event", "type": "cancelled", "payload": {"why": "late"},
                              "approved": True}, done
    entries = journal(api, run["id"])
    assert [e["kind"] for e in entries] == ["wait_any", "step", "approval"]
    assert entries[0]["result"]["type"] == "cancelled" and entries[0]["attempts"] == 1


def test_wait_any_timer_and_an_event_sent_before_the_wait(api: httpx.Client) -> None:
    deploy(api, "any-of", WAIT_ANY)
    timed = start(api, "any-of", 0.2)
    wait_for(lambda: (run_of(api, timed["id"])["waiting"] or {}).get("kind") == "approval", message="the timer")
    api.post(f"/v1/agents/runs/{timed['id']}/approve")
    assert wait_status(api, timed["id"], "completed")["output"]["kind"] == "timer"

    deploy(api, "late-waiter", """
        def run(ctx, input):
            ctx.wait_for_event("start")
            first = ctx.wait_any(ctx.on_event("a"), ctx.on_event("b"), ctx.timer(3600))
            return [first.index, first.payload]
    """)
    early = start(api, "late-waiter")
    wait_status(api, early["id"], "waiting")
    api.post(f"/v1/agents/runs/{early['id']}/events", json={"type": "b", "payload": 2})
    api.post(f"/v1/agents/runs/{early['id']}/events", json={"type": "start"})
    assert wait_status(api, early["id"], "completed")["output"] == [1, 2]


def test_wait_any_refuses_bad_waits(api: httpx.Client) -> None:
    deploy(api, "bad-any", """
        from edgenode_guest.agent import HostError

        def run(ctx, input):
            codes = []
            for waits in ([], [{"kind": "event", "type": "edgenode.approval"}], [{"kind": "timer", "seconds": -1}],
                          [{"kind": "nap"}], [ctx.on_event("x")] * 33):
                try:
                    ctx.wait_any(*waits)
                except HostError as exc:
                    codes.append(exc.code)
            return codes
    """)
    run = start(api, "bad-any")
    assert wait_status(api, run["id"], "completed", "failed")["output"] == ["validation_failed"] * 5


# -- cascade cancel ---------------------------------------------------------------------------


def test_cancelling_a_parent_cancels_its_sub_agents(api: httpx.Client) -> None:
    deploy(api, "leaf", "def run(ctx, input):\n    return ctx.wait_for_event('never')\n")
    deploy(api, "middle", "def run(ctx, input):\n    return ctx.call_agent('leaf', input)\n")
    deploy(api, "top", "def run(ctx, input):\n    return ctx.call_agent('middle', input)\n")
    top = start(api, "top", 1)
    wait_for(lambda: api.get(f"/v1/agents/runs/{top['id']}.0.0").status_code == 200
             and run_of(api, f"{top['id']}.0.0")["status"] == "waiting", message="the grandchild to wait")
    sibling = start(api, "leaf")  # not a descendant: left alone
    wait_status(api, sibling["id"], "waiting")
    assert api.post(f"/v1/agents/runs/{top['id']}/cancel").json()["status"] == "cancelled"
    for run_id in (top["id"], f"{top['id']}.0", f"{top['id']}.0.0"):
        run = run_of(api, run_id)
        assert run["status"] == "cancelled", run
    assert run_of(api, f"{top['id']}.0.0")["error"]["message"] == f"run cancelled with its parent {top['id']}"
    assert run_of(api, sibling["id"])["status"] == "waiting"
    api.post(f"/v1/agents/runs/{sibling['id']}/terminate")


def test_restart_through_the_sdk_and_the_cli(agent_node: NodeProcess, api: httpx.Client, tmp_path: Path) -> None:
    log_file = tmp_path / "steps.log"
    deploy(api, "once", """
        def run(ctx, input):
            def count():
                with open(input, "a") as f:
                    f.write("ran\\n")
                return "ran"
            return ctx.step("only", count)
    """)
    first = start(api, "once", str(log_file))
    wait_status(api, first["id"], "completed")
    with Client(agent_node.url, agent_node.admin_token) as sdk:
        replayed = sdk.agents.run(first["id"]).restart(1).wait(60)
        assert replayed.status == "completed" and replayed.info["restarted_from"] == {"run": first["id"], "step": 1}
    assert log_file.read_text().split() == ["ran"]  # position 0 answered from the copy
    result = CliRunner().invoke(cli, ["--url", agent_node.url, "--token", agent_node.admin_token,
                                      "agent", "restart", first["id"], "--from-step", "0"])
    assert result.exit_code == 0, result.output
    again = wait_status(api, result.output.strip(), "completed")
    assert again["restarted_from"] == {"run": first["id"], "step": 0}
    assert log_file.read_text().split() == ["ran", "ran"]
