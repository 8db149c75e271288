"""Deleting a tenant while its work is under way: nothing that work makes outlives the deletion.

The first test runs a real node in-process, so it can hold one of the tenant's requests open at the
exact moment the deletion waits for it; the second drives a real node over HTTP with a Git server
that holds an import job open while its tenant is deleted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from edgenode import tenants
from edgenode.config import Config
from edgenode.node import Node
from tests.support import MIN_WAIT_S, NodeProcess, wait_for


def test_what_a_racing_request_writes_is_removed_with_its_tenant(tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(Config.load(env={}, overrides={"data_dir": tmp_path / "data"}))
        await node.start()
        try:
            await node.auth.create_token("alice")
            await node.state.akv_put("alice", "notes", "old", b"before")

            async def racing_request() -> None:
                # A request of alice's that began before the deletion and writes once its first pass ran.
                with node.admission.active("alice"):
                    while not deletion.done() and "alice" not in node.admission._ended:
                        await asyncio.sleep(0.01)
                    await node.state.akv_put("alice", "notes", "late", b"written during the deletion")

            deletion = asyncio.ensure_future(tenants.delete_tenant(node, "alice"))
            await asyncio.wait_for(asyncio.gather(deletion, racing_request()), MIN_WAIT_S)
            assert not await node.auth.tenant_exists("alice")
            await node.auth.create_token("alice")  # a new tenant of the name
            assert await node.state.akv_get("alice", "notes", "late") is None
            assert await node.state.akv_get("alice", "notes", "old") is None
        finally:
            await node.stop()

    asyncio.run(main())


def test_a_deletion_does_not_wait_for_the_request_making_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        node = Node(Config.load(env={}, overrides={"data_dir": tmp_path / "data"}))
        await node.start()
        try:
            await node.auth.create_token("alice")
            with node.admission.active("alice"):  # an admin acting for alice deletes alice
                await asyncio.wait_for(tenants.delete_tenant(node, "alice", own_request=True), MIN_WAIT_S)
            assert not await node.auth.tenant_exists("alice")
        finally:
            await node.stop()

    asyncio.run(main())
    assert not [r for r in caplog.records if r.name == "edgenode.tenants"], "it waited for itself"


GATE_HOST = "127.0.0.2"


class _Gate(BaseHTTPRequestHandler):
    """A Git server that answers nothing until the test opens the gate."""

    arrived = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        type(self).arrived.set()
        type(self).release.wait(MIN_WAIT_S)
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gate() -> Iterator[int]:
    server = ThreadingHTTPServer((GATE_HOST, 0), _Gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    _Gate.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("deletion"), env={"EDGENODE_EGRESS_ALLOW_NETWORKS": f"{GATE_HOST}/32"})
    proc.start()
    yield proc
    proc.stop()


def test_a_deleted_tenants_jobs_are_gone(node: NodeProcess, gate: int) -> None:
    with node.client(timeout=MIN_WAIT_S) as admin:
        token = admin.post("/v1/tokens", json={"tenant": "alice"}).json()["token"]
        with node.client(token, timeout=MIN_WAIT_S) as alice:
            started = alice.post("/v1/repos", headers={"prefer": "respond-async"},
                                 json={"name": "site", "import": {"url": f"http://{GATE_HOST}:{gate}/site.git"}})
            assert started.status_code == 202, started.text
            job = started.json()["id"]
        assert _Gate.arrived.wait(MIN_WAIT_S)
        assert admin.delete("/v1/tenants/alice").status_code == 204
        _Gate.release.set()
        again = admin.post("/v1/tokens", json={"tenant": "alice"}).json()["token"]
        with node.client(again, timeout=MIN_WAIT_S) as new_alice:
            gone = new_alice.get(f"/v1/jobs/{job}")
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found", gone.text
            assert new_alice.get("/v1/repos").json()["repos"] == []
    assert httpx.get(node.url + "/healthz").status_code == 200


def test_a_request_under_way_when_its_tenant_is_deleted_leaves_nothing(node: NodeProcess) -> None:
    with node.client(timeout=MIN_WAIT_S) as admin:
        token = admin.post("/v1/tokens", json={"tenant": "carol"}).json()["token"]
        as_carol = {"x-edgenode-tenant": "carol"}
        assert admin.put("/v1/kv/notes/old", content=b"before", headers=as_carol).status_code == 200
        host, port = node.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=MIN_WAIT_S) as raw:
            # carol's write is in the node (it asked for the body) when her deletion begins.
            raw.sendall(f"PUT /v1/kv/notes/late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                        "Content-Length: 4\r\nExpect: 100-continue\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 100")
            deleted: list[int] = []
            deletion = threading.Thread(target=lambda: deleted.append(admin.delete("/v1/tenants/carol").status_code))
            deletion.start()
            wait_for(lambda: admin.get("/v1/kv/notes/old", headers=as_carol).status_code == 404,
                     message="the deletion's first pass")
            raw.sendall(b"late")  # the write lands after that pass
            assert raw.recv(4096).split(b" ")[1] in (b"200", b"503", b"404"), "the write got an answer"
            deletion.join(MIN_WAIT_S)
        assert deleted == [204]
        again = admin.post("/v1/tokens", json={"tenant": "carol"}).json()["token"]
        with node.client(again) as new_carol:
            assert new_carol.get("/v1/kv/notes/late").status_code == 404
            assert new_carol.get("/v1/kv/notes").json()["keys"] == []


def test_a_deleted_tenants_repository_tokens_open_nothing_of_its_successor(node: NodeProcess) -> None:
    with node.client(timeout=MIN_WAIT_S) as admin:
        as_dave = {"x-edgenode-tenant": "dave"}
        admin.post("/v1/tokens", json={"tenant": "dave"})
        assert admin.post("/v1/repos", json={"name": "site"}, headers=as_dave).status_code == 201
        old = admin.post("/v1/repos/site/tokens", json={"access": "write"}, headers=as_dave).json()["token"]
        refs = f"{node.url}/git/dave/site.git/info/refs?service=git-upload-pack"
        assert httpx.get(refs, auth=("x", old)).status_code == 200
        assert admin.delete("/v1/tenants/dave").status_code == 204
        admin.post("/v1/tokens", json={"tenant": "dave"})
        assert admin.post("/v1/repos", json={"name": "site"}, headers=as_dave).status_code == 201
        assert httpx.get(refs, auth=("x", old)).status_code == 401
        assert admin.get("/v1/repos/site/tokens", headers=as_dave).json()["tokens"] == []
