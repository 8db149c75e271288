"""Helpers every route module uses: the node, the caller, bodies and JSON replies.

Route modules only translate: parse the request with these helpers, call the
capability, return ``json(...)``. Errors are raised as ``edgenode.errors`` and
turned into JSON bodies by the app's exception handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from edgenode.api.parsing import dumps, field, parse_json
from edgenode.auth import Principal
from edgenode.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType
from edgenode.streams import read_limited
from edgenode.threads import CPU

if TYPE_CHECKING:
    from edgenode.node import Node

__all__ = ["TENANT_HEADER", "admin", "field", "json", "node_of", "principal", "read_body", "read_json"]

#: Bodies up to this size are parsed on the event loop; bigger ones on a thread.
_PARSE_INLINE_BYTES = 64 * 1024

#: Header an admin token uses to act for another tenant.
TENANT_HEADER = "x-edgenode-tenant"


def node_of(request: Request) -> Node:
    """The node serving this request."""
    node: Node = request.app.state.node
    return node


def principal(request: Request) -> Principal:
    """The authenticated caller (set by the auth middleware); acting-for applied for admins."""
    found: Principal | None = request.scope.get("edgenode.principal")
    if found is None:
        # Only public routes skip the middleware; they must not ask for a principal.
        raise RuntimeError(f"route {request.url.path} is public but asked for a principal")
    return found


def admin(request: Request) -> Principal:
    """The caller, who must hold an admin token."""
    p = principal(request)
    p.require_admin()
    return p


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (default: the node's max body) with 413."""
    if limit is None:
        limit = node_of(request).config.http.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes", limit=limit)
    return await read_limited(request.stream(), limit)


async def read_json(request: Request, limit: int | None = None, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object, by the parsing rules of ``edgenode.api.parsing``; 413 beyond ``limit``.

    With ``optional``, an empty body is ``{}``.
    """
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in {"application/json", "", "text/json"} and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")
    body = await read_body(request, limit)
    if not body.strip():
        if optional:
            return {}
        raise InvalidJson("request body is empty; expected a JSON object")
    # A big body takes milliseconds to parse and check: off the event loop, so other requests go on.
    data = parse_json(body) if len(body) < _PARSE_INLINE_BYTES else await CPU.run(parse_json, body)
    if not isinstance(data, dict):
        raise InvalidJson(f"expected a JSON object, got {type(data).__name__}")
    return data


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact, UTF-8, never NaN or Infinity)."""
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")
