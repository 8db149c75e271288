"""The one ASGI middleware every request passes: request id, auth, metrics, access log.

Authentication is deny-by-default: every path needs a bearer token unless it
starts with one of the app's public prefixes (those routes check their own
credentials, such as Git basic auth or the fleet signature).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgenode.api.common import TENANT_HEADER
from edgenode.api.errors import error_body
from edgenode.auth import Auth
from edgenode.errors import EdgenodeError
from edgenode.logs import request_id_var
from edgenode.metrics import Metrics

log = logging.getLogger("edgenode.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class EdgeMiddleware:
    """Request ids, bearer-token auth, Prometheus metrics and one access-log line per request."""

    def __init__(
        self, app: ASGIApp, *, auth: Auth, metrics: Metrics, public: Iterable[str]
    ) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.public = tuple(public)

    def is_public(self, path: str) -> bool:
        """Whether ``path`` skips bearer-token auth (it checks credentials itself, or has none)."""
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        scope["edgenode.request_id"] = request_id
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500}
        raw_id = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            path: str = scope["path"]
            if not self.is_public(path):
                try:
                    principal = self.auth.authenticate(_bearer(headers.get("authorization", "")))
                    principal = principal.acting_for(headers.get(TENANT_HEADER) or None)
                except EdgenodeError as exc:
                    await _send_error(send_wrapper, exc, request_id)
                    return
                scope["edgenode.principal"] = principal
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            status = status_holder["status"]
            self.metrics.observe_request(scope["method"], template, status, elapsed)
            caller = scope.get("edgenode.principal")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "tenant": getattr(caller, "tenant", None),
                },
            )
            request_id_var.reset(token)


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


async def _send_error(send: Send, exc: EdgenodeError, request_id: str) -> None:
    body = error_body(exc, request_id)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
