"""Placement on a node outside a fleet: every run is local, as before fleets; asking for a fleet run is refused."""

from __future__ import annotations

import httpx

from tests.agents.helpers import deploy, error_code, start, wait_status

WAITER = "def run(ctx, input):\n    return ctx.wait_for_event('go')\n"


def test_runs_on_a_lone_node_are_local(api: httpx.Client) -> None:
    deploy(api, "lone", WAITER)
    run = start(api, "lone")
    assert run["placement"] == "local"
    wait_status(api, run["id"], "waiting")
    assert api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "go", "payload": 7}).status_code == 202
    assert wait_status(api, run["id"], "completed")["output"] == 7
    status = api.get("/v1/status").json()["capabilities"]["agents"]
    assert status["fleet"] is None  # no fleet journal, no leases


def test_a_fleet_run_needs_a_fleet(api: httpx.Client) -> None:
    deploy(api, "lone", WAITER)
    for placement in ("fleet", "everywhere", 3):
        r = api.post("/v1/agents/lone/runs", json={"placement": placement})
        assert r.status_code == 400 and error_code(r) == "validation_failed", r.text
    # Nothing was started by the refused requests: only the first test's run is there.
    assert len(api.get("/v1/agents/runs", params={"agent": "lone"}).json()["runs"]) == 1
