"""The maintainer example on a three-node fleet: its node is killed while the run waits for approval; the
approval goes to another node, which takes the run over and still pushes the branch and opens the merge request."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.helpers import FAST as AGENTS_FAST
from tests.agents.test_maintainer import EXAMPLE, seed
from tests.cluster.helpers import run_status, running_fleet
from tests.support import NodeProcess, wait_for


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    env = {**AGENTS_FAST, "EDGENODE_AGENTS_LEASE_TTL_S": "2", "EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8"}
    with running_fleet(tmp_path_factory.mktemp("maintainer"), 3, env=env) as nodes:
        yield nodes


def test_the_maintainer_survives_losing_its_node_and_still_pushes(fleet: list[NodeProcess], tmp_path: Path) -> None:
    n1, n2, n3 = fleet
    with n3.client() as c:
        assert c.put("/v1/agents/maintainer", json={"files": {"main.py": (EXAMPLE / "main.py").read_text()}}
                     ).status_code in (200, 201)
        seed(c, "calc")
        r = c.post("/v1/agents/maintainer/runs", json={"id": "m", "input": {"repo": "calc", "fork": "calc-fix"}})
        assert r.status_code == 201 and r.json()["placement"] == "fleet", r.text
    wait_for(lambda: ((run_status(n3, "m", "waiting") or {}).get("waiting") or {}).get("kind") == "approval",
             timeout=120, message="the maintainer to wait for approval")
    wait_for(lambda: ((run_status(n1, "m", "waiting") or {}).get("waiting") or {}).get("kind") == "approval",
             timeout=60, message="the parked run seen on n1")
    n3.kill()
    with n1.client() as c:
        def approved() -> bool:
            r = c.post("/v1/agents/runs/m/approve", json={"comment": "lgtm"})
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        wait_for(approved, timeout=60, interval=1.0, message="the approval to be taken")
    done = wait_for(lambda: run_status(n2, "m", "completed"), timeout=120, message="the run to complete elsewhere")
    out = done["output"]
    assert out["status"] == "merge_request", out
    # Real git against a survivor: the fork's branch has the fix on top of main.
    with n1.client() as c:
        token = c.post("/v1/repos/calc-fix/tokens", json={"access": "read", "ttl_s": 60}).json()["token"]
    url = n1.url.replace("http://", f"http://git:{token}@") + "/git/calc-fix.git"
    subprocess.run(["git", "clone", "-q", url, "clone"], cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "origin/fix/failing-tests"], cwd=tmp_path / "clone", check=True,
                          capture_output=True, text=True).stdout.strip()
    assert head == out["commit"]
    shown = subprocess.run(["git", "show", "origin/fix/failing-tests:calc.py"], cwd=tmp_path / "clone",
                           check=True, capture_output=True, text=True).stdout
    assert "return a + b" in shown
