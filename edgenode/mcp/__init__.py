"""An MCP server for the node: code mode, sandboxes, repositories and agent runs as MCP tools."""

from __future__ import annotations

from edgenode.mcp.server import MCP_PATH, McpEndpoint, build_server

__all__ = ["MCP_PATH", "McpEndpoint", "build_server"]
