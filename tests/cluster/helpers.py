"""Helpers for fleet tests: real node processes clustered over their own nats-servers on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgenode.cluster.natsserver import FleetKeys
from tests.support import NodeProcess, wait_for

SECRET = "fleet-test-secret"
#: Short intervals keep the multi-node tests quick.
FAST = {
    "EDGENODE_FLEET_SECRET": SECRET,
    "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.3",
    "EDGENODE_CLUSTER_DOWN_AFTER_S": "3",
    "EDGENODE_CLUSTER_PUSH_TIMEOUT_S": "2",
    "EDGENODE_STORE_SYNCHRONOUS": "NORMAL",
}
KEYS = FleetKeys.from_secret(SECRET.encode())


def start_fleet(root: Path, count: int, *, env: dict[str, str] | None = None,
                extra: list[list[str]] | None = None) -> list[NodeProcess]:
    """``count`` nodes, each given only the first node's URL as its peer."""
    nodes: list[NodeProcess] = []
    try:
        for i in range(count):
            args = ["--peer", nodes[0].url] if nodes else []
            if extra:
                args += extra[i]
            nodes.append(NodeProcess(root / f"n{i + 1}", env={**FAST, **(env or {})}, args=args).start())
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes


@contextlib.contextmanager
def running_fleet(root: Path, count: int, *, env: dict[str, str] | None = None) -> Iterator[list[NodeProcess]]:
    """``count`` nodes (:func:`start_fleet`), each listing all as healthy members; stopped afterwards."""
    nodes = start_fleet(root, count, env=env)
    try:
        wait_members(nodes)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def run_status(node: NodeProcess, run_id: str, *statuses: str) -> dict[str, Any] | None:
    """Agent run ``run_id`` as ``node`` shows it, if it has one of ``statuses``; a failed or blocked run
    (when not among them) fails the test at once, with its error, rather than at a wait's bound."""
    with node.client() as c:
        r = c.get(f"/v1/agents/runs/{run_id}")
    run: dict[str, Any] | None = r.json() if r.status_code == 200 else None
    if run is not None and run["status"] in ("failed", "blocked") and run["status"] not in statuses:
        raise AssertionError(f"run {run_id} is {run['status']}: {run['error']}")
    return run if run is not None and run["status"] in statuses else None


def cluster(node: NodeProcess) -> dict[str, Any]:
    with node.client(timeout=30) as c:
        data: dict[str, Any] = c.get("/v1/cluster").json()
        return data


def healthy_members(node: NodeProcess) -> set[str]:
    return {m["node_id"] for m in cluster(node)["members"] if m["healthy"]}


def wait_members(nodes: list[NodeProcess], expected: set[str] | None = None) -> None:
    ids = expected or {n.node_id for n in nodes}
    for n in nodes:
        wait_for(lambda n=n: healthy_members(n) == ids, message=f"{n.node_id} to list {sorted(ids)} as members")


def kv_state(node: NodeProcess, namespace: str) -> dict[str, bytes]:
    with node.client() as c:
        r = c.get(f"/v1/kv/{namespace}", params={"limit": 10000})
        if r.status_code != 200:
            return {}
        return {k: c.get(f"/v1/kv/{namespace}/{k}").content for k in r.json()["keys"]}


def converged(nodes: list[NodeProcess], namespace: str, expected: dict[str, bytes] | None = None) -> Any:
    states = [kv_state(n, namespace) for n in nodes]
    same = all(s == states[0] for s in states)
    if expected is not None:
        return same and states[0] == expected
    return same and states[0]


def child_pid(node: NodeProcess) -> int | None:
    """The pid of the node's nats-server, while it runs."""
    try:
        pid = int((node.data_dir / "nats" / "nats-server.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status and os.path.exists(f"/proc/{pid}")
