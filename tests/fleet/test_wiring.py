"""FleetControl, the one object a node adds: started on the cluster's transport, nothing without one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from edgenode.config import Config
from edgenode.errors import TokenRevoked, Unauthorized
from edgenode.fleet.wiring import FleetControl
from edgenode.node import Node
from tests.fleet_support import LoopThread, NatsServer, StreamTransport
from tests.support import wait_for

SECRET = "fleet-secret-for-the-wiring-tests"


async def _node(root: Path, nats_url: str | None) -> tuple[Node, FleetControl, Any]:
    overrides: dict[str, Any] = {"data_dir": root}
    if nats_url is not None:
        overrides["fleet_secret"] = SECRET
    node = Node(Config.load(env={}, overrides=overrides))
    node.capabilities.remove(node.cluster)  # no peer mesh here: the transport below is the fleet
    await node.start()
    nc = None
    if nats_url is not None:
        # Handed over after the node started, so only the control plane sees it (state replication does not).
        nc = await nats.connect(nats_url)
        node.cluster.transport = StreamTransport(nc, prefix="edn.wiring", stream_prefix="EDN_WIRING")  # type: ignore[attr-defined]
    control = FleetControl(node)
    await control.start()
    return node, control, nc


async def _stop(node: Node, control: FleetControl, nc: Any) -> None:
    await control.stop()
    await node.stop()
    if nc is not None:
        await nc.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, NatsServer, Path]]:
    root = tmp_path_factory.mktemp("wiring")
    server = NatsServer(root / "nats").start()
    loop = LoopThread()
    yield loop, server, root
    loop.close()
    server.stop()


def test_two_nodes_share_tokens_through_their_fleet_control(world: tuple[LoopThread, NatsServer, Path]) -> None:
    loop, server, root = world
    (a, ca, na), (b, cb, nb) = (loop.run(_node(root / name, server.url)) for name in ("a", "b"))
    try:
        issued = loop.run(a.auth.create_token("acme"))

        def works() -> bool:
            try:
                return b.auth.authenticate(issued.token).tenant == "acme"
            except Unauthorized:
                return False

        wait_for(works, message="the token on b")
        loop.run(b.auth.revoke_token(issued.id))

        def revoked() -> bool:
            try:
                a.auth.authenticate(issued.token)
            except TokenRevoked:
                return True
            return False

        wait_for(revoked, message="the revocation on a")
        # Every record b published applied on a and its stamp recorded (the revocation holds a moment
        # before that bookkeeping is written; a stop in between replays the record at the next start).
        wait_for(lambda: ca.status()["control"]["applied"] >= cb.status()["control"]["published"] >= 1,
                 message="a to record what it applied")
        status = cb.status()
        assert status["joined"] and status["control"]["caught_up"] and status["refbus"] is not None
        # a restarts on its data (its ledger now knows fleet.db) and replays to the same answer
        loop.run(_stop(a, ca, na))
        a, ca, na = loop.run(_node(root / "a", server.url))
        wait_for(lambda: ca.joined, message="a to join again")
        assert revoked() and ca.status()["control"]["applied"] == 0
    finally:
        for node, control, nc in ((a, ca, na), (b, cb, nb)):
            loop.run(_stop(node, control, nc))


def test_a_node_outside_a_fleet_starts_no_fleet_services(world: tuple[LoopThread, NatsServer, Path]) -> None:
    loop, _, root = world
    node, control, _ = loop.run(_node(root / "alone", None))
    try:
        assert control.status() == {"joined": False, "control": None, "refbus": None}
        assert not (root / "alone" / "fleet.db").exists()
        loop.run(node.auth.create_token("acme"))  # no listener: nothing is published, nothing fails
    finally:
        loop.run(_stop(node, control, None))
