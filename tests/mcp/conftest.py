from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.helpers import FAST_AGENTS
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A real node on loopback with a fast agent scheduler, shared by a module's tests."""
    proc = NodeProcess(tmp_path_factory.mktemp("node"), env=FAST_AGENTS)
    proc.start()
    yield proc
    proc.stop()
