"""Exposed ports: HTTP and WebSocket through the node into a server inside a sandbox, with the owner's token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from edgenode.client.websocket import WebSocket, WebSocketClosed
from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess

#: A server on 127.0.0.1:8000 inside the sandbox: GET answers the headers it got (and sets a cookie);
#: /ws speaks WebSocket and echoes text frames upper-cased (a minimal server, standard library only).
SERVER = r'''
import base64, hashlib, http.server, json, struct

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ws":
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept.decode())
            self.end_headers()
            self.wfile.flush()
            while True:
                head = self.rfile.read(2)
                if len(head) < 2 or head[0] & 0x0F == 8:
                    return
                size = head[1] & 0x7F
                if size == 126:
                    size = struct.unpack(">H", self.rfile.read(2))[0]
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(size)))
                out = data.decode().upper().encode()
                self.wfile.write(bytes([0x81, len(out)]) + out)
                self.wfile.flush()
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=sandbox")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[::-1])

http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node


@pytest.fixture(scope="module")
def served(admin: httpx.Client) -> Iterator[str]:
    """A sandbox running SERVER on port 8000."""
    sid = admin.post("/v1/sandboxes", json={}).json()["id"]
    assert admin.put(f"/v1/sandboxes/{sid}/files/server.py", content=SERVER).status_code == 201
    assert admin.post(f"/v1/sandboxes/{sid}/processes", json={"cmd": ["python3", "server.py"]}).status_code == 201
    ready = run(admin, sid, "curl -s --retry 50 --retry-delay 0 --retry-connrefused -o /dev/null -w '%{http_code}' "
                            "http://127.0.0.1:8000/")
    assert ready["stdout"] == "200", ready
    yield sid
    admin.delete(f"/v1/sandboxes/{sid}")


def _token(admin: httpx.Client, tenant: str) -> str:
    return str(admin.post("/v1/tokens", json={"tenant": tenant}).json()["token"])


def test_an_exposed_port_answers_its_owner_only(admin: httpx.Client, node: NodeProcess, served: str) -> None:
    base = f"/v1/sandboxes/{served}/ports/8000/"
    assert_error(admin.get(base + "hello"), 404, "port_not_exposed")  # off until exposed
    exposed = admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000})
    assert exposed.status_code == 201, exposed.text
    assert exposed.json()["path"] == base and exposed.json()["url"] == node.url + base
    answer = admin.get(base + "hello?x=1", headers={"x-custom": "yes"})
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["path"] == "/hello?x=1" and seen["headers"]["x-custom"] == "yes"
    assert "authorization" not in seen["headers"], "the owner's token stays at the node"
    assert "set-cookie" not in answer.headers, "a sandbox sets no cookies on the node's origin"
    assert admin.post(base + "echo", content=b"abc").content == b"cba"
    with httpx.Client(base_url=node.url) as anonymous:
        assert_error(anonymous.get(base + "hello"), 401, "unauthorized")
    with node.client(_token(admin, "eve")) as eve:
        assert_error(eve.get(base + "hello"), 404, "sandbox_not_found")
    listed = admin.get(f"/v1/sandboxes/{served}/ports").json()["ports"]
    assert [p["port"] for p in listed] == [8000]
    # A private port is not served under the public prefix.
    with httpx.Client(base_url=node.url) as anonymous:
        assert_error(anonymous.get(f"/sp/{served}/8000/hello"), 404, "port_not_exposed")
    assert admin.delete(f"/v1/sandboxes/{served}/ports/8000").status_code == 204
    assert_error(admin.get(base + "hello"), 404, "port_not_exposed")
    assert_error(admin.delete(f"/v1/sandboxes/{served}/ports/8000"), 404, "port_not_exposed")


def test_an_exposed_port_carries_websockets(admin: httpx.Client, node: NodeProcess, served: str) -> None:
    assert admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000}).status_code == 201
    url = node.url.replace("http://", "ws://") + f"/v1/sandboxes/{served}/ports/8000/ws"
    sock = WebSocket(url, headers={"authorization": f"Bearer {node.admin_token}"})
    try:
        sock.send_text("hello")
        assert sock.recv() == "HELLO"
        sock.send_text("again")
        assert sock.recv() == "AGAIN"
    finally:
        sock.close()
    with pytest.raises(WebSocketClosed):
        WebSocket(url).recv()
    with pytest.raises(WebSocketClosed):
        WebSocket(url, headers={"authorization": f"Bearer {_token(admin, 'eve2')}"}).recv()


def test_a_public_port_needs_no_token_and_runs_in_an_opaque_origin(admin: httpx.Client, node: NodeProcess,
                                                                   served: str) -> None:
    exposed = admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000, "public": True}).json()
    assert exposed["public_path"] == f"/sp/{served}/8000/"
    with httpx.Client(base_url=node.url) as anonymous:
        answer = anonymous.get(exposed["public_path"] + "page")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-security-policy"] == "sandbox"
    assert "set-cookie" not in answer.headers
    admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000, "public": False})
    with httpx.Client(base_url=node.url) as anonymous:
        assert_error(anonymous.get(exposed["public_path"] + "page"), 404, "port_not_exposed")


def test_an_exposed_port_has_a_host_of_its_own(admin: httpx.Client, node: NodeProcess, served: str) -> None:
    # The node is configured with ports_host = "sbx.test": PORT-ID.sbx.test is that port, every path
    # on it the sandbox's (the node's own API is not reachable from that origin).
    exposed = admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000}).json()
    node_port = node.url.rsplit(":", 1)[1]
    host = f"8000-{served.removeprefix('sb_')}.sbx.test:{node_port}"
    assert exposed["host_url"] == f"http://{host}/"
    answer = admin.get("/hello?x=2", headers={"host": host})
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/hello?x=2"
    assert admin.get("/v1/whoami", headers={"host": host}).json()["path"] == "/v1/whoami"  # the sandbox's path
    with httpx.Client(base_url=node.url) as anonymous:  # private: no token, no answer
        assert_error(anonymous.get("/hello", headers={"host": host}), 404, "port_not_exposed")
        admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000, "public": True})
        public = anonymous.get("/page", headers={"host": host})
        assert public.status_code == 200 and public.headers["content-security-policy"] == "sandbox"
    admin.post(f"/v1/sandboxes/{served}/ports", json={"port": 8000, "public": False})
    with node.client(_token(admin, "eve3")) as eve:
        assert_error(eve.get("/hello", headers={"host": host}), 404, "sandbox_not_found")
    # Any other host is the node's own.
    assert admin.get("/v1/whoami", headers={"host": f"8000-{served.removeprefix('sb_')}.other.test"}).json()[
        "tenant"] == "default"


def test_ports_refuse_bad_input(admin: httpx.Client, served: str) -> None:
    url = f"/v1/sandboxes/{served}/ports"
    for body in ({"port": 0}, {"port": 70000}, {"port": "80"}, {"port": True}, {}, {"port": 80, "extra": 1},
                 {"port": 80, "public": "yes"}):
        assert_error(admin.post(url, json=body), 400, "validation_failed")
    assert_error(admin.get(f"/v1/sandboxes/{served}/ports/abc/x"), 400, "validation_failed")
    # Exposed, but nothing listens there: a clear 502, not a hang.
    assert admin.post(url, json={"port": 9}).status_code == 201
    assert_error(admin.get(f"/v1/sandboxes/{served}/ports/9/"), 502, "port_unreachable")
