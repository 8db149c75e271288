"""`edgenode agent ...` against a real node."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgenode.cli import cli
from tests.agents.helpers import run_of
from tests.support import NodeProcess, wait_for


def test_agent_commands(agent_node: NodeProcess, tmp_path: Path) -> None:
    source = tmp_path / "agent"
    source.mkdir()
    (source / "main.py").write_text(
        "def run(ctx, input):\n"
        "    ok = ctx.approval('deploy?', input)\n"
        "    return {'approved': ok.approved, 'comment': ok.comment}\n")
    runner = CliRunner()

    def edgenode(*args: str) -> str:
        result = runner.invoke(cli, ["--url", agent_node.url, "--token", agent_node.admin_token, *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "clitest version 1" in edgenode("agent", "deploy", "clitest", str(source))
    assert edgenode("agent", "start", "clitest", "--id", "cli-1", "--input", '{"env": "prod"}').strip() == "cli-1"
    with agent_node.client() as api:
        wait_for(lambda: run_of(api, "cli-1")["status"] == "waiting", message="waiting")
        assert "deploy?" in edgenode("agent", "approvals")
        assert "approved cli-1" in edgenode("agent", "approve", "cli-1", "--comment", "go")
        wait_for(lambda: run_of(api, "cli-1")["status"] == "completed", message="completed")
    assert '"approved": true' in edgenode("agent", "status", "cli-1")
    assert "approval" in edgenode("agent", "history", "cli-1")
    assert "cli-1" in edgenode("agent", "runs", "--agent", "clitest")
    bad = runner.invoke(cli, ["--url", agent_node.url, "--token", agent_node.admin_token,
                              "agent", "status", "no-such-run"])
    assert bad.exit_code != 0 and "run_not_found" in bad.output
