"""The MCP server at /mcp, driven by the official SDK's streamable HTTP client against a real node."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from edgenode.client import Client
from tests.client.helpers import APPROVAL_AGENT, tenant_token
from tests.support import NodeProcess

TOOLS = {"run_code", "sandbox_create", "sandbox_exec", "sandbox_read_file", "sandbox_write_file", "repo_create",
         "repo_commit", "repo_read_file", "repo_refs", "agent_start", "agent_run_status", "agent_approve"}


@asynccontextmanager
async def session(node: NodeProcess, token: str | None, statuses: list[int] | None = None,
                  headers: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    headers = {**(headers or {}), **({"authorization": f"Bearer {token}"} if token else {})}

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    async with (httpx2.AsyncClient(headers=headers, timeout=120, event_hooks={"response": [record]}) as http,
                streamable_http_client(node.url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as s):
        await s.initialize()
        yield s


def with_session(node: NodeProcess, token: str | None, body: Callable[[ClientSession], Awaitable[Any]],
                 statuses: list[int] | None = None, headers: dict[str, str] | None = None) -> Any:
    async def main() -> Any:
        async with session(node, token, statuses, headers) as s:
            return await body(s)
    return asyncio.run(main())


async def call(s: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; the test fails if the tool reported an error."""
    result = await s.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error_of(s: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """The node's error a tool call came back with (an MCP tool error)."""
    result = await s.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    assert result.structured_content is not None
    error: dict[str, Any] = result.structured_content["error"]
    return error


@pytest.fixture(scope="module")
def token(node: NodeProcess) -> str:
    return tenant_token(node, "acme")


def test_lists_tools_and_runs_code(node: NodeProcess, token: str) -> None:
    async def body(s: ClientSession) -> None:
        listed = await s.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        run_code = next(t for t in listed.tools if t.name == "run_code")
        assert run_code.input_schema["required"] == ["code"] and run_code.description
        reads = {t.name for t in listed.tools if t.annotations and t.annotations.read_only_hint}
        assert reads == {"sandbox_read_file", "repo_read_file", "repo_refs", "agent_run_status"}
        done = await call(s, "run_code", code="def main(input):\n    return {'sum': sum(input)}\n", input=[1, 2, 3])
        assert done["status"] == 200 and done["json"] == {"sum": 6} and done["usage"]["cpu_ms"] > 0
        failed = await error_of(s, "run_code", code="def main(input):\n    raise ValueError('no')\n")
        assert failed["code"] == "guest_exception" and "ValueError" in failed["message"] and failed["id"]
        refused = await error_of(s, "run_code", code="def main(input):\n    return 1\n", limits={"cpu_ms": -1})
        assert refused["code"] == "validation_failed"
        missing = await s.call_tool("run_code", {})
        assert missing.is_error  # the SDK checks arguments against the schema
    with_session(node, token, body)


def test_sandbox_tools(node: NodeProcess, token: str) -> None:
    async def body(s: ClientSession) -> None:
        box = await call(s, "sandbox_create", name="mcp-box")
        assert box["name"] == "mcp-box"
        written = await call(s, "sandbox_write_file", sandbox=box["id"], path="src/pkg/hello.txt", text="hello\n")
        assert written == {"path": "src/pkg/hello.txt", "size": 6}
        await call(s, "sandbox_write_file", sandbox="mcp-box", path="bin.dat", base64="AAEC/w==")
        ran = await call(s, "sandbox_exec", sandbox="mcp-box", cmd="cat src/pkg/hello.txt; echo oops >&2; exit 2")
        assert (ran["stdout"], ran["stderr"], ran["exit_code"]) == ("hello\n", "oops\n", 2)
        argv = await call(s, "sandbox_exec", sandbox="mcp-box", cmd=["python3", "-c", "print(7 * 6)"])
        assert argv["stdout"] == "42\n"
        text = await call(s, "sandbox_read_file", sandbox="mcp-box", path="src/pkg/hello.txt")
        assert (text["type"], text["text"]) == ("file", "hello\n")
        assert (await call(s, "sandbox_read_file", sandbox="mcp-box", path="bin.dat"))["base64"] == "AAEC/w=="
        listing = await call(s, "sandbox_read_file", sandbox="mcp-box", path="src/pkg")
        assert [e["name"] for e in listing["entries"]] == ["hello.txt"]
        assert (await error_of(s, "sandbox_read_file", sandbox="mcp-box", path="nope.txt"))["code"] == "not_found"
        escaped = await error_of(s, "sandbox_write_file", sandbox="mcp-box", path="../x", text="x")
        assert escaped["code"] == "path_refused"
        both = await error_of(s, "sandbox_write_file", sandbox="mcp-box", path="x", text="x", base64="eA==")
        assert both["code"] == "validation_failed"
        assert (await error_of(s, "sandbox_exec", sandbox="mcp-box", cmd=""))["code"] == "validation_failed"
        assert (await error_of(s, "sandbox_exec", sandbox="nobody", cmd="true"))["code"] == "sandbox_not_found"
    with_session(node, token, body)


def test_repository_tools(node: NodeProcess, token: str) -> None:
    async def body(s: ClientSession) -> None:
        assert (await call(s, "repo_create", name="mcp-notes"))["name"] == "mcp-notes"
        first = await call(s, "repo_commit", repo="mcp-notes", branch="main", message="first",
                           files={"README.md": "# notes\n", "data/a.bin": {"base64": "AP8="}})
        read = await call(s, "repo_read_file", repo="mcp-notes", path="README.md")
        assert (read["ref"], read["text"]) == ("main", "# notes\n")
        assert (await call(s, "repo_read_file", repo="mcp-notes", path="data/a.bin"))["base64"] == "AP8="
        refs = await call(s, "repo_refs", repo="mcp-notes")
        assert refs["refs"]["refs/heads/main"] == first["commit"]
        second = await call(s, "repo_commit", repo="mcp-notes", branch="main", message="second",
                            files={"README.md": None}, parent=first["commit"])
        stale = await error_of(s, "repo_commit", repo="mcp-notes", branch="main", message="stale",
                               files={"b": "b"}, parent=first["commit"])
        assert stale["code"] == "parent_moved" and stale["actual"] == second["commit"]
        missing = await error_of(s, "repo_read_file", repo="mcp-notes", path="README.md")  # deleted by second
        assert missing["code"] == "artifact_not_found"
        assert (await error_of(s, "repo_create", name="mcp-notes"))["code"] == "repo_exists"
    with_session(node, token, body)


def test_agent_run_tools(node: NodeProcess, token: str) -> None:
    with Client(node.url, token) as sdk:
        sdk.agents.deploy("mcp-publisher", files={"main.py": APPROVAL_AGENT})

    async def status_until(s: ClientSession, run_id: str, wanted: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while (run := await call(s, "agent_run_status", run_id=run_id))["status"] != wanted:
            assert time.monotonic() < deadline, f"run stayed {run['status']}"
            await asyncio.sleep(0.05)
        return run

    async def body(s: ClientSession) -> None:
        started = await call(s, "agent_start", agent="mcp-publisher", input={"title": "t"}, id="mcp-run-1")
        assert started["created"] is True
        assert (await call(s, "agent_start", agent="mcp-publisher", id="mcp-run-1"))["created"] is False
        waiting = await status_until(s, "mcp-run-1", "waiting")
        assert waiting["waiting"]["kind"] == "approval"
        decided = await call(s, "agent_approve", run_id="mcp-run-1", comment="go")
        assert decided
        done = await status_until(s, "mcp-run-1", "completed")
        assert done["output"] == {"approved": True, "comment": "go", "draft": {"title": "t"}}
        again = await error_of(s, "agent_approve", run_id="mcp-run-1")
        assert again["code"] == "run_finished"
        assert (await error_of(s, "agent_start", agent="nobody"))["code"] == "agent_not_found"

        other = await call(s, "agent_start", agent="mcp-publisher", input="no")
        await status_until(s, other["id"], "waiting")
        await call(s, "agent_approve", run_id=other["id"], approved=False, comment="not this")
        rejected = await status_until(s, other["id"], "completed")
        assert rejected["output"] == {"approved": False, "comment": "not this", "draft": "no"}
        assert (await error_of(s, "agent_run_status", run_id="run_0000000000000000"))["code"] == "run_not_found"
    with_session(node, token, body)


def test_a_call_without_a_valid_token_is_refused(node: NodeProcess) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"accept": "application/json, text/event-stream"}
    for extra in ({}, {"authorization": "Bearer edn_nope_nope"}):
        r = httpx.post(node.url + "/mcp", json=initialize, headers={**headers, **extra})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")

    async def body(s: ClientSession) -> None:
        raise AssertionError("a session opened without a token")
    statuses: list[int] = []
    with pytest.raises(ExceptionGroup) as raised:  # the official client gets the 401 and fails the handshake
        with_session(node, None, body, statuses)
    assert raised.group_contains(MCPError)
    assert statuses == [401]


def test_a_tenant_cannot_reach_another_tenants_resources(node: NodeProcess, token: str) -> None:
    with Client(node.url, token) as sdk:
        sdk.agents.deploy("mcp-publisher", files={"main.py": APPROVAL_AGENT})

    async def create(s: ClientSession) -> dict[str, Any]:
        box = await call(s, "sandbox_create")
        await call(s, "sandbox_write_file", sandbox=box["id"], path="secret.txt", text="acme only")
        await call(s, "repo_create", name="acme-private")
        run = await call(s, "agent_start", agent="mcp-publisher", input="x")
        return {"box": box["id"], "run": run["id"]}

    mine = with_session(node, token, create)

    async def pry(s: ClientSession) -> None:
        for tool, args in (("sandbox_read_file", {"path": "secret.txt"}), ("sandbox_exec", {"cmd": "cat secret.txt"}),
                           ("sandbox_write_file", {"path": "x.txt", "text": "x"})):
            assert (await error_of(s, tool, sandbox=mine["box"], **args))["code"] == "sandbox_not_found"
        assert (await error_of(s, "repo_refs", repo="acme-private"))["code"] == "artifact_not_found"
        # Another tenant's run answers exactly like a missing one.
        assert (await error_of(s, "agent_run_status", run_id=mine["run"]))["code"] == "run_not_found"
        assert (await error_of(s, "agent_approve", run_id=mine["run"]))["code"] == "run_not_found"

    with_session(node, tenant_token(node, "rival"), pry)

    async def admin_for_acme(s: ClientSession) -> None:  # an admin acts for a tenant it names, as over HTTP
        assert (await call(s, "sandbox_read_file", sandbox=mine["box"], path="secret.txt"))["text"] == "acme only"
    with_session(node, node.admin_token, admin_for_acme, headers={"x-edgenode-tenant": "acme"})
    with Client(node.url, token) as sdk:  # and nothing of acme's changed
        box = sdk.sandboxes.get(mine["box"])
        assert box.files.read("secret.txt") == b"acme only"
        assert [e["name"] for e in box.files.list()] == ["secret.txt"]


@pytest.mark.parametrize("module", ["edgenode.mcp", "edgenode.mcp.tools", "edgenode.api", "edgenode.client"])
def test_each_module_imports_first(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
