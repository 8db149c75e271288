"""A real MCP server on loopback, built with the official SDK, for agents to call.

Run as ``python -m tests.agents.mcp_server DIR``: it serves streamable HTTP at
``/mcp`` on an ephemeral port, writes its URL to ``DIR/url`` and appends one line
to ``DIR/calls`` per call of its ``record`` tool, so a test counts real calls.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings


def build(directory: Path) -> MCPServer:
    server: MCPServer = MCPServer("counter")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def record(key: str) -> str:
        """Record one call under ``key``; answers how many calls there were."""
        with open(directory / "calls", "a") as f:
            f.write(key + "\n")
        return f"recorded {key} ({len((directory / 'calls').read_text().split())} calls)"

    return server


def main() -> None:
    directory = Path(sys.argv[1])
    app = build(directory).streamable_http_app(
        stateless_http=True, json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    (directory / "url.tmp").write_text(f"http://127.0.0.1:{port}/mcp")
    (directory / "url.tmp").rename(directory / "url")
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
