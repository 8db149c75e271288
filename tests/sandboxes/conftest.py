"""Fixtures for sandbox tests: a sandbox on the module's shared node, and a helper to run commands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import NodeProcess


def run(client: httpx.Client, sandbox_id: str, cmd: Any, **fields: Any) -> dict[str, Any]:
    """Exec ``cmd`` and return the JSON result (asserting a 200)."""
    response = client.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"cmd": cmd, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a JSON error with this status and code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return dict(error)


@pytest.fixture(scope="session")
def features_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the modules of pools, forks, ports, terminals, watch, checkout and images (each a
    module's ``node``): a pool of two, public ports served when asked. Started once for all of them."""
    proc = NodeProcess(tmp_path_factory.mktemp("features"),
                       env={"EDGENODE_SANDBOXES_POOL_SIZE": "2", "EDGENODE_SANDBOXES_PUBLIC_PORTS": "true",
                            "EDGENODE_SANDBOXES_PORTS_HOST": "sbx.test"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(node: NodeProcess) -> Iterator[httpx.Client]:
    """An admin client for the module's node (module-scoped, unlike ``client``)."""
    with node.client(timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def shared_sandbox(admin: httpx.Client) -> Iterator[str]:
    """A sandbox shared by the tests of a module that do not change it much."""
    created = admin.post("/v1/sandboxes", json={})
    assert created.status_code == 201, created.text
    yield created.json()["id"]
    admin.delete(f"/v1/sandboxes/{created.json()['id']}")


@pytest.fixture
def sandbox(admin: httpx.Client) -> Iterator[str]:
    """A fresh sandbox, destroyed after the test."""
    created = admin.post("/v1/sandboxes", json={})
    assert created.status_code == 201, created.text
    yield created.json()["id"]
    admin.delete(f"/v1/sandboxes/{created.json()['id']}")
