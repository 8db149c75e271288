"""Per-tenant admission on a real node: a tenant at its share of requests in flight gets 429 while another is served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.responses import Response
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from edgenode.admission import Admission
from edgenode.api.middleware import EdgeMiddleware
from edgenode.config import Config
from edgenode.errors import ValidationFailed
from edgenode.node import Node
from edgenode.threads import STORE, current_tenant
from tests.support import MIN_WAIT_S, NodeProcess

SHARE = 2


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("admission"), env={"EDGENODE_HTTP_TENANT_REQUESTS": str(SHARE)})
    proc.start()
    yield proc
    proc.stop()


def _token(node: NodeProcess, tenant: str) -> str:
    with node.client() as admin:
        return str(admin.post("/v1/tokens", json={"tenant": tenant}).raise_for_status().json()["token"])


class Pending:
    """A PUT whose body is held back: in flight at the node (past its admission) until :meth:`finish`."""

    def __init__(self, node: NodeProcess, token: str, key: str) -> None:
        url = urlsplit(node.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=MIN_WAIT_S)
        self.sock.sendall(f"PUT /v1/kv/held/{key} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                          f"Authorization: Bearer {token}\r\nContent-Length: 5\r\n\r\n".encode())

    def finish(self) -> bytes:
        """Send the body; the status line of the answer."""
        self.sock.sendall(b"hello")
        answer = b""
        while b"\r\n" not in answer:
            chunk = self.sock.recv(4096)
            assert chunk, "the node closed the connection"
            answer += chunk
        self.close()
        return answer.split(b"\r\n", 1)[0]

    def close(self) -> None:
        self.sock.close()


def _in_flight(admin: httpx.Client) -> float:
    for line in admin.get("/metrics").raise_for_status().text.splitlines():
        if line.startswith("edgenode_http_tenant_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no edgenode_http_tenant_requests_in_flight in /metrics")


def _wait_in_flight(admin: httpx.Client, count: int) -> None:
    deadline = time.monotonic() + MIN_WAIT_S
    while _in_flight(admin) != count:  # admins' requests (this one) are not counted
        assert time.monotonic() < deadline, f"never {count} tenant requests in flight"
        time.sleep(0.01)


def test_a_tenant_over_its_share_gets_429_while_another_tenant_is_admitted(node: NodeProcess) -> None:
    alice_token, bob_token = _token(node, "alice"), _token(node, "bob")
    with node.client() as admin, node.client(alice_token) as alice, node.client(bob_token) as bob:
        held = [Pending(node, alice_token, f"a{i}") for i in range(SHARE)]
        try:
            _scenario(admin, alice, bob, held, bob_token, node)
        finally:
            for pending in held:
                pending.close()


def _scenario(admin: httpx.Client, alice: httpx.Client, bob: httpx.Client, held: list[Pending], bob_token: str,
              node: NodeProcess) -> None:
    """Alice holds her share, then bob one request: her next is refused, his admitted, nothing lost."""
    _wait_in_flight(admin, SHARE)
    # Alone on the node, alice is not held to her share: nobody waits for her.
    assert alice.get("/v1/kv/held").status_code == 200
    held.append(Pending(node, bob_token, "b0"))
    _wait_in_flight(admin, SHARE + 1)

    refused = alice.get("/v1/kv/held")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "tenant_over_share"
    assert bob.get("/v1/kv/held").status_code == 200  # bob is under his share

    # Nothing held back was lost: every write went through.
    assert [p.finish().split(b" ")[1] for p in held] == [b"200"] * (SHARE + 1)
    _wait_in_flight(admin, 0)
    assert alice.get("/v1/kv/held").json()["keys"] == ["a0", "a1"]
    assert bob.get("/v1/kv/held").json()["keys"] == ["b0"]


@pytest.mark.parametrize(("var", "value"), [("EDGENODE_HTTP_TENANT_REQUESTS", "-1"),
                                            ("EDGENODE_WORKERS_OVER_SHARE_NICE", "-1"),
                                            ("EDGENODE_WORKERS_OVER_SHARE_NICE", "20")])
def test_fairness_settings_out_of_range_stop_the_load(var: str, value: str) -> None:
    with pytest.raises(ValidationFailed, match=var.removeprefix("EDGENODE_").split("_", 1)[0].lower()):
        Config.load(env={var: value})


def test_a_request_runs_with_its_tenant_for_the_bridges_to_queue_by(local: tuple[Node, TestClient]) -> None:
    node, admin = local
    token = admin.post("/v1/tokens", json={"tenant": "alice"}).raise_for_status().json()["token"]
    seen: list[str | None] = []

    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await STORE.run(current_tenant.get))  # as a bridge's thread sees it
        await Response("ok")(scope, receive, send)

    app = EdgeMiddleware(probe, auth=node.auth, metrics=node.metrics, public=["/open"], admission=Admission(1))
    client = TestClient(app)  # no lifespan: the node is already started
    assert client.get("/x", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/open").status_code == 200
    assert seen == ["alice", None]
