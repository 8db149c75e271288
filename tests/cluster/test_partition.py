"""A node cut off by a real network partition (network namespaces and veth links) converges after it heals.

Topology: each node runs in its own network namespace. A bridge in the root
namespace joins the nodes' fleet links (10.213.N.0/24); each namespace also has a
point-to-point management link to the root namespace, used only by the test to
talk to the node. The root namespace does not forward packets, so the bridge is
the only path between nodes: setting a node's bridge port down is a real cut.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.test_replication import FAST, converged, kv_state
from tests.support import NodeProcess, wait_for

PORT = 8787


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ip", *args], capture_output=True, check=check)


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"en5probe{os.getpid()}"
    ok = ip("netns", "add", name, check=False).returncode == 0
    if ok:
        ip("netns", "del", name, check=False)
    return ok


pytestmark = pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")


class NetnsNode(NodeProcess):
    """A node process started inside a network namespace with ``ip netns exec``."""

    def __init__(self, data_dir: Path, netns: str, mgmt_ip: str, **kwargs: object) -> None:
        super().__init__(data_dir, listen=f"0.0.0.0:{PORT}", **kwargs)  # type: ignore[arg-type]
        self.netns = netns
        self.mgmt_url = f"http://{mgmt_ip}:{PORT}"

    def start(self, timeout: float = 30.0) -> NetnsNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url_file = self.data_dir / "url"
        url_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
        env.update(self.env)
        with open(self.data_dir / "node.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "edgenode", "serve",
                 "--data", str(self.data_dir), "--listen", self.listen, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if url_file.exists() and url_file.read_text().strip():
                self.url = self.mgmt_url  # the test reaches the node over its management link
                return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"node did not become ready in {timeout}s:\n{self.log()[-4000:]}")


class Network:
    """Namespaces, a bridge and veth pairs, all removed at the end."""

    def __init__(self, count: int) -> None:
        tag = os.getpid() % 100000
        self.subnet = 100 + os.getpid() % 100  # avoid colliding with a concurrent run
        self.bridge = f"e5b{tag}"
        self.names = [f"en5-{tag}-{i}" for i in range(count)]
        self.ports = [f"e5p{tag}{i}" for i in range(count)]
        self.mgmt = [f"e5m{tag}{i}" for i in range(count)]
        self.created: list[str] = []

    def fleet_ip(self, i: int) -> str:
        return f"10.213.{self.subnet}.{11 + i}"

    def mgmt_ip(self, i: int) -> str:
        return f"10.214.{self.subnet}.{4 * i + 2}"

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self.created.append(self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # fleet link: namespace <-> bridge
            ip("link", "add", self.ports[i], "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", self.ports[i], "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.fleet_ip(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            # management link: namespace <-> root, for the test only
            ip("link", "add", self.mgmt[i], "type", "veth", "peer", "name", "mgmt0", "netns", ns)
            ip("addr", "add", f"10.214.{self.subnet}.{4 * i + 1}/30", "dev", self.mgmt[i])
            ip("link", "set", self.mgmt[i], "up")
            ip("-n", ns, "addr", "add", f"{self.mgmt_ip(i)}/30", "dev", "mgmt0")
            ip("-n", ns, "link", "set", "mgmt0", "up")

    def cut(self, i: int) -> None:
        ip("link", "set", self.ports[i], "down")

    def heal(self, i: int) -> None:
        ip("link", "set", self.ports[i], "up")

    def down(self) -> None:
        for ns in self.names:
            ip("netns", "del", ns, check=False)
        for link in [self.bridge, *self.ports, *self.mgmt]:
            ip("link", "del", link, check=False)


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(3)
    try:
        net.up()
        yield net
    finally:
        net.down()


def test_partitioned_node_converges_after_the_partition_heals(network: Network, tmp_path: Path) -> None:
    nodes: list[NetnsNode] = []
    try:
        for i, ns in enumerate(network.names):
            env = {**FAST, "EDGENODE_CLUSTER_ADVERTISE_URL": f"http://{network.fleet_ip(i)}:{PORT}"}
            args = ["--peer", f"http://{network.fleet_ip(0)}:{PORT}"] if i else []
            nodes.append(NetnsNode(tmp_path / f"n{i}", ns, network.mgmt_ip(i), env=env, args=args).start())

        def healthy_everywhere() -> bool:
            for n in nodes:
                with n.client() as c:
                    if sum(p["healthy"] for p in c.get("/v1/cluster").json()["peers"]) < 2:
                        return False
            return True

        wait_for(healthy_everywhere, timeout=20, message="a healthy fleet")
        a, b, c = nodes
        with a.client() as ca:
            ca.put("/v1/kv/split/before", content=b"everyone")
        wait_for(lambda: converged(nodes, "split", {"before": b"everyone"}), timeout=10, message="before")

        network.cut(2)  # c is alone now
        with a.client() as ca, c.client() as cc:
            for i in range(5):
                assert ca.put(f"/v1/kv/split/majority-{i}", content=b"a").status_code == 200
                assert cc.put(f"/v1/kv/split/minority-{i}", content=b"c").status_code == 200
            assert cc.put("/v1/kv/split/contested", content=b"c").status_code == 200
            assert ca.put("/v1/kv/split/contested", content=b"a").status_code == 200
            assert cc.delete("/v1/kv/split/before").status_code == 204
        time.sleep(1.0)  # several push attempts and sync rounds fail across the cut
        assert "majority-0" not in kv_state(c, "split")
        assert "minority-0" not in kv_state(b, "split")

        network.heal(2)
        state = wait_for(lambda: converged(nodes, "split"), timeout=30, message="convergence after healing")
        assert {f"majority-{i}" for i in range(5)} <= set(state)
        assert {f"minority-{i}" for i in range(5)} <= set(state)
        assert "before" not in state  # c's delete crossed the healed link
        assert state["contested"] in (b"a", b"c")
    finally:
        for n in nodes:
            n.stop()
