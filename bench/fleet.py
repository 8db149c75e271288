"""Fleet benchmark: the NATS transport against the HTTP peer mesh it replaced, in one run.

For fleets of N nodes on loopback it measures what crosses between nodes, through a
counting TCP proxy in front of each node's peer listener (the HTTP port for the mesh,
the nats-server route port for NATS; every peer connection goes through exactly one):

  * idle messages/s and bytes/s per node (HTTP requests; routed NATS messages);
  * per-write cost (messages and bytes per KV write, while writing);
  * write visible everywhere: a write on one node until every node reads it, p50/p99;
  * catch-up: a node stopped while the others take W writes, from its restart until it
    has them all.

The baseline is the landed HTTP mesh: ``git worktree add`` of its commit into a temporary
directory, its nodes run with that tree's code (``PYTHONPATH``).

Shapes: ``mesh`` (the baseline), ``clustered`` (nodes' servers routed to each other) and
``leaf`` (nodes' servers leaf nodes of one hub server started with ``edgenode hub serve``).

Run: ``python -m bench.fleet [--sizes 3,10] [--shapes mesh,clustered,leaf] [--writes 100] [--catchup 2000]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.stats import quantile
from tests.support import NodeProcess

BASELINE_COMMIT = "08cf768"
SECRET = "bench-fleet-secret"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingProxy:
    """A TCP proxy that counts bytes both ways and occurrences of a message marker."""

    def __init__(self, target: int, marker: bytes) -> None:
        self.target = target
        self.marker = marker
        self.port = free_port()
        self.bytes = 0
        self.messages = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(256)
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.messages, self.bytes

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.bytes += len(data)
                    self.messages += data.count(self.marker)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


class Fleet:
    """N nodes of one implementation, each behind a counting proxy."""

    def __init__(self, root: Path, count: int, *, mesh_tree: Path | None, leaf: bool = False) -> None:
        self.root = root
        self.count = count
        self.mesh = mesh_tree is not None
        self.leaf = leaf
        self.hub: subprocess.Popen[bytes] | None = None
        self.nodes: list[NodeProcess] = []
        self.proxies: list[CountingProxy] = []
        base = {"EDGENODE_FLEET_SECRET": SECRET, "EDGENODE_LOG_LEVEL": "warning",
                "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "2", "EDGENODE_STORE_SYNCHRONOUS": "NORMAL"}
        if mesh_tree is not None:
            # Safe path: without it, "-m" would put the current directory (this tree) first.
            base.update(PYTHONPATH=str(mesh_tree), PYTHONSAFEPATH="1")
        self.base_env = base

    def _start_hub(self) -> int:
        """A hub of one server behind the proxy every leaf dials; returns the proxy's port."""
        leaf_port = free_port()
        data = self.root / "hub"
        data.mkdir(parents=True, exist_ok=True)
        with open(data / "hub.log", "ab") as log:
            self.hub = subprocess.Popen(
                [sys.executable, "-m", "edgenode", "hub", "serve", "--data", str(data), "--name", "hub",
                 "--leaf-listen", f"127.0.0.1:{leaf_port}", "--client-listen", f"127.0.0.1:{free_port()}"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EDGENODE_FLEET_SECRET": SECRET})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", leaf_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        proxy = CountingProxy(leaf_port, b"LMSG ")
        self.proxies.append(proxy)
        return proxy.port

    def start(self) -> Fleet:
        hub_port = self._start_hub() if self.leaf else 0
        for i in range(self.count):
            env = dict(self.base_env)
            http_port = free_port()
            if self.leaf:
                args = ["--hub", f"nats://127.0.0.1:{hub_port}"]
            elif self.mesh:
                proxy = CountingProxy(http_port, b" HTTP/1.1\r\n")
                env["EDGENODE_CLUSTER_ADVERTISE_URL"] = f"http://127.0.0.1:{proxy.port}"
                args = ["--peer", f"http://127.0.0.1:{self.proxies[0].port}"] if self.proxies else []
                self.proxies.append(proxy)
            else:
                route_port = free_port()
                proxy = CountingProxy(route_port, b"RMSG ")
                env["EDGENODE_CLUSTER_NATS_CLUSTER_LISTEN"] = f"127.0.0.1:{route_port}"
                env["EDGENODE_CLUSTER_NATS_CLUSTER_ADVERTISE"] = f"127.0.0.1:{proxy.port}"
                args = ["--peer", f"nats-route://127.0.0.1:{self.proxies[0].port}"] if self.proxies else []
                self.proxies.append(proxy)
            node = NodeProcess(self.root / f"n{i}", env=env, args=args, listen=f"127.0.0.1:{http_port}")
            self.nodes.append(node.start())
        self.clients = [n.client(timeout=30) for n in self.nodes]
        self.wait_formed()
        return self

    def wait_formed(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._sees_all(c) for c in self.clients):
                return
            time.sleep(0.2)
        raise RuntimeError("the fleet did not form")

    def _sees_all(self, client: Any) -> bool:
        data = client.get("/v1/cluster").json()
        if self.mesh:
            return sum(1 for p in data["peers"] if p["healthy"]) >= self.count - 1
        return sum(1 for m in data["members"] if m["healthy"]) >= self.count

    def traffic(self) -> tuple[int, int]:
        msgs = byts = 0
        for p in self.proxies:
            m, b = p.snapshot()
            msgs += m
            byts += b
        return msgs, byts

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        for n in self.nodes:
            n.stop()
        for p in self.proxies:
            p.close()
        if self.hub is not None:
            self.hub.terminate()
            self.hub.wait(30)


def measure(fleet: Fleet, *, idle_s: float, writes: int, catchup: int) -> dict[str, float]:
    n = fleet.count
    out: dict[str, float] = {}
    time.sleep(2.0)  # let start-up exchanges settle
    m0, b0 = fleet.traffic()
    time.sleep(idle_s)
    m1, b1 = fleet.traffic()
    out["idle_msgs"] = (m1 - m0) / idle_s / n
    out["idle_bytes"] = (b1 - b0) / idle_s / n
    rng = random.Random(7)
    lags: list[float] = []
    m0, b0 = fleet.traffic()
    t_write = 0.0
    for i in range(writes):
        writer = rng.randrange(n)
        key = f"w{i}"
        t0 = time.perf_counter()
        fleet.clients[writer].put(f"/v1/kv/bench/{key}", content=b"x" * 64)
        t_write += time.perf_counter() - t0
        seen = {writer}
        while len(seen) < n:
            for j in range(n):
                if j not in seen and fleet.clients[j].get(f"/v1/kv/bench/{key}").status_code == 200:
                    seen.add(j)
        lags.append(time.perf_counter() - t0)
    m1, b1 = fleet.traffic()
    out["lag_p50_ms"] = quantile(lags, 0.5) * 1000
    out["lag_p99_ms"] = quantile(lags, 0.99) * 1000
    out["write_msgs"] = (m1 - m0) / writes
    out["write_bytes"] = (b1 - b0) / writes
    # Catch-up: the last node misses `catchup` writes made on the first.
    late = fleet.nodes[-1]
    fleet.clients[-1].close()
    late.stop()
    writer = fleet.clients[0]

    def put(i: int) -> None:
        writer.put(f"/v1/kv/catchup/k{i:06d}", content=b"y" * 64)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(catchup)))
    t0 = time.perf_counter()
    late.start()
    fleet.clients[-1] = late.client(timeout=30)
    last = f"/v1/kv/catchup/k{catchup - 1:06d}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        keys = fleet.clients[-1].get("/v1/kv/catchup", params={"limit": 10000})
        if keys.status_code == 200 and len(keys.json()["keys"]) >= catchup and \
                fleet.clients[-1].get(last).status_code == 200:
            break
        time.sleep(0.05)
    out["catchup_s"] = time.perf_counter() - t0
    return out


def baseline_tree(tmp: Path) -> Path | None:
    tree = tmp / "mesh"
    result = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), BASELINE_COMMIT],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"baseline: cannot check out {BASELINE_COMMIT}: {result.stderr.strip()}", file=sys.stderr)
        return None
    return tree


def remove_tree(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    shutil.rmtree(tree, ignore_errors=True)


SHAPES = {"mesh": "HTTP mesh", "clustered": "NATS", "leaf": "NATS leaf"}


def run(sizes: list[int], *, idle_s: float, writes: int, catchup: int, shapes: list[str],
        log: Callable[[str], None] = print) -> list[str]:
    rows: list[tuple[str, int, dict[str, float]]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tree = baseline_tree(tmp)
        try:
            for n in sizes:
                for shape in shapes:
                    if shape == "mesh" and tree is None:
                        continue
                    label = SHAPES[shape]
                    log(f"... {label}, N={n}")
                    fleet = Fleet(tmp / f"{shape}-{n}", n, mesh_tree=tree if shape == "mesh" else None,
                                  leaf=shape == "leaf")
                    try:
                        fleet.start()
                        rows.append((label, n, measure(fleet, idle_s=idle_s, writes=writes, catchup=catchup)))
                    except Exception as exc:  # noqa: BLE001 - a fleet that cannot form is a result too
                        failures.append(f"{label} N={n}: {type(exc).__name__}: {exc}")
                    finally:
                        fleet.stop()
        finally:
            if tree is not None:
                remove_tree(tree)
    header = (f"{'transport':<10} {'N':>3} {'idle msg/s':>10} {'idle B/s':>10} {'msg/write':>9} "
              f"{'B/write':>9} {'p50 ms':>8} {'p99 ms':>8} {f'catch-up {catchup} s':>16}")
    lines = [header, "-" * len(header)]
    lines += [f"{label:<10} {n:>3} {r['idle_msgs']:>10.1f} {r['idle_bytes']:>10.0f} {r['write_msgs']:>9.1f} "
              f"{r['write_bytes']:>9.0f} {r['lag_p50_ms']:>8.1f} {r['lag_p99_ms']:>8.1f} {r['catchup_s']:>16.2f}"
              for label, n, r in rows]
    lines += [f"failed: {f}" for f in failures]
    lines.append("per node: traffic between nodes (mesh: HTTP requests; NATS: messages on routes) or between "
                 "nodes and the hub (leaf: messages on leaf connections), through counting proxies, / N")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,10", help="fleet sizes, comma separated")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    parser.add_argument("--writes", type=int, default=100, help="writes in the visibility measurement")
    parser.add_argument("--catchup", type=int, default=2000, help="writes a stopped node misses")
    parser.add_argument("--shapes", default="mesh,clustered,leaf", help=f"of {', '.join(SHAPES)}")
    args = parser.parse_args(argv or [])
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip() in SHAPES]
    print("\n".join(run(sizes, idle_s=args.idle, writes=args.writes, catchup=args.catchup, shapes=shapes)))


if __name__ == "__main__":
    main(sys.argv[1:])
