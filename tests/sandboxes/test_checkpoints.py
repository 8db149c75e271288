"""Sandbox checkpoints on a node that is not part of a fleet: a clear error, nothing changed.

The checkpoints themselves are tested on a real two-node fleet in tests/cluster/test_checkpoints.py.
"""

from __future__ import annotations

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node (alone: no fleet settings)."""
    return features_node


def test_without_a_fleet_checkpoints_answer_fleet_required(admin: httpx.Client, sandbox: str) -> None:
    assert run(admin, sandbox, "echo kept > a.txt")["exit_code"] == 0
    error = assert_error(admin.post(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert "fleet" in error["message"]
    assert_error(admin.get(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert_error(admin.delete(f"/v1/sandboxes/{sandbox}/checkpoints"), 409, "fleet_required")
    assert_error(admin.post("/v1/sandboxes", json={"checkpoint": sandbox}), 409, "fleet_required")
    # The sandbox and its files are untouched; the status says checkpoints are off here.
    assert run(admin, sandbox, "cat a.txt")["stdout"] == "kept\n"
    status = admin.get("/v1/status").json()["capabilities"]["sandboxes"]["checkpoints"]
    assert status["enabled"] is False and status["made"] == 0


def test_a_checkpoint_of_an_unknown_sandbox_is_not_found_before_the_fleet_is_asked(admin: httpx.Client) -> None:
    assert_error(admin.post("/v1/sandboxes/nosuch/checkpoints"), 404, "sandbox_not_found")
