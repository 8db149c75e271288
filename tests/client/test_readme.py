"""The README's Python SDK and MCP examples run as written against a real node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.helpers import tenant_token
from tests.support import NodeProcess

README = Path(__file__).resolve().parents[2] / "README.md"


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
