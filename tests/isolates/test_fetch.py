"""Outbound fetch: only to allowed hosts, at most ``subrequests`` per request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path} from {self.headers.get('x-from')}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
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
