"""Run lifecycle over HTTP: idempotent start, pause/resume, cancel/terminate, versions, bad input."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.agents.helpers import deploy, error_code, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for

WAITER = "def run(ctx, input):\n    return ctx.wait_for_event('go')\n"


def test_idempotent_start(api: httpx.Client) -> None:
    deploy(api, "idem", WAITER)
    deploy(api, "idem2", WAITER)
    first = api.post("/v1/agents/idem/runs", json={"id": "order-17", "input": 1})
    assert first.status_code == 201 and first.json()["created"] is True
    second = api.post("/v1/agents/idem/runs", json={"id": "order-17", "input": 2})
    assert second.status_code == 200 and second.json()["created"] is False
    assert second.json()["input"] == 1
    ids = [r["id"] for r in api.get("/v1/agents/runs", params={"agent": "idem"}).json()["runs"]]
    assert ids.count("order-17") == 1
    other = api.post("/v1/agents/idem2/runs", json={"id": "order-17"})
    assert other.status_code == 409 and error_code(other) == "conflict"
    api.post("/v1/agents/runs/order-17/cancel")


def test_pause_and_resume(api: httpx.Client) -> None:
    deploy(api, "sleeper", """
        def run(ctx, input):
            ctx.sleep(0.3)
            return "woke"
    """)
    run = start(api, "sleeper")
    wait_status(api, run["id"], "waiting")
    r = api.post(f"/v1/agents/runs/{run['id']}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    # Paused: the timer is due, but the run stays put.
    wait_for(lambda: run_of(api, run["id"])["wake_at"] is not None, message="wake_at")
    import time

    time.sleep(0.6)
    assert run_of(api, run["id"])["status"] == "paused"
    r = api.post(f"/v1/agents/runs/{run['id']}/resume")
    assert r.status_code == 200
    assert wait_status(api, run["id"], "completed")["output"] == "woke"
    again = api.post(f"/v1/agents/runs/{run['id']}/resume")
    assert again.status_code == 409 and error_code(again) == "run_finished"


def test_resume_of_a_run_that_is_not_paused(api: httpx.Client) -> None:
    deploy(api, "waiter", WAITER)
    run = start(api, "waiter")
    wait_status(api, run["id"], "waiting")
    r = api.post(f"/v1/agents/runs/{run['id']}/resume")
    assert r.status_code == 409 and error_code(r) == "run_state_conflict"
    api.post(f"/v1/agents/runs/{run['id']}/cancel")


def test_cancel_a_waiting_run(api: httpx.Client) -> None:
    deploy(api, "waiter", WAITER)
    run = start(api, "waiter")
    wait_status(api, run["id"], "waiting")
    r = api.post(f"/v1/agents/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert run_of(api, run["id"])["error"]["code"] == "cancelled"
    r = api.post(f"/v1/agents/runs/{run['id']}/terminate")
    assert r.status_code == 409 and error_code(r) == "run_finished"


def test_terminate_kills_an_executing_step(api: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    deploy(api, "busy", """
        import time
        from pathlib import Path

        def work(path):
            Path(path).write_text("x")
            time.sleep(60)
            return "never"

        def run(ctx, input):
            return ctx.step("work", lambda: work(input))
    """)
    run = start(api, "busy", str(marker))
    wait_for(marker.exists, message="step started")
    assert run_of(api, run["id"])["status"] == "running"
    r = api.post(f"/v1/agents/runs/{run['id']}/terminate")
    assert r.status_code == 200 and r.json()["status"] == "terminated"
    # The activation is gone: the node no longer counts it as active.
    wait_for(lambda: api.get("/v1/status").json()["capabilities"]["agents"]["active"] == 0, message="no active")
    assert run_of(api, run["id"])["status"] == "terminated"
    assert journal(api, run["id"]) == []


def test_runs_stay_pinned_and_a_moved_run_reports_replay_mismatch(api: httpx.Client) -> None:
    v1 = deploy(api, "pinned", """
        def run(ctx, input):
            a = ctx.step("fetch-v1", lambda: "old")
            ok = ctx.approval("go?")
            b = ctx.step("after", lambda: "done")
            return [a, b, 1]
    """)
    old_run = start(api, "pinned")
    moved_run = start(api, "pinned")
    wait_status(api, old_run["id"], "waiting")
    wait_status(api, moved_run["id"], "waiting")
    v2 = deploy(api, "pinned", """
        def run(ctx, input):
            a = ctx.step("fetch-v2", lambda: "new")
            ok = ctx.approval("go?")
            b = ctx.step("after", lambda: "done")
            return [a, b, 2]
    """)
    assert v2["version"] == v1["version"] + 1
    new_run = start(api, "pinned")
    assert new_run["version"] == v2["version"] and old_run["version"] == v1["version"]
    # The redeploy did not strand the parked run: it finishes on its own code.
    api.post(f"/v1/agents/runs/{old_run['id']}/approve")
    assert wait_status(api, old_run["id"], "completed")["output"] == ["old", "done", 1]
    # Moving a run to code that makes other calls stops it with a clear mismatch...
    r = api.post(f"/v1/agents/runs/{moved_run['id']}/move", json={"version": v2["version"]})
    assert r.status_code == 200
    blocked = wait_status(api, moved_run["id"], "blocked")
    error = blocked["error"]
    assert error["code"] == "replay_mismatch" and error["position"] == 0
    assert error["expected"] == {"kind": "step", "name": "fetch-v1"}
    assert error["actual"] == {"kind": "step", "name": "fetch-v2"}
    assert "fetch-v1" in error["message"] and "fetch-v2" in error["message"]
    # ... and moving it back lets it finish, nothing lost.
    api.post(f"/v1/agents/runs/{moved_run['id']}/move", json={"version": v1["version"]})
    wait_status(api, moved_run["id"], "waiting")
    api.post(f"/v1/agents/runs/{moved_run['id']}/approve")
    assert wait_status(api, moved_run["id"], "completed")["output"] == ["old", "done", 1]
    api.post(f"/v1/agents/runs/{new_run['id']}/approve")
    assert wait_status(api, new_run["id"], "completed")["output"] == ["new", "done", 2]


def test_compatible_move_runs_on_new_code(api: httpx.Client) -> None:
    v1 = deploy(api, "upgradable", """
        def run(ctx, input):
            ctx.wait_for_event("go")
            return "v1"
    """)
    run = start(api, "upgradable")
    wait_status(api, run["id"], "waiting")
    v2 = deploy(api, "upgradable", """
        def run(ctx, input):
            ctx.wait_for_event("go")
            return "v2"
    """)
    api.post(f"/v1/agents/runs/{run['id']}/move", json={"version": v2["version"]})
    api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "go"})
    done = wait_status(api, run["id"], "completed")
    assert done["output"] == "v2" and done["version"] == v2["version"] != v1["version"]


def test_redeploy_of_same_code_keeps_the_version(api: httpx.Client) -> None:
    first = deploy(api, "same", WAITER)
    second = api.put("/v1/agents/same", json={"files": {"main.py": WAITER}})
    assert second.status_code == 200 and second.json()["version"] == first["version"]


def test_schedules_crud_and_bad_cron(api: httpx.Client) -> None:
    deploy(api, "cronned", "def run(ctx, input):\n    return input\n")
    r = api.post("/v1/agents/schedules", json={"name": "nightly", "agent": "cronned", "cron": "0 3 * * *",
                                              "input": {"k": 1}})
    assert r.status_code == 201 and r.json()["next_at"] > 0
    assert [s["name"] for s in api.get("/v1/agents/schedules").json()["schedules"]] == ["nightly"]
    bad = api.post("/v1/agents/schedules", json={"name": "x", "agent": "cronned", "cron": "every day"})
    assert bad.status_code == 400 and error_code(bad) == "validation_failed"
    missing = api.post("/v1/agents/schedules", json={"name": "y", "agent": "ghost", "cron": "* * * * *"})
    assert missing.status_code == 404 and error_code(missing) == "agent_not_found"
    assert api.delete("/v1/agents/schedules/nightly").status_code == 204
    assert api.delete("/v1/agents/schedules/nightly").status_code == 404


def test_bad_input_gets_clear_json_errors(api: httpx.Client, agent_node: NodeProcess) -> None:
    cases = [
        (api.get("/v1/agents/runs/nope"), 404, "run_not_found"),
        (api.post("/v1/agents/runs/nope/events", json={"type": "x"}), 404, "run_not_found"),
        (api.post("/v1/agents/ghost/runs", json={}), 404, "agent_not_found"),
        (api.get("/v1/agents/ghost"), 404, "agent_not_found"),
        (api.post("/v1/agents/models/chat", json={"model": "nonsense", "messages": [{"role": "user",
                                                                                    "content": "hi"}]}),
         400, "bad_model"),
        (api.post("/v1/agents/models/chat", json={"model": "acme:gpt", "messages": [{"role": "user",
                                                                                    "content": "hi"}]}),
         400, "bad_model"),
        (api.put("/v1/agents/broken", content=b"{not json", headers={"content-type": "application/json"}),
         400, "invalid_json"),
        (api.put("/v1/agents/Bad Name!", json={"files": {"main.py": ""}}), 400, "validation_failed"),
        (api.put("/v1/agents/runs", json={"files": {"main.py": ""}}), 405, "method_not_allowed"),  # a reserved path
        (api.put("/v1/agents/nomain", json={"files": {"other.py": ""}}), 400, "validation_failed"),
        (api.put("/v1/agents/escape", json={"files": {"../main.py": ""}}), 400, "validation_failed"),
        (api.post("/v1/agents/ghost/runs", json={"id": "bad id!"}), 400, "validation_failed"),
        (api.put("/v1/agents/syntax", json={"files": {"main.py": "def run(ctx, input:\n"}}), 400, "build_failed"),
    ]
    for response, status, code in cases:
        assert (response.status_code, error_code(response)) == (status, code), response.text
    deploy(api, "waiter", WAITER)
    run = start(api, "waiter")
    big = {"type": "x", "payload": "a" * (1024 * 1024 + 10)}
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json=big)
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "edgenode.approval"})
    assert r.status_code == 400 and error_code(r) == "validation_failed"
    r = api.post(f"/v1/agents/runs/{run['id']}/move", json={"version": "two"})
    assert r.status_code == 400
    r = api.post(f"/v1/agents/runs/{run['id']}/events", content=b"[1,", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_code(r) == "invalid_json"
    api.post(f"/v1/agents/runs/{run['id']}/cancel")
    assert api.get("/healthz").status_code == 200
