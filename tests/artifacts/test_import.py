"""Repository import through the node's egress policy: no internal addresses, redirects re-checked, no echoes.

The importing node allows the operator network 127.0.0.2/32 only; the upstream node and the
test servers listen there, while the importing node itself (on 127.0.0.1) is out of reach.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.artifacts.gitutil import api_commit, create_repo, git_url, refs_of, repo_token
from tests.support import NodeProcess

UPSTREAM_HOST = "127.0.0.2"
SECRET = "internal-secret-bytes"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node on 127.0.0.2 with a repository to import."""
    proc = NodeProcess(tmp_path_factory.mktemp("upstream"), listen=f"{UPSTREAM_HOST}:0").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The importing node (on 127.0.0.1), allowed to reach 127.0.0.2 only."""
    proc = NodeProcess(tmp_path_factory.mktemp("importer"), env={"EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.2/32"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client(timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def source(upstream: NodeProcess) -> str:
    """A read URL of a repository on the upstream node (branches main and dev)."""
    with upstream.client() as c:
        create_repo(c, "upstream")
        api_commit(c, "upstream", {"x.txt": "up\n"})
        api_commit(c, "upstream", {"y.txt": "up2\n"}, branch="dev", parent="")
        return git_url(upstream, "upstream", repo_token(c, "upstream", access="read"))


class _Servers(BaseHTTPRequestHandler):
    targets: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802
        kind = self.path.split("/")[1]
        if kind in self.targets:  # /<name>/...: redirect to the target of that name, same tail
            tail = self.path.split("/", 2)[2]
            self.send_response(302)
            self.send_header("location", self.targets[kind] + "/" + tail)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = f"{SECRET}\n".encode()
        self.send_response(500 if kind == "broken" else 200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(node: NodeProcess, upstream: NodeProcess, source: str) -> Iterator[str]:
    """On 127.0.0.2: redirects to the upstream repo and to the importing node, and servers that leak."""
    server = ThreadingHTTPServer((UPSTREAM_HOST, 0), _Servers)
    _Servers.targets = {"to-upstream": f"{upstream.url}/git/default/upstream.git",
                        "to-self": f"{node.url}/git/default/secret.git"}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{UPSTREAM_HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _import(api: httpx.Client, name: str, url: str) -> httpx.Response:
    return api.post("/v1/repos", json={"name": name, "import": {"url": url}})


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert SECRET not in response.text
    return dict(error)


def test_import_from_an_allowed_network(api: httpx.Client, upstream: NodeProcess, source: str) -> None:
    imported = _import(api, "copy", source)
    assert imported.status_code == 201, imported.text
    with upstream.client() as c:
        assert refs_of(api, "copy") == refs_of(c, "upstream")
    assert "agent:" not in str(api.get("/v1/repos/copy/events").json())  # the token is redacted


def test_redirects_are_followed_and_each_hop_is_checked(api: httpx.Client, node: NodeProcess,
                                                         servers: str) -> None:
    # The second hop reaches the upstream node (it asks for the credentials, which are never
    # carried to another origin than the one they were given for).
    with_password = servers.replace("http://", "http://agent:pw@")
    error = _refused(_import(api, "via-redirect", f"{with_password}/to-upstream"), 400, "import_failed")
    assert "wants credentials" in error["message"], error
    # The importing node's own repository is behind the second hop: refused, nothing created.
    create_repo(api, "secret")
    error = _refused(_import(api, "via-self", f"{servers}/to-self"), 400, "import_failed")
    assert "egress policy" in error["message"]
    assert api.get("/v1/repos/via-self").status_code == 404


def test_internal_addresses_are_refused(api: httpx.Client, node: NodeProcess) -> None:
    port = node.url.rsplit(":", 1)[1]
    create_repo(api, "own")
    for host in ("127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1"):
        error = _refused(_import(api, "probe", f"http://{host}:{port}/git/default/own.git"), 400, "import_failed")
        assert "egress policy" in error["message"], error
    assert api.get("/v1/repos/probe").status_code == 404


def test_raw_git_protocol_is_refused(api: httpx.Client) -> None:
    for url in ("git://127.0.0.1:22/x.git", "git://example.org/x.git"):
        _refused(_import(api, "raw", url), 400, "validation_failed")


def test_a_servers_bytes_never_reach_the_error(api: httpx.Client, servers: str) -> None:
    for path in ("/plain/repo.git", "/broken/repo.git"):
        error = _refused(_import(api, "leak", servers + path), 400, "import_failed")
        assert error["message"], error

