"""Request and Response: the plain objects a handler sees and returns."""

from __future__ import annotations

import json as _json
from typing import Any


class Request:
    """An HTTP request: ``method``, ``path``, ``query`` (dict), ``headers`` (lower-case dict), ``body`` (bytes)."""

    def __init__(self, method: str, path: str, query: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.method = method
        self.path = path
        self.query = dict(query or {})
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = bytes(body)

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text."""
        return self.body.decode(encoding)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An HTTP response; ``body`` may be bytes or str (sent as UTF-8)."""

    def __init__(self, body: bytes | str | None = b"", status: int = 200,
                 headers: dict[str, Any] | None = None) -> None:
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        if isinstance(body, str):
            body = body.encode("utf-8")
            self.headers.setdefault("content-type", "text/plain; charset=utf-8")
        elif body is None:
            body = b""
        elif not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"a Response body is str or bytes, not {type(body).__name__}")
        self.body = bytes(body)
        self.status = int(status)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, Any] | None = None) -> Response:
        """A JSON response."""
        merged: dict[str, Any] = {"content-type": "application/json"}
        merged.update({str(k).lower(): v for k, v in (headers or {}).items()})
        return cls(_json.dumps(data, separators=(",", ":")).encode("utf-8"), status, merged)

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text (handy for fetch results)."""
        return self.body.decode(encoding)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300


def to_response(value: Any) -> Response:
    """Turn whatever a handler returned into a Response."""
    if isinstance(value, Response):
        return value
    if value is None:
        return Response(b"", 204)
    if isinstance(value, str):
        return Response(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(bytes(value), headers={"content-type": "application/octet-stream"})
    if isinstance(value, (dict, list)):
        return Response.json(value)
    raise TypeError(f"a handler returns Response, str, bytes, dict or list, not {type(value).__name__}")
