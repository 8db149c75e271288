from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.agents.helpers import FAST
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node whose agent scheduler ticks fast, shared by a module's tests."""
    # Loopback is allowed to outbound fetches: the test servers (and the node itself) listen there.
    proc = NodeProcess(tmp_path_factory.mktemp("agents"), env={**FAST, "EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def api(agent_node: NodeProcess) -> Iterator[httpx.Client]:
    with agent_node.client() as c:
        yield c
