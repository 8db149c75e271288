"""A healed partition with no new writes converges at once: the pull back-off resets when a peer answers again.

Two real nodes reach each other only through TCP relays in this process; closing the
relays is the partition (connections refused), reopening them heals it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster.test_replication import FAST
from tests.support import NodeProcess, wait_for


class Relay:
    """A loopback TCP relay to a node that can be cut (refusing connections) and healed on the same port."""

    def __init__(self) -> None:
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.target: tuple[str, int] | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._serve()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            if self.target is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def heal(self) -> None:
        """Listen again on the same port."""
        self._listener = self._listen(self.port)
        self._serve()


@contextlib.contextmanager
def relayed_pair(root: Path) -> Iterator[tuple[NodeProcess, NodeProcess, Relay, Relay]]:
    """Nodes a and b, each advertising (and so reached only through) its own relay."""
    ra, rb = Relay(), Relay()
    a = NodeProcess(root / "a", env={**FAST, "EDGENODE_CLUSTER_ADVERTISE_URL": ra.url})
    b = NodeProcess(root / "b", env={**FAST, "EDGENODE_CLUSTER_ADVERTISE_URL": rb.url}, args=["--peer", ra.url])
    try:
        a.start()
        ra.target = ("127.0.0.1", int(a.url.rsplit(":", 1)[1]))
        b.start()
        rb.target = ("127.0.0.1", int(b.url.rsplit(":", 1)[1]))
        yield a, b, ra, rb
    finally:
        for n in (a, b):
            n.stop()
        for r in (ra, rb):
            with contextlib.suppress(OSError):
                r.cut()


def _peer(node: NodeProcess) -> dict[str, Any]:
    with node.client() as c:
        peers = c.get("/v1/cluster").json()["peers"]
    assert len(peers) == 1, peers
    found: dict[str, Any] = peers[0]
    return found


def test_a_healed_partition_converges_without_waiting_out_the_back_off(tmp_path: Path) -> None:
    with relayed_pair(tmp_path) as (a, b, ra, rb):
        wait_for(lambda: _peer(a)["healthy"] and _peer(b)["healthy"], timeout=30, message="a healthy pair")
        with b.client() as c:
            assert c.put("/v1/kv/ns/before", content=b"1").status_code == 200
        with a.client() as c:
            wait_for(lambda: c.get("/v1/kv/ns/before").status_code == 200, timeout=30, message="replication")

        ra.cut()
        rb.cut()
        with b.client() as c:  # written during the cut: the push to a fails, only a pull can carry it
            for i in range(5):
                assert c.put(f"/v1/kv/ns/cut-{i}", content=b"x").status_code == 200
        # a keeps failing to pull from b until its back-off is long (more than the bound below).
        wait_for(lambda: _peer(a)["next_sync_in_s"] > 20, timeout=120, message="a long pull back-off on a")

        ra.heal()
        rb.heal()
        with a.client() as c:
            wait_for(lambda: all(c.get(f"/v1/kv/ns/cut-{i}").status_code == 200 for i in range(5)),
                     timeout=15, message="the writes made during the cut to reach a after healing")
        assert _peer(a)["next_sync_in_s"] < 20
