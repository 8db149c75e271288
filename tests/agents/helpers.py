"""Helpers for agent tests: deploy source, start runs, wait for a status."""

from __future__ import annotations

import textwrap
from typing import Any

import httpx

from tests.support import wait_for

#: A fast scheduler, and agents in fresh interpreters (a build per agent would make the suite slow;
#: test_isolate.py runs the same engine in WebAssembly isolates).
FAST = {"EDGENODE_AGENTS_SCHEDULER_INTERVAL_S": "0.05", "EDGENODE_AGENTS_RUNNER": "process"}


def deploy(client: httpx.Client, name: str, source: str, **extra: Any) -> dict[str, Any]:
    """Deploy ``source`` as main.py of agent ``name``; the deployment reply."""
    r = client.put(f"/v1/agents/{name}", json={"files": {"main.py": textwrap.dedent(source)}, **extra})
    assert r.status_code in (200, 201), r.text
    return r.json()


def start(client: httpx.Client, agent: str, input: Any = None, **extra: Any) -> dict[str, Any]:
    """Start a run; the run."""
    r = client.post(f"/v1/agents/{agent}/runs", json={"input": input, **extra})
    assert r.status_code in (200, 201), r.text
    return r.json()


def run_of(client: httpx.Client, run_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/agents/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(client: httpx.Client, run_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll until the run reaches one of ``statuses``; the run."""
    def check() -> dict[str, Any] | None:
        run = run_of(client, run_id)
        return run if run["status"] in statuses else None
    return wait_for(check, timeout=timeout, message=f"run {run_id} to be {statuses}")


def journal(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/agents/runs/{run_id}/history")
    assert r.status_code == 200, r.text
    return r.json()["journal"]


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]
