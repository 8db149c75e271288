"""Turn exceptions into ``{"error": {"code", "message", "id", ...}}`` responses."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from edgenode.api.parsing import dumps
from edgenode.errors import EdgenodeError, Internal, MethodNotAllowed, NotFound
from edgenode.store.faults import storage_fault

log = logging.getLogger("edgenode.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def error_body(exc: EdgenodeError, request_id: str) -> bytes:
    """The JSON body for ``exc``; structured details sit beside code, message and id."""
    error = {"code": exc.code, "message": exc.message, "id": request_id}
    for key, value in exc.details.items():
        if value is not None and key not in error:
            error[key] = value
    return dumps({"error": error})


def error_response(exc: EdgenodeError, request: Request) -> Response:
    """A JSON error response with the exception's status and headers."""
    request_id = request.scope.get("edgenode.request_id", "-")
    return Response(
        error_body(exc, request_id), status_code=exc.status, headers=exc.headers(), media_type="application/json"
    )


async def on_edgenode_error(request: Request, exc: Exception) -> Response:
    """Map an EdgenodeError to its status and JSON body; log server-side failures."""
    assert isinstance(exc, EdgenodeError)
    if exc.status >= 500:
        log.warning("request failed", extra={"code": exc.code, "error": exc.message})
    return error_response(exc, request)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Give the router's own 404 and 405 (and any other HTTPException) the JSON error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        mapped: EdgenodeError = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        response = error_response(mapped, request)
        response.headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
        return response
    else:
        mapped = EdgenodeError(str(exc.detail))
        mapped.status = exc.status_code  # type: ignore[misc]
        mapped.code = _HTTP_CODES.get(exc.status_code, "http_error")  # type: ignore[misc]
    return error_response(mapped, request)


def _allowed_methods(request: Request) -> set[str]:
    """Methods of every route whose path matches (one path may have a route per method)."""
    allowed: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    return allowed


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: log it with its traceback and answer 500 without internals.

    A full disk or an I/O error that a capability did not name itself is no bug: it is
    answered 507 (or 503) like the store's own.
    """
    fault = storage_fault(exc, request.app.state.node.data_dir, "data directory")
    if fault is not None:
        log.warning("disk fault", extra={"error": f"{type(exc).__name__}: {exc}"})
        return error_response(fault, request)
    log.exception("unhandled error", exc_info=exc)
    return error_response(Internal(f"internal error ({type(exc).__name__}); see the node's log"), request)
