"""Fixtures shared by every test: real nodes on loopback, in-process apps, clients."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from edgenode.api import build_app
from edgenode.config import Config
from edgenode.node import Node
from tests.support import NodeProcess


def pytest_sessionstart(session: pytest.Session) -> None:
    """Make sure the shared Python runtime exists before any node starts (normally ``make setup`` built it).

    Done here, outside every test's timeout, because a first build takes a while on a loaded machine;
    every node of the session then loads it from the default runtime directory in milliseconds.
    """
    from edgenode.isolates.python import default_runtime_dir, prepare_runtime

    prepare_runtime(default_runtime_dir())


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dist/edgenode.pyz`` as ``make package`` builds it, built once for the session's packaging tests."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("dist") / "edgenode.pyz"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(root / "packaging" / "build-zipapp.sh"), str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A real node process on loopback, shared by the tests of one module."""
    proc = NodeProcess(tmp_path_factory.mktemp("node"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def client(node: NodeProcess) -> Iterator[httpx.Client]:
    """An httpx client for ``node`` with the admin token."""
    with node.client() as c:
        yield c


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """A factory of real node processes, each stopped at the end of the test."""
    started: list[NodeProcess] = []

    def make(name: str = "node", **kwargs: Any) -> NodeProcess:
        proc = NodeProcess(tmp_path / name, **kwargs)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Node, TestClient]]:
    """A node served in-process (no socket) and a TestClient holding its admin token."""
    node = Node(Config.load(env={}, overrides={"data_dir": tmp_path / "data"}))
    app = build_app(node)
    with TestClient(app, headers={"authorization": f"Bearer {node.admin_token}"},
                    raise_server_exceptions=False) as c:
        yield node, c
