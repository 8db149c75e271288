"""Egress: no network by default; with a policy, only allow-listed hosts through the proxy (servers on loopback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.sandboxes.conftest import run
from tests.support import NodeProcess

# 127.0.0.2 is loopback too, but not in the sandbox's no_proxy list (which keeps 127.0.0.1 for
# servers the sandbox runs itself), so requests to it go through the proxy as a remote host would.
# The module's node lets egress reach 127.0.0.2 only (an operator network); 127.0.0.1 stays refused.
HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("node"), env={"EDGENODE_EGRESS_ALLOW_NETWORKS": f"{HOST}/32"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def on_loopback() -> Iterator[int]:
    """A server on 127.0.0.1, the address ``localhost`` resolves to, outside the operator network."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"hello from {self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on loopback: one to allow, one to leave out."""
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer((HOST, 0), _Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield started[0].server_address[1], started[1].server_address[1]
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def allowed_sandbox(admin: httpx.Client, servers: tuple[int, int]) -> Iterator[str]:
    allowed, _ = servers
    created = admin.post("/v1/sandboxes", json={"network": {"allow": [f"{HOST}:{allowed}", "*.example.invalid"]}})
    assert created.status_code == 201, created.text
    assert created.json()["network"]["allow"][0] == f"{HOST}:{allowed}"
    yield created.json()["id"]
    admin.delete(f"/v1/sandboxes/{created.json()['id']}")


def test_allowed_host_is_reachable_with_curl(admin: httpx.Client, allowed_sandbox: str,
                                             servers: tuple[int, int]) -> None:
    allowed, _ = servers
    result = run(admin, allowed_sandbox, f"curl -sS http://{HOST}:{allowed}/x")
    assert result["stdout"] == f"hello from {allowed} /x", result


def test_post_bodies_go_through(admin: httpx.Client, allowed_sandbox: str, servers: tuple[int, int]) -> None:
    allowed, _ = servers
    result = run(admin, allowed_sandbox, f"curl -sS -d payload-123 http://{HOST}:{allowed}/echo")
    assert result["stdout"] == "payload-123"
    chunked = run(admin, allowed_sandbox, f"printf chunky | curl -sS -H 'Transfer-Encoding: chunked' "
                                          f"--data-binary @- http://{HOST}:{allowed}/echo")
    assert chunked["stdout"] == "chunky", chunked


def test_connect_tunnel_to_allowed_host(admin: httpx.Client, allowed_sandbox: str, servers: tuple[int, int]) -> None:
    allowed, _ = servers
    result = run(admin, allowed_sandbox, f"curl -sS --proxytunnel http://{HOST}:{allowed}/tunnel")
    assert result["stdout"] == f"hello from {allowed} /tunnel", result


def test_python_urllib_honours_the_proxy(admin: httpx.Client, allowed_sandbox: str,
                                         servers: tuple[int, int]) -> None:
    allowed, _ = servers
    result = run(admin, allowed_sandbox, ["python3", "-c",
                                          f"import urllib.request; print(urllib.request.urlopen("
                                          f"'http://{HOST}:{allowed}/py').read().decode())"])
    assert result["stdout"] == f"hello from {allowed} /py\n"


def test_host_outside_the_allow_list_is_refused(admin: httpx.Client, allowed_sandbox: str,
                                                servers: tuple[int, int]) -> None:
    _, denied = servers
    plain = run(admin, allowed_sandbox, f"curl -s -o /dev/null -w '%{{http_code}}' http://{HOST}:{denied}/")
    assert plain["stdout"] == "403"
    tunnel = run(admin, allowed_sandbox, f"curl -sS --proxytunnel http://{HOST}:{denied}/")
    assert tunnel["exit_code"] != 0 and "403" in tunnel["stderr"]
    info = admin.get(f"/v1/sandboxes/{allowed_sandbox}").json()
    assert info["egress"]["denied"] >= 2


def test_direct_connections_bypassing_the_proxy_fail(admin: httpx.Client, allowed_sandbox: str,
                                                     servers: tuple[int, int]) -> None:
    allowed, _ = servers
    result = run(admin, allowed_sandbox, f"curl -sS --noproxy '*' http://{HOST}:{allowed}/")
    assert result["exit_code"] != 0 and "hello" not in result["stdout"]


def test_names_resolving_to_loopback_are_refused(admin: httpx.Client, on_loopback: int) -> None:
    # "localhost:PORT" is allow-listed by name and a server listens where it resolves (127.0.0.1),
    # but the address is outside the node's egress policy: the proxy refuses after resolving.
    created = admin.post("/v1/sandboxes", json={"network": {"allow": [f"localhost:{on_loopback}",
                                                                      f"127.0.0.1:{on_loopback}"]}}).json()
    try:
        for url in (f"http://localhost:{on_loopback}/", f"http://127.0.0.1:{on_loopback}/"):
            result = run(admin, created["id"], f"curl -s -w ' %{{http_code}}' --noproxy '' -x $http_proxy {url}")
            assert result["stdout"].endswith(" 502") and "egress policy" in result["stdout"], result
            assert "hello" not in result["stdout"]
        tunnel = run(admin, created["id"], f"curl -sS --proxytunnel http://localhost:{on_loopback}/")
        assert tunnel["exit_code"] != 0 and "hello" not in tunnel["stdout"]
    finally:
        admin.delete(f"/v1/sandboxes/{created['id']}")


_SMUGGLE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(sys.argv[1].encode().decode("unicode_escape").encode("latin-1"))
s.settimeout(30)
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode("latin-1"))
"""


@pytest.mark.parametrize("raw", [
    # A second request hidden behind bare LF line ends: the node's parser would see two requests.
    "GET http://edgenode.internal/healthz HTTP/1.1\\r\\nHost: edgenode.internal\\nContent-Length: 0\\n\\n"
    "GET /v1/whoami HTTP/1.1\\nHost: x\\r\\n\\r\\n",
    "GET http://edgenode.internal/healthz HTTP/1.1\\r\\nX: a\\rGET /metrics\\r\\n\\r\\n",
    "GET http://edgenode.internal/healthz HTTP/1.1\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n",
    "GET http://edgenode.internal/healthz HTTP/1.1\\r\\n Folded: x\\r\\n\\r\\n",
])
def test_smuggled_requests_are_refused(admin: httpx.Client, raw: str) -> None:
    created = admin.post("/v1/sandboxes", json={"network": {"allow": ["node"]}}).json()
    try:
        result = run(admin, created["id"], ["python3", "-c", _SMUGGLE, raw])
        assert result["stdout"].startswith("HTTP/1.1 400"), result
        assert "tenant" not in result["stdout"] and "edgenode_" not in result["stdout"]
        # The same grant still serves a well-formed request.
        ok = run(admin, created["id"], ["python3", "-c", _SMUGGLE,
                                        "GET http://edgenode.internal/healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"])
        assert ok["stdout"].startswith("HTTP/1.1 200") and '"status":"ok"' in ok["stdout"], ok
    finally:
        admin.delete(f"/v1/sandboxes/{created['id']}")


def test_node_grant_opens_only_git_and_healthz(admin: httpx.Client, node: NodeProcess) -> None:
    created = admin.post("/v1/sandboxes", json={"network": {"allow": ["node"]}}).json()
    try:
        sid = created["id"]
        assert run(admin, sid, "echo $EDGENODE_URL")["stdout"] == "http://edgenode.internal\n"
        health = run(admin, sid, "curl -sS $EDGENODE_URL/healthz")
        assert f'"node":"{node.node_id}"' in health["stdout"], health
        # The node's own URL works as well as the alias.
        direct = run(admin, sid, f"curl -sS --noproxy '' {node.url}/healthz")
        assert node.node_id in direct["stdout"]
        refused = run(admin, sid, "curl -s -w ' %{http_code}' $EDGENODE_URL/v1/status")
        assert refused["stdout"].endswith(" 403") and "edgenode egress proxy" in refused["stdout"]
        sneaky = run(admin, sid, "curl -s -w ' %{http_code}' --path-as-is $EDGENODE_URL/git/../v1/status")
        assert sneaky["stdout"].endswith(" 403")
        # /git/ paths reach the node itself (whatever it answers, it is not the proxy refusing).
        git = run(admin, sid, "curl -s -i $EDGENODE_URL/git/nothing.git/info/refs?service=git-upload-pack")
        assert "edgenode egress proxy" not in git["stdout"] and git["stdout"].startswith("HTTP/1.1")
        # No CONNECT to the node: only plain HTTP paths can be checked.
        host_port = node.url.removeprefix("http://")
        tunnel = run(admin, sid, f"curl -sS --proxytunnel --noproxy '' http://{host_port}/healthz")
        assert tunnel["exit_code"] != 0
    finally:
        admin.delete(f"/v1/sandboxes/{created['id']}")


def test_connections_per_sandbox_are_capped(admin: httpx.Client, allowed_sandbox: str) -> None:
    result = run(admin, allowed_sandbox, ["python3", "-c", """
import socket
held = [socket.create_connection(("127.0.0.1", 3128)) for _ in range(80)]
answers = []
for s in held:
    s.settimeout(0.05)
    try:
        answers.append(s.recv(20))
    except OSError:
        answers.append(b"")
print(sum(1 for a in answers if a.startswith(b"HTTP/1.1 503")))
"""])
    assert int(result["stdout"]) >= 80 - 64
    assert admin.get("/healthz").status_code == 200
