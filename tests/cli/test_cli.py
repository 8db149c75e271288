from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgenode.cli import cli
from tests.support import NodeProcess


def _walk(command: click.Command, path: str = "edgenode") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found.extend(_walk(sub, f"{path} {name}"))
    return found


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in _walk(cli):
        if not (command.help or command.short_help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}")
    assert missing == [], f"commands or options without help text: {missing}"


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "edgenode", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for word in ("serve", "init", "status", "token"):
        assert word in result.stdout


def test_init_creates_the_data_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "node-id").exists() and (tmp_path / "d" / "admin-token").exists()
    assert (tmp_path / "d" / "node.db").exists()
    assert "node id:" in result.output


def test_settings_toml_is_valid_toml() -> None:
    result = CliRunner().invoke(cli, ["settings", "--toml"])
    assert result.exit_code == 0
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in result.output.splitlines()
        if not line.startswith("# ") or " = " in line
    )
    data = tomllib.loads(uncommented)
    assert data["workers"]["max_cpu_ms"] > 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    node = NodeProcess(tmp_path_factory.mktemp("cli")).start()
    yield node
    node.stop()


def test_token_commands_against_a_node(running: NodeProcess) -> None:
    runner = CliRunner()
    base = ["--data", str(running.data_dir)]
    created = runner.invoke(cli, [*base, "token", "create", "acme", "--name", "laptop", "--ttl", "600"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("edn_")
    listed = runner.invoke(cli, [*base, "token", "list"])
    assert "laptop" in listed.output and "acme" in listed.output and token not in listed.output
    who = runner.invoke(cli, ["--url", running.url, "--token", token, "status", "--json"])
    assert who.exit_code == 0 and running.node_id in who.output
    token_id = token.split("_")[1]
    assert runner.invoke(cli, [*base, "token", "revoke", token_id]).exit_code == 0
    denied = runner.invoke(cli, ["--url", running.url, "--token", token, "token", "list"])
    assert denied.exit_code == 1 and "401 token_revoked" in denied.output


def test_client_errors_are_readable(running: NodeProcess, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["--url", running.url, "--token", "edn_wrong", "token", "list"])
    assert bad.exit_code == 1 and "401 unauthorized" in bad.output and "request" in bad.output
    unreachable = runner.invoke(cli, ["--url", "http://127.0.0.1:9", "status"])
    assert unreachable.exit_code == 1 and "cannot reach the node" in unreachable.output
    tenant = runner.invoke(cli, ["--data", str(running.data_dir), "token", "create", "Not Valid"])
    assert tenant.exit_code == 1 and "validation_failed" in tenant.output


def test_status_human_output(running: NodeProcess) -> None:
    result = CliRunner().invoke(cli, ["--data", str(running.data_dir), "status"])
    assert result.exit_code == 0, result.output
    assert running.node_id in result.output and "uptime" in result.output
