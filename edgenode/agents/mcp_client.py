"""Agents as MCP clients: ``ctx.mcp(server).list_tools()`` and ``.call_tool(name, args)``.

An agent reaches only the MCP servers its deployment lists (``mcp_servers: {name: url}``,
streamable HTTP), through the node's one egress policy: the destination's addresses are
checked and dialled by the checked answer, as for ``fetch``. Each call opens a session,
makes one request and closes it; its result is journaled by the caller like every other
effect, so a replay answers from the journal and never reaches the server again.

Built on the official ``mcp`` SDK's client, imported on first use.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from edgenode.egress import AddressPolicy, Target, mcp_http_client
from edgenode.errors import EdgenodeError, EgressDenied, EgressFailed, EgressTimeout, ValidationFailed

#: Most MCP servers one deployment may list.
MAX_SERVERS = 16
#: Longest one MCP call may take, connect to answer, in seconds.
MCP_TIMEOUT_S = 60.0
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")


def validate_servers(value: Any) -> dict[str, str]:
    """A deployment's ``mcp_servers``: ``{name: "http(s)://host[:port]/path"}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_SERVERS:
        raise ValidationFailed(f"mcp_servers must be an object of at most {MAX_SERVERS} {{name: url}}",
                               field="mcp_servers")
    for name, url in value.items():
        if not isinstance(name, str) or not SERVER_NAME.match(name):
            raise ValidationFailed(f"bad MCP server name {name!r}: letters, digits, '-' and '_'", field="mcp_servers")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2000:
            raise ValidationFailed(f"MCP server {name!r} needs an http or https URL", field="mcp_servers")
        try:
            Target.of(url)
        except EdgenodeError as exc:
            raise ValidationFailed(f"MCP server {name!r}: {exc.message}", field="mcp_servers") from None
    return dict(value)


def server_url(config: dict[str, Any], name: str) -> str:
    """The URL of the MCP server the deployment lists as ``name``; EgressDenied for any other."""
    url = (config.get("mcp_servers") or {}).get(name)
    if not isinstance(url, str):
        raise EgressDenied(f"MCP server {name!r} is not listed in the deployment's mcp_servers")
    return url


def call(policy: AddressPolicy, name: str, url: str, operation: str, tool: str = "",
         arguments: dict[str, Any] | None = None, *, timeout_s: float = MCP_TIMEOUT_S) -> Any:
    """List the server's tools, or call one; blocking (on the activation's thread, in a loop of its own)."""
    try:
        return asyncio.run(asyncio.wait_for(_call(policy, url, operation, tool, arguments or {}, timeout_s),
                                            timeout_s))
    except TimeoutError:
        raise EgressTimeout(f"MCP server {name!r} did not answer in {timeout_s:.0f} s") from None
    except Exception as exc:
        refused = _edgenode_error(exc)
        if refused is not None:
            raise refused from None
        raise EgressFailed(f"MCP server {name!r}: {_describe(exc)}") from None


async def _call(policy: AddressPolicy, url: str, operation: str, tool: str, arguments: dict[str, Any],
                timeout_s: float) -> Any:
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async with mcp_http_client(policy, timeout_s) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, cache=None, read_timeout_seconds=timeout_s) as client:
            if operation == "list_tools":
                listed = await client.list_tools()
                return [{"name": t.name, "description": t.description or "", "input_schema": t.input_schema}
                        for t in listed.tools]
            result = await client.call_tool(tool, arguments)
            content = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
            return {"content": content,
                    "text": "".join(b.get("text", "") for b in content if b.get("type") == "text"),
                    "structured": result.structured_content, "is_error": bool(result.is_error)}


def _edgenode_error(exc: BaseException, depth: int = 0) -> EdgenodeError | None:
    """The node's own refusal (an egress denial) inside what the SDK raised, if any."""
    if isinstance(exc, EdgenodeError):
        return exc
    if depth > 8:
        return None
    linked: list[BaseException | None] = [exc.__cause__, exc.__context__]
    if isinstance(exc, BaseExceptionGroup):
        linked = [*exc.exceptions, *linked]
    for inner in linked:
        if inner is not None and inner is not exc:
            found = _edgenode_error(inner, depth + 1)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
