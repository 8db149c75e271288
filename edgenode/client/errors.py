"""The client's exceptions: one per error code the node reports, mirrored from ``edgenode.errors``.

The node answers every failure with ``{"error": {"code", "message", "id", ...}}``. Each
``EdgenodeError`` subclass of the node has a client twin here with the same name, code,
status and place in the hierarchy (``SandboxNotFound`` is a ``NotFound``), built from the
node's own list so the two can never drift. Structured details (``retry_after``, ``field``,
``limit_ms``, ``output``, ...) are attributes of the exception::

    try:
        client.sandboxes.get("nope")
    except NotFound as exc:
        print(exc.code, exc.request_id)   # sandbox_not_found 3f9c0a7d21b4e8c6
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import httpx

from edgenode import errors as _node


class EdgenodeClientError(Exception):
    """A failure the node reported (or, as ``NodeUnreachable``, could not report)."""

    #: The node's error code; an instance keeps the code it was raised with, even one this client does not know.
    code: str = "internal"
    #: The HTTP status the node answers this error with.
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 request_id: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.http_status = status if status is not None else self.status
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})

    def __getattr__(self, name: str) -> Any:
        # Structured fields of the node's error body (retry_after, field, limit, output, ...).
        details = self.__dict__.get("details") or {}
        if name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __str__(self) -> str:
        suffix = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{suffix}"


class NodeUnreachable(EdgenodeClientError):
    """The node could not be reached, or the connection failed before it answered."""

    code = "unreachable"
    status = 0


class NodeTimeout(NodeUnreachable):
    """The node did not answer within the client's timeout."""

    code = "client_timeout"


def transport_error(url: str, exc: httpx.TransportError, what: str | None = None,
                    timeout: float | None = None) -> NodeUnreachable:
    """The client's exception for a request (``what``, such as ``PUT /v1/workers/w``) that got no answer.

    A connection that never opened is ``NodeUnreachable``; an answer that did not come within the
    read ``timeout`` is ``NodeTimeout``, which says the node may still be working on the request.
    """
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return NodeUnreachable(f"cannot reach the node at {url}: no connection in time ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        return NodeTimeout(f"the node at {url} did not answer {what or 'the request'}{within}; it may still be "
                           "working on it (give more time with a longer timeout)")
    return NodeUnreachable(f"cannot reach the node at {url}: {exc}")


def _mirror(node_class: type[_node.EdgenodeError]) -> type[EdgenodeClientError]:
    """The client twin of a node error class (made once, with its parents' twins as bases)."""
    if node_class in _BY_CLASS:
        return _BY_CLASS[node_class]
    if node_class is _node.EdgenodeError:
        return EdgenodeClientError
    bases = tuple(_mirror(b) for b in node_class.__bases__ if issubclass(b, _node.EdgenodeError))
    twin = type(node_class.__name__, bases, {
        "code": node_class.code, "status": node_class.status, "__doc__": node_class.__doc__,
        "__module__": __name__, "__qualname__": node_class.__name__,
    })
    _BY_CLASS[node_class] = twin
    return twin


def _walk(cls: type[_node.EdgenodeError]) -> list[type[_node.EdgenodeError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _walk(sub))]


_BY_CLASS: dict[type[_node.EdgenodeError], type[EdgenodeClientError]] = {}
#: Every code the node reports -> its exception class.
BY_CODE: dict[str, type[EdgenodeClientError]] = {}
for _cls in _walk(_node.EdgenodeError)[1:]:
    BY_CODE.setdefault(_cls.code, _mirror(_cls))
#: The class for a status when the code is one this client does not know (a newer node).
_BY_STATUS: dict[int, type[EdgenodeClientError]] = {
    cls.status: cls for cls in reversed(list(BY_CODE.values())) if cls.code in {
        "bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed", "conflict",
        "payload_too_large", "unsupported_media_type", "too_many_requests", "unavailable", "internal",
        "version_mismatch", "wall_limit", "invalid_response"}
}

# The classes a caller most often catches, by name (every other one: ``errors.<NodeClassName>``).
BadRequest = _mirror(_node.BadRequest)
InvalidJson = _mirror(_node.InvalidJson)
ValidationFailed = _mirror(_node.ValidationFailed)
Unauthorized = _mirror(_node.Unauthorized)
Forbidden = _mirror(_node.Forbidden)
NotFound = _mirror(_node.NotFound)
Conflict = _mirror(_node.Conflict)
PayloadTooLarge = _mirror(_node.PayloadTooLarge)
Overloaded = _mirror(_node.Overloaded)
Unavailable = _mirror(_node.Unavailable)
Internal = _mirror(_node.Internal)
BuildFailed = _mirror(_node.BuildFailed)
IsolateError = _mirror(_node.IsolateError)
GuestException = _mirror(_node.GuestException)
CpuLimitExceeded = _mirror(_node.CpuLimitExceeded)
WallLimitExceeded = _mirror(_node.WallLimitExceeded)
MemoryLimitExceeded = _mirror(_node.MemoryLimitExceeded)
VersionMismatch = _mirror(_node.VersionMismatch)
SqlError = _mirror(_node.SqlError)
RunStateConflict = _mirror(_node.RunStateConflict)


def __getattr__(name: str) -> type[EdgenodeClientError]:
    """Every other node error class by its name: ``errors.SandboxNotFound``, ``errors.ParentMoved``, ..."""
    for node_class, twin in _BY_CLASS.items():
        if node_class.__name__ == name:
            return twin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_for(code: str, status: int) -> type[EdgenodeClientError]:
    """The exception class for an error ``code`` (or, for an unknown code, for the HTTP ``status``)."""
    return BY_CODE.get(code) or _BY_STATUS.get(status) or EdgenodeClientError


def node_error(response: httpx.Response) -> EdgenodeClientError | None:
    """The exception a response's JSON error body stands for, or None if it is not the node's error shape."""
    try:
        body = json.loads(response.content)
        error = body["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    details = {k: v for k, v in error.items() if k not in ("code", "message", "id")}
    if "retry_after" not in details and response.headers.get("retry-after", "").isdigit():
        details["retry_after"] = int(response.headers["retry-after"])
    return error_for(code, response.status_code)(message, code=code, status=response.status_code,
                                                 request_id=error.get("id"), details=details)


def raise_for_error(response: httpx.Response) -> None:
    """Raise the matching exception if ``response`` is an error; return quietly otherwise."""
    if not response.is_error:
        return
    exc = node_error(response)
    if exc is None:
        text = response.text[:500] if response.content else response.reason_phrase
        exc = error_for("", response.status_code)(f"HTTP {response.status_code}: {text}",
                                                  status=response.status_code,
                                                  request_id=response.headers.get("x-request-id"))
    raise exc
