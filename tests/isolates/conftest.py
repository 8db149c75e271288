"""Fixtures for worker tests: a build cache shared by the whole session, nodes that use it.

Building a Python worker takes seconds, so every node in this directory points at one
session-wide cache (``workers.cache_dir``); the kitchen worker is built once and its
compiled code is reused by every node and every test.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import wasmtime

from tests.support import NodeProcess

HERE = Path(__file__).resolve().parent
GUESTS = HERE / "guests"
DATA = HERE / "data"


def read_files(directory: Path) -> dict[str, str]:
    """A worker directory as the ``files`` of a deploy."""
    return {p.relative_to(directory).as_posix(): p.read_text() for p in sorted(directory.rglob("*.py"))}


@pytest.fixture(scope="session")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build and compiled-code cache for every node of the session."""
    return tmp_path_factory.mktemp("worker-cache")


def start_node(data_dir: Path, cache: Path, **env: str) -> NodeProcess:
    """A node whose workers use the shared cache; extra ``EDGENODE_*`` settings in ``env``."""
    return NodeProcess(data_dir, env={"EDGENODE_WORKERS_CACHE_DIR": str(cache), **env}).start(timeout=60)


@pytest.fixture(scope="module")
def wnode(tmp_path_factory: pytest.TempPathFactory, worker_cache: Path) -> Iterator[NodeProcess]:
    """A node shared by the tests of one module."""
    proc = start_node(tmp_path_factory.mktemp("wnode"), worker_cache)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(wnode: NodeProcess) -> Iterator[httpx.Client]:
    """An admin client of ``wnode`` (acting for the default tenant)."""
    with wnode.client(timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def kitchen_files() -> dict[str, str]:
    """The test worker with one route per behaviour."""
    return read_files(GUESTS / "kitchen")


@pytest.fixture(scope="module")
def kitchen(admin: httpx.Client, kitchen_files: dict[str, str]) -> str:
    """The kitchen worker deployed on ``wnode`` as ``kitchen``, with tight limits."""
    r = admin.put("/v1/workers/kitchen", json={
        "files": kitchen_files,
        "limits": {"cpu_ms": 300, "memory_mb": 48, "wall_ms": 5000, "subrequests": 3},
        "env": {"GREETING": "hi"},
    })
    assert r.status_code == 201, r.text
    return "kitchen"


def hello_component() -> bytes:
    """A hand-written worker component (WebAssembly text), built without any toolchain."""
    return bytes(wasmtime.wat2wasm((DATA / "hello.wat").read_text()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error_code(response: httpx.Response) -> str:
    """The ``error.code`` of a JSON error reply."""
    code: str = response.json()["error"]["code"]
    return code
