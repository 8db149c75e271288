"""Activation slots are shared between tenants: one tenant's backlog cannot hold them all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.agents.helpers import FAST, deploy, run_of, start, wait_status
from tests.support import wait_for


class _Gate(BaseHTTPRequestHandler):
    """Answers only once the test opens the gate; counts who is waiting."""

    gate = threading.Event()
    arrived = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).arrived += 1
        type(self).gate.wait(60)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gate() -> Iterator[str]:
    _Gate.gate.clear()
    _Gate.arrived = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Gate.gate.set()
    server.shutdown()
    server.server_close()


def test_a_tenants_backlog_leaves_a_slot_to_others(make_node: Any, gate: str) -> None:
    node = make_node(env={**FAST, "EDGENODE_AGENTS_MAX_ACTIVE_RUNS": "2",
                          "EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8"})
    with node.client() as admin:
        tokens = {t: admin.post("/v1/tokens", json={"tenant": t}).json()["token"] for t in ("alice", "bob")}
    with node.client(tokens["alice"]) as alice, node.client(tokens["bob"]) as bob:
        port = gate.rsplit(":", 1)[1]
        deploy(alice, "hog", """
            def run(ctx, input):
                return ctx.fetch(input)["status"]
        """, allowed_hosts=[f"127.0.0.1:{port}"])
        hogs = [start(alice, "hog", gate + "/wait")["id"] for _ in range(3)]
        wait_for(lambda: _Gate.arrived >= 1, timeout=30, message="alice's first run waits at the gate")
        deploy(bob, "quick", """
            def run(ctx, input):
                return input * 2
        """)
        quick = start(bob, "quick", 21)
        # Bob's run gets the slot alice's backlog may not take, while her runs are still held.
        assert wait_status(bob, quick["id"], "completed", timeout=30)["output"] == 42
        assert _Gate.arrived == 1
        assert [run_of(alice, h)["status"] for h in hogs].count("running") == 1
        _Gate.gate.set()
        for h in hogs:
            assert wait_status(alice, h, "completed", timeout=60)["output"] == 200
