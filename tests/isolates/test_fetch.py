"""Outbound fetch: only to allowed hosts, at most ``subrequests`` per request, through the node's egress policy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.isolates.conftest import start_node
from tests.support import NodeProcess

#: The module's node lets fetches reach loopback, where the test servers listen.
LOOPBACK = {"EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8"}


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/set-cookie":
            self._reply(b"set", (("set-cookie", "session=bob-secret; Path=/"),))
        elif self.path == "/cookie":
            self._reply(f"cookie={self.headers.get('cookie')}".encode())
        elif self.path == "/redirect":
            self._reply(b"moved", (("location", "http://example.invalid/"),), status=302)
        elif self.path == "/trickle":
            # Headers at once, then a byte at a time: each read is quick, the whole never ends in time.
            self.send_response(200)
            self.send_header("content-length", "600")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        else:
            self._reply(f"upstream saw {self.path} from {self.headers.get('x-from')}".encode())

    def _reply(self, body: bytes, headers: tuple[tuple[str, str], ...] = (), status: int = 200) -> None:
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A real HTTP server on loopback for guests to fetch from."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def wnode(tmp_path_factory: pytest.TempPathFactory, worker_cache: Path) -> Iterator[NodeProcess]:
    """A node whose egress policy admits loopback (where the test servers are)."""
    proc = start_node(tmp_path_factory.mktemp("wnode"), worker_cache, **LOOPBACK)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def fetcher(admin: httpx.Client, kitchen_files: dict[str, str], upstream: str) -> str:
    port = upstream.rsplit(":", 1)[1]
    r = admin.put("/v1/workers/fetcher", json={
        "files": kitchen_files, "allowed_hosts": [f"http://127.0.0.1:{port}"], "limits": {"subrequests": 2},
    })
    assert r.status_code == 201, r.text
    return "fetcher"


def test_fetch_to_an_allowed_host(admin: httpx.Client, fetcher: str, upstream: str) -> None:
    r = admin.get("/w/fetcher/fetch", params={"url": upstream + "/hello"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 200, "body": "upstream saw /hello from guest"}
    usage = {u["worker"]: u for u in admin.get("/v1/usage").json()["usage"]}
    assert usage["fetcher"]["subrequests"] >= 1


def test_fetch_to_a_host_not_allowed(admin: httpx.Client, fetcher: str, upstream: str) -> None:
    other_port = upstream.replace("127.0.0.1", "localhost")  # same server, other name: not allowed
    for url in (other_port + "/x", "http://127.0.0.1:1/x", "https://example.com/", "file:///etc/passwd"):
        r = admin.get("/w/fetcher/fetch", params={"url": url})
        assert r.status_code == 502, r.text
        assert r.json()["host_error"].startswith("fetch_denied:"), r.text


def test_too_many_subrequests(admin: httpx.Client, fetcher: str, upstream: str) -> None:
    assert admin.get("/w/fetcher/fetch", params={"url": upstream + "/a", "count": "2"}).status_code == 200
    r = admin.get("/w/fetcher/fetch", params={"url": upstream + "/a", "count": "3"})
    assert r.status_code == 502
    assert r.json()["host_error"].startswith("subrequest_limit:")
    assert admin.get("/w/fetcher/fetch", params={"url": upstream + "/again"}).status_code == 200


def test_no_allowed_hosts_means_no_fetch(admin: httpx.Client, kitchen: str, upstream: str) -> None:
    r = admin.get("/w/kitchen/fetch", params={"url": upstream + "/x"})
    assert r.status_code == 502 and "fetch_denied" in r.json()["host_error"]


def _deploy_fetcher(client: httpx.Client, files: dict[str, str], upstream: str, name: str = "fetcher",
                    **limits: int) -> None:
    port = upstream.rsplit(":", 1)[1]
    r = client.put(f"/v1/workers/{name}", json={
        "files": files, "allowed_hosts": [f"127.0.0.1:{port}", f"localhost:{port}"], "limits": limits})
    assert r.status_code == 201, r.text


def test_cookies_never_pass_between_tenants(wnode: NodeProcess, admin: httpx.Client,
                                            kitchen_files: dict[str, str], upstream: str) -> None:
    tokens = {t: admin.post("/v1/tokens", json={"tenant": t}).json()["token"] for t in ("bob", "alice")}
    with wnode.client(tokens["bob"]) as bob, wnode.client(tokens["alice"]) as alice:
        for c in (bob, alice):
            _deploy_fetcher(c, kitchen_files, upstream)
        assert bob.get("/w/fetcher/fetch", params={"url": upstream + "/set-cookie"}).json()["body"] == "set"
        # Neither alice nor bob himself gets the cookie back: fetch keeps no cookie jar.
        assert alice.get("/w/fetcher/fetch", params={"url": upstream + "/cookie"}).json()["body"] == "cookie=None"
        assert bob.get("/w/fetcher/fetch", params={"url": upstream + "/cookie"}).json()["body"] == "cookie=None"


def test_redirects_are_handed_to_the_guest(admin: httpx.Client, fetcher: str, upstream: str) -> None:
    # The next hop (example.invalid) is not allowed: following it here would skip its check.
    r = admin.get("/w/fetcher/fetch", params={"url": upstream + "/redirect"})
    assert r.json() == {"status": 302, "body": "moved"}


def test_a_trickling_response_cannot_outlive_the_wall_limit(admin: httpx.Client, kitchen_files: dict[str, str],
                                                            upstream: str) -> None:
    _deploy_fetcher(admin, kitchen_files, upstream, name="trickler", wall_ms=2000)
    r = admin.get("/w/trickler/fetch", params={"url": upstream + "/trickle"}, timeout=120)
    # The fetch is cut at the request's deadline and the request ends on its wall limit; without an
    # overall deadline it would wait out the whole 60 s trickle (each read being quick).
    assert r.status_code == 422 and r.json()["error"]["code"] == "wall_limit", r.text
    assert r.json()["error"]["usage"]["wall_ms"] < 30_000, r.text


def test_names_resolving_to_loopback_are_refused_without_an_operator_network(
        tmp_path: Path, worker_cache: Path, kitchen_files: dict[str, str], upstream: str) -> None:
    port = upstream.rsplit(":", 1)[1]
    strict = start_node(tmp_path / "strict", worker_cache)
    try:
        with strict.client(timeout=120) as c:
            _deploy_fetcher(c, kitchen_files, upstream)
            # localhost really resolves (to 127.0.0.1, where the server listens): the address check refuses it.
            for url in (f"http://localhost:{port}/x", f"http://127.0.0.1:{port}/x"):
                r = c.get("/w/fetcher/fetch", params={"url": url})
                assert r.status_code == 502, r.text
                assert r.json()["host_error"].startswith("fetch_denied:") and "egress policy" in r.text, r.text
    finally:
        strict.stop()


def test_names_resolving_to_an_operator_network_are_allowed(admin: httpx.Client, kitchen_files: dict[str, str],
                                                            upstream: str) -> None:
    port = upstream.rsplit(":", 1)[1]
    _deploy_fetcher(admin, kitchen_files, upstream, name="by-name")
    r = admin.get("/w/by-name/fetch", params={"url": f"http://localhost:{port}/named"})
    assert r.json() == {"status": 200, "body": "upstream saw /named from guest"}
