"""``edgenode sandbox create|exec|ls|rm`` against a real node."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgenode.cli import cli
from tests.support import NodeProcess


def _cli(node: NodeProcess, *args: str, input: str | None = None):
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    return runner.invoke(cli, ["--url", node.url, "--token", node.admin_token, "sandbox", *args], input=input)


def test_create_exec_ls_rm(node: NodeProcess) -> None:
    created = _cli(node, "create", "--name", "cli-box", "--limit", "pids=50")
    assert created.exit_code == 0, created.output
    sid = created.stdout.strip()
    assert sid.startswith("sb_")
    out = _cli(node, "exec", "cli-box", "echo hello; echo oops >&2; exit 3")
    assert out.exit_code == 3
    assert out.stdout == "hello\n" and "oops" in out.stderr
    argv = _cli(node, "exec", sid, "python3", "-c", "import sys; print(sys.argv[1])", "two words")
    assert argv.exit_code == 0 and argv.stdout == "two words\n"
    piped = _cli(node, "exec", "--stdin", sid, "wc -c", input="12345")
    assert piped.stdout.strip() == "5"
    listing = _cli(node, "ls", "--json")
    assert sid in [s["id"] for s in json.loads(listing.stdout)["sandboxes"]]
    table = _cli(node, "ls")
    assert "cli-box" in table.stdout
    removed = _cli(node, "rm", sid)
    assert removed.exit_code == 0 and f"removed {sid}" in removed.stdout
    missing = _cli(node, "exec", sid, "true")
    assert missing.exit_code == 1 and "sandbox_not_found" in missing.stderr


def test_bad_limit_is_a_usage_error(node: NodeProcess) -> None:
    result = _cli(node, "create", "--limit", "pids")
    assert result.exit_code == 2
