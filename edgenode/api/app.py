"""Build the Starlette app of a node from every capability's route module."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.convertors import PathConvertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgenode.api import agents, artifacts, cluster, core, jobs, sandboxes, state, workers
from edgenode.api.errors import on_edgenode_error, on_http_exception, on_unexpected
from edgenode.api.middleware import EdgeMiddleware
from edgenode.api.parsing import guard_params
from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from edgenode.node import Node

#: Route modules, each with ``routes`` and optionally ``public`` (paths or "prefix/" that skip
#: bearer auth because they check their own credentials). Capabilities add theirs here.
#: Path prefixes of the routes matched first (no other route starts with them).
HOT_PREFIXES = ("/w/", "/p/")
ROUTE_MODULES: list[ModuleType] = [core, jobs, cluster, artifacts, agents, sandboxes, state, workers]


def build_app(node: Node, *, on_ready: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """The ASGI app serving ``node``; its lifespan starts and stops the node."""

    # MCP (streamable HTTP) at /mcp, behind the same middleware and bearer auth as every route.
    # Imported here: the MCP tools use this package's error bodies, so a top-level import would be circular.
    from edgenode.mcp import MCP_PATH, McpEndpoint

    mcp = McpEndpoint(node)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            async with mcp.running():
                if on_ready is not None:
                    await on_ready()
                yield
        finally:
            await node.stop()

    routes = [_guarded(route) for module in ROUTE_MODULES for route in module.routes]
    # Worker invocations are the hot path and their prefixes are theirs alone: matched first,
    # they skip a regex test per other route (about 100) on every request.
    routes.sort(key=lambda route: not getattr(route, "path", "").startswith(HOT_PREFIXES))
    routes.append(Route(MCP_PATH, mcp, include_in_schema=False))
    public = [p for module in ROUTE_MODULES for p in getattr(module, "public", ())]
    middleware = [Middleware(EdgeMiddleware, auth=node.auth, metrics=node.metrics, public=public,
                             admission=node.admission)]
    if node.config.sandboxes.ports_host:
        middleware.insert(0, Middleware(PortHosts, suffix=node.config.sandboxes.ports_host))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            EdgenodeError: on_edgenode_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.node = node
    return app


class PortHosts:
    """Requests for ``PORT-ID.SUFFIX`` go to that sandbox port, whatever their path.

    With a bearer token they take the owner's route (``/v1/sandboxes/sb_ID/ports/PORT/...``), without
    one the public route (``/sp/sb_ID/PORT/...``, served only for a public port). Every path on such a
    host is the sandbox's, so a page there can never reach the node's own API on its origin.
    """

    def __init__(self, app: ASGIApp, *, suffix: str) -> None:
        self.app = app
        self.pattern = re.compile(rf"([0-9]{{1,5}})-([0-9a-f]{{16}})\.{re.escape(suffix.strip('.').lower())}"
                                  r"(?::[0-9]{1,5})?")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1").lower()
            match = self.pattern.fullmatch(host)
            if match is not None:
                port, sandbox = match.group(1), "sb_" + match.group(2)
                with_token = any(k == b"authorization" for k, _ in scope["headers"])
                prefix = f"/v1/sandboxes/{sandbox}/ports/{port}" if with_token else f"/sp/{sandbox}/{port}"
                scope = {**scope, "path": prefix + scope["path"],
                         "raw_path": prefix.encode() + (scope.get("raw_path") or scope["path"].encode())}
        await self.app(scope, receive, send)


def _guarded(route: BaseRoute) -> BaseRoute:
    """``route`` with its query and path parameters checked by the parsing rules before it runs."""
    if isinstance(route, Route) and not getattr(route.app, "edgenode_guarded", False):
        path_like = {name for name, conv in route.param_convertors.items() if isinstance(conv, PathConvertor)}
        route.app = guard_params(route.app, path_like)
    return route
