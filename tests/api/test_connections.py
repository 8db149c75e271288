"""Keep-alive connections after early refusals, and clients that go away, against a real node.

The client here speaks HTTP/1.1 over a raw socket so it can force the interleaving that
otherwise happens by chance: the request's head reaches the node, the node refuses it
before reading the body, and only then does the body arrive.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from edgenode.api.middleware import DRAIN_LIMIT_BYTES
from tests.support import NodeProcess, wait_for

WAIT_S = 60.0


class Connection:
    """One keep-alive HTTP/1.1 connection, read response by response."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next whole response (its head and its content-length body); b"" status 0 if the node closed."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return 0, {}, b""
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tenant_token(node: NodeProcess) -> str:
    with node.client() as c:
        return str(c.post("/v1/tokens", json={"tenant": "acme"}).json()["token"])


def _head(method: str, path: str, token: str | None, length: int, ctype: str = "application/json") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: node\r\n{auth}Content-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


REFUSALS = [
    # (what, method, path, token, content type, status, code)
    ("peer route without a fleet secret", "POST", "/v1/peer/artifacts/announce", None, "application/json", 401,
     "peer_auth_failed"),
    ("bad bearer token", "POST", "/v1/tokens", "edn_nope", "application/json", 401, "unauthorized"),
    ("tenant token on an admin route", "POST", "/v1/tenants", "<tenant>", "application/json", 403, "forbidden"),
    ("wrong content type", "POST", "/v1/sandboxes", "<admin>", "text/plain", 415, "unsupported_media_type"),
    ("unknown route", "POST", "/v1/nothing-here", "<admin>", "application/json", 404, "not_found"),
    ("wrong method", "PATCH", "/v1/tokens", "<admin>", "application/json", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("what", "method", "path", "token", "ctype", "status", "code"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_the_connection_stays_usable_after_a_refusal_before_the_body(
        node: NodeProcess, tenant_token: str, what: str, method: str, path: str, token: str | None, ctype: str,
        status: int, code: str) -> None:
    token = {"<admin>": node.admin_token, "<tenant>": tenant_token}.get(token or "", token)
    body = b'{"namespaces": [], "name": "x", "tenant": "acme"}'
    conn = Connection(node.url)
    try:
        conn.send(_head(method, path, token, len(body), ctype))
        got, headers, answer = conn.response()
        assert got == status, answer
        assert code.encode() in answer
        assert headers.get("connection", "").lower() != "close"
        # The body comes only after the answer, then the next request on the same connection.
        conn.send(body)
        conn.send(f"GET /v1/whoami HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {node.admin_token}\r\n\r\n"
                  .encode())
        after, _, whoami = conn.response()
        assert after == 200, f"the node dropped the connection after the {status} ({what})"
        assert b'"admin": true' in whoami or b'"admin":true' in whoami
    finally:
        conn.close()


def test_a_refusal_of_a_large_unread_body_says_the_connection_closes(node: NodeProcess) -> None:
    conn = Connection(node.url)
    try:
        conn.send(_head("POST", "/v1/peer/artifacts/announce", None, DRAIN_LIMIT_BYTES + 1))
        got, headers, _ = conn.response()
        assert got == 401 and headers["connection"].lower() == "close"
    finally:
        conn.close()


def test_a_refusal_on_a_chunked_body_says_the_connection_closes(node: NodeProcess) -> None:
    conn = Connection(node.url)
    try:
        conn.send(b"POST /v1/tokens HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer edn_nope\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        got, headers, _ = conn.response()
        assert got == 401 and headers["connection"].lower() == "close"
    finally:
        conn.close()


def _metric(text: str, route: str, status: str) -> float:
    pattern = rf'edgenode_http_requests_total\{{[^}}]*route="{re.escape(route)}"[^}}]*status="{status}"[^}}]*\}} (\S+)'
    found = re.findall(pattern, text)
    return sum(float(v) for v in found)


@pytest.fixture
def metrics(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def test_a_client_gone_mid_body_is_a_disconnect_not_a_500(node: NodeProcess, metrics: httpx.Client) -> None:
    route = "/v1/sandboxes/{id}/exec"
    before_500 = _metric(metrics.get("/metrics").text, route, "500")
    conn = Connection(node.url)
    conn.send(_head("POST", "/v1/sandboxes/sb_whatever/exec", node.admin_token, 1000) + b'{"cmd": "ech')
    conn.close()
    wait_for(lambda: _metric(metrics.get("/metrics").text, route, "499") >= 1, timeout=WAIT_S,
             message="the disconnect to be counted")
    assert _metric(metrics.get("/metrics").text, route, "500") == before_500
    log = node.log()
    assert '"client disconnected"' in log
    assert "unhandled error" not in log
