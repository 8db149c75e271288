"""Cold start: Python source run in a fork of the sandbox's started interpreter, and the pool of
sandboxes started ahead of their create call (its cost reported, its entries shared fairly)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from edgenode.sandboxes.pool import Prestarted, WarmPool
from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess, wait_for


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node


def _pool(admin: httpx.Client) -> dict:
    return dict(admin.get("/v1/status").json()["capabilities"]["sandboxes"]["pool"])


def _token(admin: httpx.Client, tenant: str) -> str:
    issued = admin.post("/v1/tokens", json={"tenant": tenant})
    assert issued.status_code == 201, issued.text
    return str(issued.json()["token"])


def test_code_runs_as_python3_c_would(admin: httpx.Client, shared_sandbox: str) -> None:
    source = ("import os, sys\nprint(sys.argv, __name__, os.getcwd(), os.environ.get('GREETING'))\n"
              "print(input().upper())\nsys.exit(3)")
    result = run(admin, shared_sandbox, None, code=source, env={"GREETING": "hi"}, stdin="hello\n", cwd="/tmp")
    assert result["stdout"] == "['-c'] __main__ /tmp hi\nHELLO\n"
    assert result["exit_code"] == 3
    failed = run(admin, shared_sandbox, None, code="def f():\n    1 / 0\nf()")
    assert failed["exit_code"] == 1
    # The traceback starts at the code's own frames, as python3 -c shows it.
    assert failed["stderr"].splitlines()[1] == '  File "<string>", line 3, in <module>'
    assert "ZeroDivisionError" in failed["stderr"] and "edgenode" not in failed["stderr"]
    # The child is the sandbox's, not the supervisor: it cannot reach the node's pipes.
    fds = run(admin, shared_sandbox, None, code="import os; print(sorted(os.listdir('/proc/self/fd')))")
    assert fds["stdout"] == "['0', '1', '2', '3']\n"  # stdio, and the directory listdir opened
    assert run(admin, shared_sandbox, None, code="print(1)", cwd="no/such/dir")["exit_code"] == 127


def test_code_as_a_background_process(admin: httpx.Client, shared_sandbox: str) -> None:
    started = admin.post(f"/v1/sandboxes/{shared_sandbox}/processes", json={"code": "print('from the pool')"})
    assert started.status_code == 201, started.text
    logs = admin.get(f"/v1/sandboxes/{shared_sandbox}/processes/{started.json()['id']}/logs?follow=true")
    assert logs.text == "from the pool\n"


def test_code_refused_when_malformed(admin: httpx.Client, shared_sandbox: str) -> None:
    url = f"/v1/sandboxes/{shared_sandbox}/exec"
    assert_error(admin.post(url, json={"code": "print(1)", "cmd": "true"}), 400, "validation_failed")
    assert_error(admin.post(url, json={"code": ["print(1)"]}), 400, "validation_failed")
    assert_error(admin.post(url, json={"code": "print(1)\x00"}), 400, "validation_failed")


def test_the_pool_serves_plain_creates_and_reports_its_cost(admin: httpx.Client) -> None:
    admin.post("/v1/sandboxes", json={})  # the first create starts the pool filling
    wait_for(lambda: _pool(admin)["ready"] == 2, message="the pool to fill")
    pool = _pool(admin)
    assert pool["rss_bytes"] > 0 and pool["size"] == 2 and pool["start_ms_p50"] > 0
    created = admin.post("/v1/sandboxes", json={}).json()
    assert created["pooled"] is True and created["state"] == "running"
    assert run(admin, created["id"], None, code="print(6 * 7)")["stdout"] == "42\n"
    assert run(admin, created["id"], "hostname; id -un")["stdout"] == f"{created['id']}\nsandbox\n"
    assert _pool(admin)["hits"] >= 1
    # What the pool does not hold starts cold: a network policy, other limits, a name (the host name).
    for body in ({"network": {"allow": ["example.com"]}}, {"limits": {"pids": 64}}, {"name": "named"}):
        assert admin.post("/v1/sandboxes", json=body).json()["pooled"] is False, body
    metrics = admin.get("/metrics").text
    assert "edgenode_sandbox_pool_ready" in metrics and "edgenode_sandbox_pool_rss_bytes" in metrics


def test_one_tenant_cannot_drain_the_pool(admin: httpx.Client, node: NodeProcess) -> None:
    wait_for(lambda: _pool(admin)["ready"] == 2, message="the pool to fill")
    with node.client(_token(admin, "alice"), timeout=120) as alice, \
            node.client(_token(admin, "bob"), timeout=120) as bob:
        burst = [alice.post("/v1/sandboxes", json={}).json()["pooled"] for _ in range(4)]
        assert burst[0] is True and burst.count(False) >= 1
        assert bob.post("/v1/sandboxes", json={}).json()["pooled"] is True


class _Runtime:
    alive = True


def test_the_pool_keeps_a_share_for_other_tenants(tmp_path: Path) -> None:
    """The share rule itself, with starts the test lets finish one at a time."""

    async def scenario() -> None:
        allowed = asyncio.Semaphore(2)
        made = 0

        async def start_one() -> Prestarted:
            nonlocal made
            await allowed.acquire()
            made += 1
            return Prestarted(f"sb_{made}", made, tmp_path, _Runtime(), 1.0)  # type: ignore[arg-type]

        async def discard(entry: Prestarted) -> None:
            pass

        pool = WarmPool(2, start_one, discard)
        pool.wake()
        while len(pool.ready) < 2:
            await asyncio.sleep(0)
        # Refills are held back: alice may take half of the pool, and bob finds the other half.
        assert pool.tenant_share() == 1
        assert pool.take("alice") is not None and pool.take("alice") is None
        assert pool.take("bob") is not None and pool.take("bob") is None
        assert (pool.hits, pool.over_share, pool.misses) == (2, 1, 1)
        allowed.release()
        while len(pool.ready) < 1:
            await asyncio.sleep(0)
        # One replacement repays the oldest debt (alice's): she may take again, bob not yet.
        assert pool.owed == {"bob": 1}
        assert pool.take("alice") is not None
        await pool.stop()

    asyncio.run(scenario())
