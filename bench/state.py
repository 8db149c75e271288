"""State benchmark: key-value put/get over HTTP and through the worker binding, against raw sqlite3.

Measures, in one run, interleaved in rounds so that each sees the same disk and CPU load:
  * raw sqlite3: one INSERT OR REPLACE per transaction into a WAL database with
    synchronous=FULL (the node's default durability) — the baseline;
  * the binding path workers and agents use (``node.state.kv_put/kv_get``, in-process);
  * the HTTP API of a real node process, one client (latency) and several (throughput);
  * replication lag: a write on one of N local nodes until it is readable on all of them.

Run: ``python -m bench.state [--nodes 3] [--ops 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.stats import quantile
from edgenode.config import Config
from edgenode.node import Node
from tests.support import NodeProcess


def concurrent(fn: Callable[[int], Any], n: int, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(n)))
    return n / (time.perf_counter() - start)


def row(name: str, lat: list[float] | None, ops: float) -> str:
    if lat:
        return f"{name:<44} {quantile(lat, 0.5) * 1000:>8.3f} {quantile(lat, 0.99) * 1000:>8.3f} {ops:>10.0f}"
    return f"{name:<44} {'-':>8} {'-':>8} {ops:>10.0f}"


class Sink:
    """Latencies of one measurement, gathered over interleaved rounds."""

    def __init__(self) -> None:
        self.lat: list[float] = []

    def run(self, fn: Callable[[int], Any], start: int, n: int) -> None:
        for i in range(start, start + n):
            t = time.perf_counter()
            fn(i)
            self.lat.append(time.perf_counter() - t)

    def row(self, name: str) -> str:
        return row(name, self.lat, len(self.lat) / sum(self.lat))


class InProcessNode:
    """A node's state capability in this process: what a worker's kv binding calls."""

    def __init__(self, root: Path) -> None:
        self.node = Node(Config.load(env={}, overrides={"data_dir": root / "inproc"}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node.db.open()
        self._run(self.node.cluster.start())
        self._run(self.node.state.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self._run(self.node.state.stop())
        self._run(self.node.cluster.stop())
        self.node.db.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def bench_local(root: Path, n: int, rounds: int = 10) -> list[str]:
    """Raw sqlite3, the binding and HTTP, interleaved in rounds so all see the same disk and CPU load."""
    value = os.urandom(100)
    conn = sqlite3.connect(root / "raw.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")

    def raw_put(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{i % 500}", value))
        conn.execute("COMMIT")

    def raw_get(i: int) -> None:
        conn.execute("SELECT value FROM kv WHERE key = ?", (f"k{i % 500}",)).fetchone()

    inproc = InProcessNode(root)
    state = inproc.node.state
    http_node = NodeProcess(root / "http", env={"EDGENODE_LOG_LEVEL": "warning"}).start()
    client = http_node.client()
    sinks = {name: Sink() for name in ("raw put", "raw get", "bind put", "bind get", "http put", "http get")}
    fns: dict[str, Callable[[int], Any]] = {
        "raw put": raw_put,
        "raw get": raw_get,
        "bind put": lambda i: state.kv_put("default", "worker.bench", f"k{i % 500}", value),
        "bind get": lambda i: state.kv_get("default", "worker.bench", f"k{i % 500}"),
        "http put": lambda i: client.put(f"/v1/kv/bench/k{i % 500}", content=value),
        "http get": lambda i: client.get(f"/v1/kv/bench/k{i % 500}"),
    }
    try:
        for f in fns.values():  # warm up: files created, connections open
            f(0)
        chunk = max(1, n // rounds)
        for r in range(rounds):
            for name, f in fns.items():
                sinks[name].run(f, r * chunk, chunk)
        bind_par = concurrent(lambda i: state.kv_put("default", "worker.bench", f"p{i % 500}", value), n // 2, 8)
        local = threading.local()

        def http_put(i: int) -> None:
            if not hasattr(local, "c"):
                local.c = http_node.client()
            local.c.put(f"/v1/kv/bench/p{i % 500}", content=value)

        http_par = concurrent(http_put, n // 2, 8)
    finally:
        client.close()
        http_node.stop()
        inproc.close()
        conn.close()
    return [
        sinks["raw put"].row("raw sqlite3 put (WAL, FULL, 1 txn/put)"),
        sinks["bind put"].row("binding put (node.state.kv_put)"),
        sinks["http put"].row("HTTP put (1 client)"),
        row("binding put, 8 threads (group commit)", None, bind_par),
        row("HTTP put, 8 clients", None, http_par),
        sinks["raw get"].row("raw sqlite3 get"),
        sinks["bind get"].row("binding get (node.state.kv_get)"),
        sinks["http get"].row("HTTP get (1 client)"),
    ]


def bench_replication(root: Path, count: int, writes: int) -> list[str]:
    env = {"EDGENODE_FLEET_SECRET": "bench", "EDGENODE_LOG_LEVEL": "warning",
           "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.5", "EDGENODE_CLUSTER_SYNC_INTERVAL_S": "2"}
    nodes: list[NodeProcess] = []
    try:
        for i in range(count):
            args = ["--peer", nodes[0].url] if nodes else []
            nodes.append(NodeProcess(root / f"r{i}", env=env, args=args).start())
        clients = [n.client(timeout=10) for n in nodes]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(sum(p["healthy"] for p in c.get("/v1/cluster").json()["peers"]) == count - 1 for c in clients):
                break
            time.sleep(0.1)
        lags: list[float] = []
        rng = random.Random(5)
        for i in range(writes):
            writer = rng.randrange(count)
            key = f"lag-{i}"
            t0 = time.perf_counter()
            clients[writer].put(f"/v1/kv/lag/{key}", content=b"x")
            seen = {writer}
            while len(seen) < count:
                for j in range(count):
                    if j not in seen and clients[j].get(f"/v1/kv/lag/{key}").status_code == 200:
                        seen.add(j)
            lags.append(time.perf_counter() - t0)
        states = []
        for c in clients:
            keys = c.get("/v1/kv/lag", params={"limit": 10000}).json()["keys"]
            states.append({k: c.get(f"/v1/kv/lag/{k}").headers["etag"] for k in keys})
        identical = all(s == states[0] for s in states) and len(states[0]) == writes
        for c in clients:
            c.close()
    finally:
        for n in nodes:
            n.stop()
    return [row(f"replication lag, write -> readable on all {count}", lags, len(lags) / sum(lags)),
            f"converged state identical on all {count} nodes: {identical}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in the replication measurement")
    parser.add_argument("--writes", type=int, default=200, help="writes in the replication measurement")
    args = parser.parse_args(argv or [])  # bench/run_all.py calls main() with its own argv around
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = [f"{'measurement':<44} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>10}", "-" * 73]
        lines += bench_local(root, args.ops)
        lines += bench_replication(root, args.nodes, args.writes)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
