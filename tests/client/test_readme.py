"""The README's Python SDK and MCP examples run as written against a real node."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.helpers import tenant_token
from tests.support import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.parametrize(("section", "index"), [("Python SDK", 0), ("Python SDK", 1), ("MCP", 0)])
def test_readme_example_runs(node: NodeProcess, tmp_path: Path, section: str, index: int) -> None:
    blocks = _python_blocks(section)
    assert len(blocks) == {"Python SDK": 2, "MCP": 1}[section]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
    env.update(EDGENODE_URL=node.url, EDGENODE_TOKEN=tenant_token(node, "readme"))
    for attempt in range(2):  # as typed, twice: a second run must work as well as the first
        done = subprocess.run([sys.executable, "-c", blocks[index]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, f"run {attempt + 1}:\n{done.stdout}\n{done.stderr}"
    if section == "Python SDK" and index == 0:
        lines = done.stdout.splitlines()
        assert lines[:3] == ["6", "hello", ""] and "stdout 3" in lines and "hi /there" in lines
        assert "completed True" in lines and any(line.startswith("sandbox_not_found ") for line in lines)
    if section == "MCP":
        assert done.stdout.splitlines()[-1] == "42"


# -- the shell blocks, in order, against a node started as `make run` starts it -------------

#: What the README says `make run` serves on; the test's node listens on a free port instead.
README_ADDRESS = "127.0.0.1:8787"


def shell_blocks() -> list[str]:
    """Every ```sh block of the README, in order."""
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A fresh directory as `make run` leaves it (.venv, examples, .edgenode) with its node serving; its URL."""
    work = tmp_path_factory.mktemp("clone")
    (work / ".venv").symlink_to(Path(sys.prefix))  # the environment the tests run in: its edgenode command
    (work / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
    proc = subprocess.Popen([sys.executable, "examples/run.py", "--data", ".edgenode", "--listen", "127.0.0.1:0"],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    printed: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(line)
            if line.startswith("the command line:"):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(300) and proc.poll() is None, "".join(printed)
    url = next(line.split()[4] for line in printed if line.startswith("edgenode is running at"))
    assert any(line.startswith("approvals page: ") for line in printed)
    try:
        yield work, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        proc.stdout.close()


def test_every_shell_block_runs_in_order_as_typed(make_run: tuple[Path, str]) -> None:
    work, url = make_run
    blocks = shell_blocks()
    assert blocks[0].startswith("make run"), "the first block starts the node: this test does that itself"
    script = ["set -e -o pipefail"]
    for number, block in enumerate(blocks[1:], start=2):
        script += [f"echo '>>> README shell block {number}' >&2", block]
    text = "\n".join(script).replace(README_ADDRESS, url.split("://", 1)[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGENODE_", "GIT_"))}
    env.update(HOME=str(work), GIT_CONFIG_NOSYSTEM="1")
    done = subprocess.run(["bash", "-c", text], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n--- stdout ---\n{done.stdout[-4000:]}"
    assert done.stderr.count(">>> README shell block") == len(blocks) - 1
