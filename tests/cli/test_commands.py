"""The command line against a real node: pass-through exec, files, processes, --json everywhere, --wait."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner, Result

from edgenode.cli import cli
from edgenode.cli.base import add_json_options
from edgenode.cli.output import ago, cell, duration, progress
from tests.client.helpers import APPROVAL_AGENT, FAST_AGENTS, tenant_token
from tests.support import MIN_WAIT_S, NodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("cli-node"), env=FAST_AGENTS).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def token(node: NodeProcess) -> str:
    return tenant_token(node, "clitour")


def edgenode(node: NodeProcess, token: str, *args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--url", node.url, "--token", token, *args], input=input)


@pytest.fixture(scope="module")
def box(node: NodeProcess, token: str) -> str:
    created = edgenode(node, token, "sandbox", "create", "--name", "work")
    assert created.exit_code == 0, created.output
    return "work"


def _commands(command: click.Command, path: str = "edgenode") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, f"{path} {name}")


def test_everything_after_the_sandbox_reaches_the_command(node: NodeProcess, token: str, box: str) -> None:
    listed = edgenode(node, token, "sandbox", "exec", box, "ls", "-h", "/")
    assert listed.exit_code == 0, listed.output
    assert "etc" in listed.stdout.split() and "Usage" not in listed.output
    grepped = edgenode(node, token, "sandbox", "exec", box, "grep", "-e", "root", "/etc/passwd")
    assert grepped.exit_code == 0 and grepped.stdout.startswith("root:"), grepped.output
    dashed = edgenode(node, token, "sandbox", "exec", "--cwd", "/", box, "--", "sh", "-c", 'echo "$0 $(pwd)"', "--json")
    assert dashed.exit_code == 0 and dashed.stdout == "--json /\n", dashed.output  # after --: the command's
    status = edgenode(node, token, "sandbox", "exec", box, "sh", "-c", "exit 7")
    assert status.exit_code == 7


def test_files_and_background_processes(node: NodeProcess, token: str, box: str) -> None:
    put = edgenode(node, token, "sandbox", "files", "put", box, "app/deep/hello.txt", input="hi\n")
    assert put.exit_code == 0, put.output  # parents created
    assert edgenode(node, token, "sandbox", "files", "get", box, "app/deep/hello.txt").stdout == "hi\n"
    listing = edgenode(node, token, "sandbox", "files", "ls", box, "app/deep")
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "SIZE", "MODE", "MODIFIED_AT"] and row.startswith("hello.txt ")
    assert header.index("TYPE") == row.index("file")  # aligned
    started = edgenode(node, token, "sandbox", "exec", "--background", box, "sh", "-c", "echo up; sleep 600")
    assert started.exit_code == 0, started.output
    pid = started.stdout.strip()
    ps = edgenode(node, token, "sandbox", "ps", box, "--json")
    assert [p["state"] for p in json.loads(ps.stdout)["processes"] if str(p["id"]) == pid] == ["running"]
    assert "just now" in edgenode(node, token, "sandbox", "ps", box).stdout or "s ago" in \
        edgenode(node, token, "sandbox", "ps", box).stdout
    killed = edgenode(node, token, "sandbox", "kill", box, pid)
    assert killed.exit_code == 0, killed.output
    logs = edgenode(node, token, "sandbox", "logs", box, pid, "--follow")  # returns: the process has exited
    assert logs.stdout == "up\n", logs.output
    assert edgenode(node, token, "sandbox", "files", "rm", box, "app", "--recursive").exit_code == 0
    gone = edgenode(node, token, "sandbox", "files", "get", box, "app/deep/hello.txt")
    assert gone.exit_code == 1 and "404" in gone.stderr


def test_every_command_takes_json() -> None:
    add_json_options(cli)
    missing = [path for path, command in _commands(cli)
               if not isinstance(command, click.Group) and not any("--json" in p.opts for p in command.params
                                                                   if isinstance(p, click.Option))]
    assert missing == []


def test_json_results_and_json_errors(node: NodeProcess, token: str, box: str) -> None:
    for args in (["sandbox", "ls"], ["workers", "list"], ["agent", "runs"], ["repo", "ls"], ["status"],
                 ["kv", "put", "ns", "k", "v"], ["sandbox", "exec", "--json", box, "echo hi"]):
        done = edgenode(node, token, *args) if "--json" in args else edgenode(node, token, *args, "--json")
        assert done.exit_code == 0, (args, done.output)
        json.loads(done.stdout)  # one JSON document
    missing = edgenode(node, token, "sandbox", "exec", "--json", "nope", "true")
    assert missing.exit_code == 1 and missing.stdout == ""
    error = json.loads(missing.stderr)["error"]
    assert error["code"] == "sandbox_not_found" and error["status"] == 404 and error["id"]
    usage = edgenode(node, token, "--json", "sandbox", "create", "--limit", "pids")
    assert usage.exit_code == 2 and json.loads(usage.stderr)["error"]["code"] == "usage"
    unknown = edgenode(node, token, "--json", "no-such-command")
    assert unknown.exit_code == 2 and json.loads(unknown.stderr)["error"]["code"] == "usage"
    unreachable = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:9", "status", "--json"])
    assert unreachable.exit_code == 1 and json.loads(unreachable.stderr)["error"]["code"] == "unreachable"
    trailing = edgenode(node, token, "sandbox", "exec", "nope", "grep", "--json", "x")  # the command's own word
    assert trailing.exit_code == 1 and trailing.stderr.startswith("edgenode: 404 sandbox_not_found")
    human = edgenode(node, token, "sandbox", "exec", "nope", "true")
    assert human.stderr.startswith("edgenode: 404 sandbox_not_found: ") and "request" in human.stderr


def test_one_name_per_flag() -> None:
    """An option name means one kind of thing everywhere: a flag, a value, or a repeatable value."""
    add_json_options(cli)
    kinds: dict[str, set[str]] = {}
    for _path, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Option) and command is not cli:  # `edgenode --version` is the program's
                kind = "flag" if param.is_flag else "repeat" if param.multiple else "value"
                for name in param.opts:
                    kinds.setdefault(name, set()).add(kind)
    assert {name: sorted(k) for name, k in kinds.items() if len(k) > 1} == {}
    assert "--allow-host" not in kinds  # hosts are --allow for workers, agents and sandboxes alike


def test_agent_start_wait_stops_at_the_approval(node: NodeProcess, token: str, tmp_path: object) -> None:
    from pathlib import Path

    source = Path(str(tmp_path)) / "main.py"
    source.write_text(APPROVAL_AGENT)
    deployed = edgenode(node, token, "agent", "deploy", "waiter", str(source))
    assert deployed.exit_code == 0, deployed.output
    started = edgenode(node, token, "--timeout", str(MIN_WAIT_S * 2), "agent", "start", "waiter", "--input", '"draft"',
                       "--wait", "--json")
    assert started.exit_code == 0, started.output
    run = json.loads(started.stdout)
    assert run["waiting"]["kind"] == "approval"
    assert edgenode(node, token, "agent", "approve", run["id"], "--comment", "ok").exit_code == 0
    done = edgenode(node, token, "--timeout", str(MIN_WAIT_S * 2), "agent", "start", "waiter", "--id", run["id"],
                    "--wait")
    assert done.exit_code == 0, done.output
    assert "completed" in done.stdout.splitlines()[0] and '"approved": true' in done.stdout


class _Terminal(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.drawn = threading.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if "elapsed-test:" in text:
            self.drawn.set()
        return super().write(text)


def test_progress_shows_elapsed_time_on_a_terminal_only() -> None:
    terminal = _Terminal()
    with progress("elapsed-test", stream=terminal, interval_s=0.01) as show:
        show("3 KiB received")
        assert terminal.drawn.wait(MIN_WAIT_S)
    drawn = terminal.getvalue()
    assert " s (3 KiB received)" in drawn and drawn.endswith("\r\033[K")  # the line is cleared at the end
    plain = io.StringIO()
    with progress("elapsed-test", stream=plain, interval_s=0.01):
        pass
    assert plain.getvalue() == ""


def test_times_and_durations_read_as_people_say_them() -> None:
    assert ago(1000.0, now=1000.4) == "just now"
    assert ago(1000.0, now=1042.0) == "42 s ago"
    assert ago(1000.0, now=1000.0 + 3 * 60 + 5) == "3 min ago"
    assert ago(1000.0 + 7200, now=1000.0) == "in 2 h"
    assert duration(0.42) == "0.4 s" and duration(185) == "3 min 5 s" and duration(2 * 86400 + 3 * 3600) == "2 d 3 h"
    assert cell(None) == "-" and cell(True, "public") == "yes" and cell(3600, "uptime_s") == "1 h"
    assert cell("2026-01-01T00:00:00Z", "created_at").endswith("ago")
