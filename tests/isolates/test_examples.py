"""The worker examples that `make run` deploys, deployed the way examples/run.py does it."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.isolates.conftest import start_node
from tests.support import NodeProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def wnode(tmp_path_factory: pytest.TempPathFactory, worker_cache: Path) -> Iterator[NodeProcess]:
    """A node as examples/run.py starts it: its fetch example calls the node itself, on loopback."""
    proc = start_node(tmp_path_factory.mktemp("wnode"), worker_cache, EDGENODE_EGRESS_ALLOW_NETWORKS="127.0.0.0/8")
    yield proc
    proc.stop()


def load_run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_run", EXAMPLES / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_examples_deploy_and_answer(wnode: NodeProcess, admin: httpx.Client) -> None:
    run = load_run_py()
    hostport = wnode.url.split("://", 1)[1]
    names = {"NODE_URL": wnode.url, "NODE_HOSTPORT": f"http://{hostport}"}
    deployed = []
    for directory, spec in run.examples():
        if spec.get("kind", "worker") != "worker":
            continue  # other capabilities test their own examples
        name = spec.get("name", directory.name)
        summary = run.DEPLOYERS["worker"](admin, directory, name, run.substitute(spec.get("settings", {}), names))
        assert summary.startswith(f"worker {name} version")
        for step in spec.get("try", []):
            assert step["path"].startswith(f"/w/{name}/")
        deployed.append(name)
    assert {"hello-worker", "kv-fetch-worker"} <= set(deployed)

    assert admin.get("/w/hello-worker/a?name=x").json() == {"path": "/a", "hits": 1, "hello": "x"}
    first = admin.get("/w/kv-fetch-worker/").json()
    assert first["from_cache"] is False and first["status"] == 200 and '"status":"ok"' in first["body"]
    assert admin.get("/w/kv-fetch-worker/").json()["from_cache"] is True
    assert admin.get("/w/kv-fetch-worker/cache").json() == {"cached": [f"url:{wnode.url}/healthz"]}
    denied = admin.get("/w/kv-fetch-worker/?url=https://example.com/")
    assert denied.status_code == 502 and "fetch_denied" in denied.json()["error"]


def test_curl_lines_send_json_bodies_as_json() -> None:
    run = load_run_py()
    line = run.curl_line("http://n", "tok", {"method": "POST", "path": "/v1/x", "body": '{"a": 1}', "note": "hi"})
    assert "-X POST" in line and "'content-type: application/json'" in line and line.endswith("# hi")
    assert "content-type" not in run.curl_line("http://n", "tok", {"path": "/w/x/"})
