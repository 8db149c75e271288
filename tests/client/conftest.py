from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgenode.client import Client
from tests.client.helpers import FAST_AGENTS, tenant_token
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A real node on loopback with a fast agent scheduler, shared by a module's tests."""
    proc = NodeProcess(tmp_path_factory.mktemp("node"), env=FAST_AGENTS)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def token(node: NodeProcess) -> str:
    """A bearer token of tenant ``acme``."""
    return tenant_token(node, "acme")


@pytest.fixture
def sdk(node: NodeProcess, token: str) -> Iterator[Client]:
    """The SDK's blocking client for tenant ``acme``."""
    with Client(node.url, token, timeout=120) as c:
        yield c
