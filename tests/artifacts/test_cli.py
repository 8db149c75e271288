"""``edgenode repo`` against a real node."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgenode.cli import cli
from tests.artifacts.gitutil import git
from tests.support import NodeProcess


def _run(node: NodeProcess, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--url", node.url, "--token", node.admin_token, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_repo_commands(node: NodeProcess, tmp_path: Path) -> None:
    assert "created default/cli-repo" in _run(node, "repo", "create", "cli-repo")
    assert "cli-repo" in _run(node, "repo", "ls")
    url = _run(node, "repo", "clone-url", "cli-repo").strip()
    assert url.endswith("/git/default/cli-repo.git") and "edr_" in url
    git("clone", url, "w", cwd=tmp_path)
    w = tmp_path / "w"
    (w / "hello.txt").write_text("hi\n")
    git("add", ".", cwd=w)
    git("commit", "-qm", "hello from the cli test", cwd=w)
    git("push", "origin", "HEAD:main", cwd=w)
    assert "hello from the cli test" in _run(node, "repo", "log", "cli-repo")
    assert "edr_" not in _run(node, "repo", "clone-url", "cli-repo", "--no-token")
    assert "created default/cli-fork" in _run(node, "repo", "create", "cli-fork", "--fork", "cli-repo")


def test_repo_errors_are_reported(node: NodeProcess) -> None:
    result = CliRunner().invoke(cli, ["--url", node.url, "--token", node.admin_token, "repo", "log", "ghost"])
    assert result.exit_code == 1
    assert "404 artifact_not_found" in result.output
