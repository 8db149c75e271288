from __future__ import annotations

import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from edgenode.cli import cli
from edgenode.cli.client import DEFAULT_TIMEOUT_S, ClientContext
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


class SlowNode:
    """A stand-in node on loopback that takes every request in and answers only when released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 (the http.server naming)
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.received.set()
                outer.release.wait(120)
                body = b'{"name": "hello", "version": 1, "kind": "python", "hash": "0123456789abcdef"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_node() -> Iterator[SlowNode]:
    node = SlowNode()
    yield node
    node.close()


def test_a_node_still_working_past_the_timeout_is_not_called_unreachable(slow_node: SlowNode,
                                                                          tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text("def handle(request):\n    return 'hi'\n")
    result = CliRunner().invoke(cli, ["--url", slow_node.url, "--token", "edn_x", "--timeout", "0.5",
                                      "deploy", "hello", str(source)])
    assert slow_node.received.is_set()
    assert result.exit_code == 1
    assert "did not answer PUT /v1/workers/hello within 0.5 s" in result.output
    assert "may still be working" in result.output and "cannot reach" not in result.output


def test_long_calls_wait_for_the_node_and_quick_ones_are_bounded(slow_node: SlowNode, tmp_path: Path) -> None:
    context = ClientContext(url=slow_node.url, token=None, data_dir=None)
    assert context.timeout().read == DEFAULT_TIMEOUT_S
    assert context.timeout(long=True).read is None  # the node bounds a build or a run itself
    bounded = ClientContext(url=slow_node.url, token=None, data_dir=None, timeout_s=5)
    assert bounded.timeout().read == bounded.timeout(long=True).read == 5
    # A deploy answered after the node has worked on it: the client is still there to print it.
    source = tmp_path / "main.py"
    source.write_text("def handle(request):\n    return 'hi'\n")
    outcome: dict[str, Any] = {}

    def deploy() -> None:
        outcome["result"] = CliRunner().invoke(cli, ["--url", slow_node.url, "--token", "edn_x",
                                                     "deploy", "hello", str(source)])

    caller = threading.Thread(target=deploy)
    caller.start()
    assert slow_node.received.wait(60)
    slow_node.release.set()
    caller.join(60)
    assert outcome["result"].exit_code == 0, outcome["result"].output
    assert "deployed hello version 1" in outcome["result"].output
