"""The one ASGI middleware every request passes: request id, auth, admission, metrics, access log.

Authentication is deny-by-default: every path needs a bearer token unless it
starts with one of the app's public prefixes (those routes check their own
credentials, such as Git basic auth or the fleet signature). An authenticated request runs with
its tenant in ``threads.current_tenant`` (the bridges to threads queue by it) and is admitted by
the tenant's share of requests in flight (``edgenode.admission``), which also counts them for
the tenant's deletion to wait for.

A request body the route did not read (a refusal before reading it: 401, 403, 415)
would make the server drop the keep-alive connection without saying so, and the
client's next request on it would fail. So a small unread body is read and dropped
once the answer is out, keeping the connection usable, and an answer to a larger
or unsized one says ``Connection: close``. A client that goes away before its
request is answered is logged as a disconnect and counted with status 499, not 500.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgenode.admission import Admission
from edgenode.api.common import TENANT_HEADER
from edgenode.api.errors import error_body
from edgenode.auth import Auth
from edgenode.errors import EdgenodeError
from edgenode.logs import request_id_var
from edgenode.metrics import Metrics
from edgenode.store import run_blocking
from edgenode.threads import current_tenant

log = logging.getLogger("edgenode.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
#: Largest unread request body that is read and dropped after the answer; beyond, the connection closes.
DRAIN_LIMIT_BYTES = 1024 * 1024
#: The status recorded for a request whose client went away before it was answered (nginx's choice).
CLIENT_CLOSED = 499


class RequestBody:
    """What the app has received of the request body, so an unread rest can be dealt with."""

    def __init__(self, receive: Receive, headers: dict[str, str]) -> None:
        self._receive = receive
        length = headers.get("content-length", "")
        self.length = int(length) if length.isascii() and length.isdigit() else None
        self.finished = "transfer-encoding" not in headers and not self.length
        #: receive() calls the app is waiting on (a streaming response listens for the disconnect).
        self.listening = 0

    async def receive(self) -> Message:
        """The app's receive, noting the end of the body and a disconnect."""
        self.listening += 1
        try:
            message = await self._receive()
        finally:
            self.listening -= 1
        if message["type"] == "http.disconnect":
            self.finished = True
        elif message["type"] == "http.request" and not message.get("more_body", False):
            self.finished = True
        return message

    def drainable(self) -> bool:
        """Whether an unread rest is small enough to read and drop after the answer."""
        return self.length is not None and self.length <= DRAIN_LIMIT_BYTES and not self.listening

    async def drain(self) -> None:
        """Read and drop the rest of the body (at most ``DRAIN_LIMIT_BYTES``: its declared length)."""
        while not self.finished and not self.listening:
            await self.receive()


class EdgeMiddleware:
    """Request ids, bearer-token auth, Prometheus metrics and one access-log line per request."""

    def __init__(
        self, app: ASGIApp, *, auth: Auth, metrics: Metrics, public: Iterable[str],
        admission: Admission | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.public = tuple(public)
        self.admission = admission if admission is not None else Admission()

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
        body = RequestBody(receive, headers)
        drain = False
        admitted: str | None = None
        tenant_token = None

        async def send_wrapper(message: Message) -> None:
            nonlocal drain
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message = dict(message)
                extra = [(b"x-request-id", raw_id)]
                if not body.finished and not _closes(message.get("headers", [])):
                    drain = body.drainable()
                    if not drain:
                        extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body" and drain and not message.get("more_body", False):
                drain = False
                if not body.finished:
                    # The answer goes out whole first: a client may send its body only after reading it.
                    await send({**message, "more_body": True})
                    await body.drain()
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        try:
            path: str = scope["path"]
            if not self.is_public(path):
                try:
                    bearer = _bearer(headers.get("authorization", ""))
                    # A token seen in the last second is checked in memory; any other read off the loop.
                    found = self.auth.authenticate_cached(bearer)
                    principal = found if found is not None else await run_blocking(self.auth.authenticate, bearer)
                    principal = principal.acting_for(headers.get(TENANT_HEADER) or None)
                    # Counted while it runs; an admin (acting for a tenant or not) is never refused.
                    self.admission.enter(principal.tenant, limited=not principal.admin)
                    admitted = principal.tenant
                except EdgenodeError as exc:
                    await _send_error(send_wrapper, exc, request_id)
                    return
                scope["edgenode.principal"] = principal
                tenant_token = current_tenant.set(principal.tenant)
            try:
                await self.app(scope, body.receive, send_wrapper)
            except ClientDisconnect:
                # Nobody is left to answer; not a server error.
                status_holder["status"] = CLIENT_CLOSED
        finally:
            if admitted is not None:
                self.admission.leave(admitted)
            if tenant_token is not None:
                current_tenant.reset(tenant_token)
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            status = status_holder["status"]
            self.metrics.observe_request(scope["method"], template, status, elapsed)
            caller = scope.get("edgenode.principal")
            log.info(
                "client disconnected" if status == CLIENT_CLOSED else "request",
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


def _closes(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"connection" and b"close" in v.lower() for k, v in headers)


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
