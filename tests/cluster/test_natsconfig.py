"""What a fleet secret and the fleet settings turn into: keys, addresses, server configs; bad input refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgenode.cluster.fleet import split_peers
from edgenode.cluster.natsserver import FleetKeys, find_binary, hostport, node_server_config
from edgenode.config import Config
from edgenode.errors import ValidationFailed
from edgenode.node import Node


def test_keys_are_derived_per_purpose_and_per_fleet() -> None:
    a, again, other = (FleetKeys.from_secret(s) for s in (b"one", b"one", b"two"))
    assert a == again and a != other
    assert len({a.client_password, a.route_password, a.leaf_password}) == 3
    assert a.prefix == f"edn.{a.fleet_id}" and a.fleet_id != other.fleet_id
    assert a.stream("state") == f"EDN_{a.fleet_id.upper()}_STATE"
    assert a.route_url("h:1").startswith(f"nats-route://route:{a.route_password}@h:1")


def test_peers_are_node_urls_or_routes() -> None:
    urls, routes = split_peers(["http://10.0.0.1:8787/", "nats-route://10.0.0.2:6222", "nats://[::1]:7000"])
    assert urls == ["http://10.0.0.1:8787"] and routes == ["10.0.0.2:6222", "[::1]:7000"]
    assert hostport("nats://hub", schemes=("nats",), default_port=7422) == "hub:7422"


@pytest.mark.parametrize("bad", ["ftp://x:1", "x:1:2", "nats-route://h:99999", "nats-route://h:1/path"])
def test_bad_peer_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        split_peers([bad])


def test_a_node_refuses_to_start_with_a_bad_peer_or_hub(tmp_path: Path) -> None:
    for overrides in ({"peers": ["gopher://x"]}, {"cluster.hubs": ["http://not-a-hub"]}):
        config = Config.load(env={}, overrides={"data_dir": tmp_path / "d", "fleet_secret": "s", **overrides})
        node = Node(config)
        with pytest.raises(ValidationFailed):
            asyncio.run(node.start())
        assert not (tmp_path / "d" / "nats" / "nats-server.pid").exists()


def test_server_configs_for_each_shape(tmp_path: Path) -> None:
    keys = FleetKeys.from_secret(b"s")
    clustered = node_server_config(name="n1", keys=keys, store_dir=tmp_path, client_port=4000,
                                   cluster_listen="127.0.0.1:6000", routes=["127.0.0.1:6001"])
    assert clustered["listen"] == "127.0.0.1:4000"  # clients: this node only
    assert clustered["authorization"]["password"] == keys.client_password
    assert clustered["cluster"]["name"] == f"edn-{keys.fleet_id}"
    assert keys.route_url("127.0.0.1:6001") in clustered["cluster"]["routes"]
    assert "leafnodes" not in clustered
    leaf = node_server_config(name="n1", keys=keys, store_dir=tmp_path, client_port=4000, hubs=["hub:7422"],
                              domain="edn-n1")
    assert "cluster" not in leaf and leaf["jetstream"]["domain"] == "edn-n1"
    assert leaf["leafnodes"]["remotes"][0]["urls"] == [keys.leaf_url("hub:7422")]


def test_the_wheel_binary_is_found() -> None:
    assert Path(find_binary()).name == "nats-server"
