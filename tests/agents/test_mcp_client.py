"""Agents call tools on a real MCP server (official SDK) on loopback; each call is journaled once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgenode.agents import mcp_client
from edgenode.cli import cli
from edgenode.egress import AddressPolicy
from edgenode.errors import EgressDenied
from tests.agents.helpers import FAST, error_code, journal, start, wait_status
from tests.support import NodeProcess, wait_for

AGENT = """
from edgenode_guest.agent import HostError

def run(ctx, input):
    counter = ctx.mcp("counter")
    tools = sorted(t["name"] for t in counter.list_tools())
    first = counter.call_tool("record", {"key": input})
    ctx.wait_for_event("go")
    total = counter.call_tool("add", {"a": 2, "b": 3})
    unknown = counter.call_tool("no-such-tool", {})
    try:
        ctx.mcp("elsewhere").list_tools()
        refused = None
    except HostError as exc:
        refused = exc.code
    return {"tools": tools, "first": first["text"], "total": total["structured"], "unknown": unknown["is_error"],
            "refused": refused}
"""


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("mcp-server")
    proc = subprocess.Popen([sys.executable, "-m", "tests.agents.mcp_server", str(directory)],
                            cwd=Path(__file__).resolve().parents[2])
    try:
        url = wait_for(lambda: (directory / "url").exists() and (directory / "url").read_text(),
                       message="the MCP server to listen")
        yield url, directory
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_mcp_tool_call_is_journaled_once_across_a_node_restart(
        mcp_server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    url, directory = mcp_server
    node = NodeProcess(tmp_path_factory.mktemp("mcp-node"),
                       env={**FAST, "EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8"}).start()
    try:
        with node.client() as api:
            for servers in ({"counter": "ftp://x"}, {"bad name!": url}, ["counter"], {"counter": 5}):
                r = api.put("/v1/agents/mcp-user", json={"files": {"main.py": AGENT}, "mcp_servers": servers})
                assert r.status_code == 400 and error_code(r) == "validation_failed", (servers, r.text)
                field = r.json()["error"]["field"]  # the server's entry when the model names it
                assert field == "mcp_servers" or field.startswith("mcp_servers."), r.text
            # Deployed with the command line's --mcp-server NAME=URL.
            source = directory / "main.py"
            source.write_text(AGENT)
            runner = CliRunner()
            base = ["--url", node.url, "--token", node.admin_token, "agent", "deploy", "mcp-user", str(source)]
            assert runner.invoke(cli, [*base, "--mcp-server", "counter"]).exit_code != 0
            result = runner.invoke(cli, [*base, "--mcp-server", f"counter={url}"])
            assert result.exit_code == 0, result.output
            run = start(api, "mcp-user", "k1")
            wait_status(api, run["id"], "waiting")
        assert (directory / "calls").read_text().split() == ["k1"]
        node.kill()  # mid-run, with the tool call made and journaled
        node.start()
        with node.client() as api:
            api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "go"})
            done = wait_status(api, run["id"], "completed", "failed")
            assert done["output"] == {"tools": ["add", "record"], "first": "recorded k1 (1 calls)",
                                      "total": {"result": 5}, "unknown": True, "refused": "fetch_denied"}, done
            kinds = [(e["kind"], e["name"], e["status"]) for e in journal(api, run["id"])]
        # The replay after the restart answered the first call from the journal: one real call.
        assert (directory / "calls").read_text().split() == ["k1"]
        assert kinds == [("mcp.list_tools", "counter", "ok"), ("mcp.call_tool", "counter", "ok"),
                         ("event", "go", "ok"), ("mcp.call_tool", "counter", "ok"),
                         ("mcp.call_tool", "counter", "ok"), ("mcp.list_tools", "elsewhere", "error")]
    finally:
        node.stop()


def test_mcp_calls_go_through_the_egress_address_policy(mcp_server: tuple[str, Path]) -> None:
    url, _ = mcp_server
    assert mcp_client.call(AddressPolicy(["127.0.0.0/8"]), "counter", url, "call_tool", "add",
                           {"a": 1, "b": 1})["structured"] == {"result": 2}
    with pytest.raises(EgressDenied):
        mcp_client.call(AddressPolicy(), "counter", url, "list_tools")  # loopback, not allowed by the operator
