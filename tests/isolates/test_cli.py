"""The command line against a real node: edgenode deploy, run and workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.isolates.test_run import CODE
from tests.support import NodeProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def edgenode(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgenode", "--url", node.url, "--token", node.admin_token, *args],
                          capture_output=True, text=True, timeout=300)


def test_deploy_the_hello_example_and_invoke_it(wnode: NodeProcess, admin: httpx.Client) -> None:
    done = edgenode(wnode, "deploy", "hello", str(EXAMPLES / "hello-worker"), "--cpu-ms", "500", "--env", "A=b")
    assert done.returncode == 0, done.stderr
    assert "deployed hello version 1 (python" in done.stdout
    first = admin.get("/w/hello/some/path?name=edge").json()
    assert first == {"path": "/some/path", "hits": 1, "hello": "edge"}
    assert admin.get("/w/hello/").json()["hits"] == 2
    listed = edgenode(wnode, "workers")
    assert listed.returncode == 0 and "hello" in listed.stdout and "python" in listed.stdout
    shown = json.loads(edgenode(wnode, "workers", "show", "hello").stdout)
    assert shown["limits"]["cpu_ms"] == 500 and shown["env"] == ["A"]
    usage = edgenode(wnode, "workers", "usage")
    assert "hello" in usage.stdout


def test_run_a_file_once(wnode: NodeProcess, tmp_path: Path) -> None:
    script = tmp_path / "sum.py"
    script.write_text(CODE)
    done = edgenode(wnode, "run", str(script), "--input", "[4, 5]")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sum": 9}
    assert "adding up" in done.stderr
    failed = edgenode(wnode, "run", str(script), "--input", '"kv"')
    assert failed.returncode == 1 and "guest_exception" in failed.stderr


def test_deploy_a_missing_directory_or_bad_worker(wnode: NodeProcess, tmp_path: Path) -> None:
    assert edgenode(wnode, "deploy", "x", str(tmp_path / "nope")).returncode == 2
    (tmp_path / "lib.py").write_text("x = 1\n")
    done = edgenode(wnode, "deploy", "x", str(tmp_path))
    assert done.returncode != 0 and "main.py" in done.stderr
    gone = edgenode(wnode, "workers", "rm", "never-deployed")
    assert gone.returncode == 1 and "worker_not_found" in gone.stderr
