"""Fleet control plane: how soon a token, a revocation and a worker deployment made on one node hold on another.

Three in-process nodes (real SQLite files) share one real nats-server. Baseline in the same run:
the same operation on the node that makes it (the call's own duration, when it holds there).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import nats  # noqa: E402

from bench.stats import quantile  # noqa: E402
from edgenode.config import Config  # noqa: E402
from edgenode.errors import TokenRevoked, Unauthorized, WorkerNotFound  # noqa: E402
from edgenode.fleet.control import MIGRATIONS  # noqa: E402
from edgenode.fleet.wiring import build_control_plane, open_buckets  # noqa: E402
from edgenode.isolates.runtime import GuestRequest  # noqa: E402
from edgenode.node import Node  # noqa: E402
from edgenode.store import Database  # noqa: E402
from tests.fleet_support import LoopThread, NatsServer  # noqa: E402

SAMPLES = 30
SECRET = b"bench-fleet-secret-0123456789"
HELLO = "def handle(request):\n    return {'n': %d}\n"


async def _member(root: Path, url: str, opened: list[Any]) -> Node:
    node = Node(Config.load(env={}, overrides={"data_dir": root}))
    await node.start()
    nc = await nats.connect(url)
    js = nc.jetstream()
    control, blobs = await open_buckets(js, subject_prefix="edn.bench", stream_prefix="EDN_BENCH")
    db = Database(root / "fleet.db", MIGRATIONS).open()
    plane = build_control_plane(js, control, blobs, node_id=node.id, fleet_secret=SECRET, db=db, auth=node.auth,
                                workers=node.workers)
    await plane.start()
    opened.append((node, plane, nc, db))
    return node


async def _close(opened: list[Any]) -> None:
    for node, plane, nc, db in opened:
        await plane.stop()
        await nc.close()
        await node.stop()
        db.close()


def _until(check: Any, started: float) -> float:
    while not check():
        time.sleep(0.0005)
    return (time.perf_counter() - started) * 1000


def _ok(node: Node, token: str) -> bool:
    try:
        node.auth.authenticate(token)
        return True
    except Unauthorized:
        return False


def _revoked(node: Node, token: str) -> bool:
    try:
        node.auth.authenticate(token)
    except TokenRevoked:
        return True
    return False


def _answers(loop: LoopThread, node: Node, n: int) -> bool:
    try:
        outcome = loop.run(node.workers.invoke("bench", "hello", GuestRequest("GET", "/", [], [], b"")))
    except WorkerNotFound:
        return False
    return outcome.response is not None and outcome.response.body == b'{"n":%d}' % n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats").start()
        loop = LoopThread()
        opened: list[Any] = []
        try:
            a, b, c = (loop.run(_member(root / name, server.url, opened)) for name in "abc")
            rows: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("token", "revoke", "deploy")}
            for i in range(SAMPLES):
                t0 = time.perf_counter()
                issued = loop.run(a.auth.create_token("bench"))
                rows["token"][0].append((time.perf_counter() - t0) * 1000)
                rows["token"][1].append(_until(lambda t=issued.token: _ok(b, t), t0))
                t0 = time.perf_counter()
                loop.run(b.auth.revoke_token(issued.id))
                rows["revoke"][0].append((time.perf_counter() - t0) * 1000)
                rows["revoke"][1].append(_until(lambda t=issued.token: _revoked(a, t), t0))
                t0 = time.perf_counter()
                settings = a.workers.parse_settings({})
                loop.run(a.workers.deploy_python("bench", "hello", {"main.py": HELLO % i}, settings))
                rows["deploy"][0].append((time.perf_counter() - t0) * 1000)
                rows["deploy"][1].append(_until(lambda i=i: _answers(loop, c, i), t0))
            print(f"control plane, {SAMPLES} samples, ms (local: the call on the node that makes it; "
                  "fleet: until it holds on another node)")
            print(f"{'operation':<10} {'local p50':>10} {'local p99':>10} {'fleet p50':>10} {'fleet p99':>10}")
            for name, (local, remote) in rows.items():
                print(f"{name:<10} {quantile(local, 0.5):>10.1f} {quantile(local, 0.99):>10.1f} "
                      f"{quantile(remote, 0.5):>10.1f} {quantile(remote, 0.99):>10.1f}")
        finally:
            loop.run(_close(opened))
            loop.close()
            server.stop()


if __name__ == "__main__":
    main()
