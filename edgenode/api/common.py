"""Helpers every route module uses: the node, the caller, bodies and JSON replies.

Route modules only translate: parse the request with these helpers, call the
capability, return ``json(...)``. Errors are raised as ``edgenode.errors`` and
turned into JSON bodies by the app's exception handlers.
"""

from __future__ import annotations

import json as _json
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from edgenode.auth import Principal
from edgenode.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from edgenode.streams import read_limited

if TYPE_CHECKING:
    from edgenode.node import Node

T = TypeVar("T")

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
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes", limit=limit)
    return await read_limited(request.stream(), limit)


async def read_json(request: Request, limit: int | None = None) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else, 413 beyond ``limit``."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in {"application/json", "", "text/json"} and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidJson("request body is empty; expected a JSON object")
    try:
        data = _json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidJson(f"expected a JSON object, got {type(data).__name__}")
    return data


def field(data: dict[str, Any], name: str, kind: type[T] | tuple[type, ...], default: Any = ..., *,
          required: bool = False) -> Any:
    """``data[name]`` checked against ``kind``; 400 naming the field when missing or mistyped."""
    if name not in data or data[name] is None:
        if required or default is ...:
            raise ValidationFailed(f"field {name!r} is required", field=name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ValidationFailed(f"field {name!r} must be {_kind_names(kinds)}", field=name)
    if not isinstance(value, kinds):
        raise ValidationFailed(f"field {name!r} must be {_kind_names(kinds)}", field=name)
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
             list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact, UTF-8)."""
    body = _json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")
