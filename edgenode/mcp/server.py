"""The node's MCP server: tools over the streamable HTTP transport at ``/mcp``.

The endpoint sits behind the node's own middleware, so a call needs a bearer token
exactly as every other route does (401 without one) and acts for the token's tenant.
Sessions are stateless: every POST carries its own token and is answered on its own,
so no session outlives its request and none can be borrowed by another caller.
Tool errors come back as MCP tool errors (``isError``) whose content is the node's
JSON error, ``{"error": {"code", "message", "id", ...}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
from starlette.types import Receive, Scope, Send

from edgenode import __version__
from edgenode.api.errors import error_body
from edgenode.auth import Principal
from edgenode.errors import EdgenodeError, Internal, Unauthorized
from edgenode.mcp import tools

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger("edgenode.mcp")

#: Hints for clients deciding what to run without asking: reads change nothing.
_READ = ToolAnnotations(read_only_hint=True)

#: The path the endpoint is served at.
MCP_PATH = "/mcp"


def _principal(ctx: Context[Any, Any]) -> tuple[Principal, str]:
    """The authenticated caller of this tool call (set by the node's middleware) and the request id."""
    request = ctx.request_context.request
    scope: dict[str, Any] = getattr(request, "scope", None) or {}
    principal: Principal | None = scope.get("edgenode.principal")
    if principal is None:  # only reachable if the endpoint were mounted outside the middleware
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return principal, str(scope.get("edgenode.request_id", "-"))


def _text(data: Any) -> list[ContentBlock]:
    return [TextContent(type="text", text=json.dumps(data, ensure_ascii=False, default=str))]


async def _call(ctx: Context[Any, Any], action: Callable[[Principal], Awaitable[dict[str, Any]]]) -> CallToolResult:
    """Run one tool for the caller; the result as structured content, an EdgenodeError as a tool error."""
    request_id = "-"
    try:
        principal, request_id = _principal(ctx)
        result = await action(principal)
    except EdgenodeError as exc:
        return _error(exc, request_id)
    except Exception as exc:  # a bug: logged with its traceback, answered without internals
        log.exception("MCP tool failed", exc_info=exc)
        return _error(Internal(f"internal error ({type(exc).__name__}); see the node's log"), request_id)
    return CallToolResult(content=_text(result), structured_content=result)


def _error(exc: EdgenodeError, request_id: str) -> CallToolResult:
    body = json.loads(error_body(exc, request_id))
    return CallToolResult(content=_text(body), structured_content=body, is_error=True)


def build_server(node: Node) -> MCPServer[Any]:
    """An MCP server whose tools call ``node``'s capabilities for each call's principal."""
    server: MCPServer[Any] = MCPServer(
        "edgenode", version=__version__,
        instructions="Run code in isolates, drive sandboxes, commit to Git repositories and steer agent runs "
                     "on this edgenode node. Every tool acts for the tenant of the bearer token.",
    )

    @server.tool()
    async def run_code(code: str, ctx: Context[Any, Any], input: Any = None,
                       limits: dict[str, Any] | None = None) -> CallToolResult:
        """Run Python code once in a fresh isolate: it defines main(input) or handle(request); nothing is kept.

        Returns status, the body as text (and json when the reply is JSON), logs and usage.
        """
        return await _call(ctx, lambda who: tools.run_code(node, who, code, input, limits))

    @server.tool()
    async def sandbox_create(ctx: Context[Any, Any], name: str | None = None, network: Any = None,
                             limits: dict[str, Any] | None = None) -> CallToolResult:
        """Create a persistent Linux sandbox (network "none" or {"allow": [...]}, limits such as memory_mb)."""
        return await _call(ctx, lambda who: tools.sandbox_create(node, who, name, network, limits))

    @server.tool()
    async def sandbox_exec(sandbox: str, cmd: str | list[str], ctx: Context[Any, Any], cwd: str | None = None,
                           stdin: str | None = None, timeout_s: float | None = None) -> CallToolResult:
        """Run a command in a sandbox (a shell string or an argv list) and return exit_code, stdout and stderr."""
        return await _call(ctx, lambda who: tools.sandbox_exec(node, who, sandbox, cmd, cwd, stdin, timeout_s))

    @server.tool(annotations=_READ)
    async def sandbox_read_file(sandbox: str, path: str, ctx: Context[Any, Any]) -> CallToolResult:
        """Read a workspace file (text, or base64 when not UTF-8; at most 1 MiB) or list a directory."""
        return await _call(ctx, lambda who: tools.sandbox_read_file(node, who, sandbox, path))

    @server.tool()
    async def sandbox_write_file(sandbox: str, path: str, ctx: Context[Any, Any], text: str | None = None,
                                 base64: str | None = None) -> CallToolResult:
        """Write a workspace file from text or base64, creating its parent directories."""
        return await _call(ctx, lambda who: tools.sandbox_write_file(node, who, sandbox, path, text, base64))

    @server.tool()
    async def repo_create(name: str, ctx: Context[Any, Any], default_branch: str = "main") -> CallToolResult:
        """Create an empty Git repository."""
        return await _call(ctx, lambda who: tools.repo_create(node, who, name, default_branch))

    @server.tool()
    async def repo_commit(repo: str, branch: str, message: str, files: dict[str, Any], ctx: Context[Any, Any],
                          parent: str | None = None) -> CallToolResult:
        """Commit files to a branch: {path: text | {"base64": ...} | null (delete)}; returns the commit id."""
        return await _call(ctx, lambda who: tools.repo_commit(node, who, repo, branch, message, files, parent))

    @server.tool(annotations=_READ)
    async def repo_read_file(repo: str, path: str, ctx: Context[Any, Any], ref: str | None = None) -> CallToolResult:
        """Read a file of a repository at a ref (default: the default branch)."""
        return await _call(ctx, lambda who: tools.repo_read_file(node, who, repo, path, ref))

    @server.tool(annotations=_READ)
    async def repo_refs(repo: str, ctx: Context[Any, Any]) -> CallToolResult:
        """List a repository's refs and HEAD."""
        return await _call(ctx, lambda who: tools.repo_refs(node, who, repo))

    @server.tool()
    async def agent_start(agent: str, ctx: Context[Any, Any], input: Any = None,
                          id: str | None = None) -> CallToolResult:
        """Start a run of a deployed agent; an id makes the start idempotent."""
        return await _call(ctx, lambda who: tools.agent_start(node, who, agent, input, id))

    @server.tool(annotations=_READ)
    async def agent_run_status(run_id: str, ctx: Context[Any, Any]) -> CallToolResult:
        """A run's status, output or error, and what it waits for (an approval's prompt and data)."""
        return await _call(ctx, lambda who: tools.agent_run_status(node, who, run_id))

    @server.tool()
    async def agent_approve(run_id: str, ctx: Context[Any, Any], approved: bool = True,
                            comment: str = "") -> CallToolResult:
        """Approve (or, with approved=false, reject) the approval a run waits for."""
        return await _call(ctx, lambda who: tools.agent_decide(node, who, run_id, approved, comment))

    return server


class McpEndpoint:
    """The ASGI endpoint serving ``/mcp``; ``running()`` must be entered while the app serves."""

    def __init__(self, node: Node) -> None:
        self.server = build_server(node)
        # The bearer token, not the Host header, is what guards this endpoint: a page that rebinds
        # a name onto the node has no token to send, so the SDK's Host allow-list stays off.
        self.app = self.server.streamable_http_app(
            streamable_http_path=MCP_PATH, stateless_http=True, json_response=True,
            max_request_body_size=node.config.http.max_body_bytes,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the transport's session manager (its task group) for the app's lifetime."""
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
