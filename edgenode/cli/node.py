"""Commands that run or administer a node: serve, init, status, token, settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from edgenode.cli.client import ClientContext, pass_client
from edgenode.cli.output import duration, echo_table, emit, json_mode
from edgenode.config import Config, describe
from edgenode.errors import EdgenodeError


def _load_config(config_file: Path | None, overrides: dict[str, Any]) -> Config:
    try:
        return Config.load(toml_file=config_file, overrides=overrides)
    except EdgenodeError as exc:
        raise click.UsageError(exc.message) from exc


_data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (databases, node id, admin token). [default: ./.edgenode]",
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file; environment variables and flags override it.",
)


@click.command()
@_data_option
@click.option("--listen", help="HOST:PORT to serve on; port 0 picks a free port. [default: 127.0.0.1:8787]")
@click.option("--peer", "peers", multiple=True,
              help="A peer to cluster with: its base URL (http://HOST:PORT) or its NATS route "
                   "(nats-route://HOST:PORT); one is enough, repeat for several.")
@click.option("--hub", "hubs", multiple=True, metavar="nats://HOST:PORT",
              help="A hub server's leaf listener to dial out to as a leaf node (large fleets); repeat for several.")
@click.option("--nats-url", help="An operator's NATS to use instead of running a child nats-server.")
@click.option(
    "--fleet-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the fleet secret that authenticates peers (or EDGENODE_FLEET_SECRET).",
)
@_config_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
@click.option("--log-format", type=click.Choice(["json", "text"]), help="Log format.")
@click.option("--accept-fresh-db", "accept_fresh_db", multiple=True, metavar="NAME",
              help="Start with a fresh, empty NAME (node.db, agents.db, ...) although this node created it and it "
                   "is now missing, empty or damaged (a damaged file is moved aside); repeat for several.")
def serve(
    data_dir: Path | None,
    listen: str | None,
    peers: tuple[str, ...],
    hubs: tuple[str, ...],
    nats_url: str | None,
    fleet_secret_file: Path | None,
    config_file: Path | None,
    log_level: str | None,
    log_format: str | None,
    accept_fresh_db: tuple[str, ...],
) -> None:
    """Run a node in the foreground until SIGTERM or SIGINT.

    Settings: defaults < TOML file (--config) < EDGENODE_* environment < flags.
    `edgenode settings` lists every setting and its variable.
    """
    from edgenode import logs
    from edgenode.node import Node
    from edgenode.serve import run

    config = _load_config(
        config_file,
        {
            "data_dir": data_dir,
            "listen": listen,
            "peers": list(peers),
            "cluster.hubs": list(hubs),
            "cluster.nats_url": nats_url,
            "fleet_secret_file": str(fleet_secret_file) if fleet_secret_file else None,
            "log_level": log_level,
            "log_format": log_format,
            "store.accept_fresh_db": list(accept_fresh_db),
        },
    )
    try:
        node = Node(config)
        logs.configure(config.log_level, config.log_format, node.id)
        run(node)
    except EdgenodeError as exc:
        raise click.ClickException(exc.message) from exc


@click.command()
@_data_option
@_config_option
def init(data_dir: Path | None, config_file: Path | None) -> None:
    """Create a data directory: node id, admin token and databases; print where they are."""
    from edgenode.node import Node

    config = _load_config(config_file, {"data_dir": data_dir})
    node = Node(config)

    async def once() -> None:
        await node.start()
        await node.stop()

    asyncio.run(once())
    token_file = node.data_dir / "admin-token"
    where = str(token_file) if token_file.exists() else "(from config or EDGENODE_ADMIN_TOKEN)"

    def human(_: Any) -> None:
        click.echo(f"data directory: {node.data_dir}")
        click.echo(f"node id:        {node.id}")
        click.echo(f"admin token:    {where}")
    emit({"data_dir": str(node.data_dir), "node_id": node.id, "admin_token_file": where}, human)


@click.command()
@pass_client
def status(client: ClientContext) -> None:
    """Show a running node's health, identity and capabilities."""
    health = client.request("GET", "/healthz")
    detail = client.request("GET", "/v1/status") if client.bearer() else None
    emit({"health": health, "status": detail}, lambda _: _print_status(client, health, detail))


def _print_status(client: ClientContext, health: dict[str, Any], detail: dict[str, Any] | None) -> None:
    lines = [("node", f"{health['node']}  (edgenode {health['version']})  {health['status']}"),
             ("url", client.base_url())]
    if detail:
        if detail.get("uptime_s") is not None:
            lines.append(("uptime", duration(detail["uptime_s"])))
        lines += [(name, _summary(summary)) for name, summary in detail.get("capabilities", {}).items()]
    width = max(len(name) for name, _ in lines) + 2
    for name, text in lines:
        click.echo(f"{name:<{width}}{text}")


def _summary(summary: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))


@click.group()
def token() -> None:
    """Create, list and revoke bearer tokens (needs an admin token)."""


@token.command("create")
@click.argument("tenant")
@click.option("--name", default="", help="A label to recognise the token by.")
@click.option("--ttl", "ttl_s", type=float, help="Seconds until the token expires (default: never).")
@click.option("--admin", is_flag=True, help="Make an admin token (may manage tenants and tokens).")
@pass_client
def token_create(client: ClientContext, tenant: str, name: str, ttl_s: float | None, admin: bool) -> None:
    """Issue a token for TENANT (created if new); the secret is printed once."""
    issued = client.request("POST", "/v1/tokens", json={"tenant": tenant, "name": name, "ttl_s": ttl_s,
                                                        "admin": admin})

    def human(i: dict[str, Any]) -> None:
        click.echo(i["token"])
        click.echo(f"id {i['id']} for tenant {i['tenant']}", err=True)
    emit(issued, human)


@token.command("list")
@click.option("--tenant", help="Only this tenant's tokens.")
@pass_client
def token_list(client: ClientContext, tenant: str | None) -> None:
    """List tokens (never their secrets)."""
    data = client.request("GET", "/v1/tokens", params={"tenant": tenant} if tenant else None)
    emit(data, lambda d: echo_table(d["tokens"], ["id", "tenant", "name", "admin", "state", "created_at",
                                                   "expires_at"]))


@token.command("revoke")
@click.argument("token_id")
@pass_client
def token_revoke(client: ClientContext, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID; it stops working at once."""
    client.request("DELETE", f"/v1/tokens/{token_id}")
    emit({"revoked": token_id}, lambda _: click.echo(f"revoked {token_id}"))


@click.command()
@click.option("--toml", "as_toml", is_flag=True, help="Print an example TOML file with every default.")
def settings(as_toml: bool) -> None:
    """List every setting with its environment variable, default and help."""
    rows = describe()
    if json_mode():
        emit([{"setting": d, "env": e, "default": v, "help": h} for d, e, v, h in rows])
        return
    if not as_toml:
        for dotted, env, default, help_text in rows:
            click.echo(f"{dotted}\n    {env} (default: {default!r})\n    {help_text}")
        return
    section = ""
    for dotted, _, default, help_text in rows:
        head, _, name = dotted.rpartition(".")
        if head != section:
            section = head
            click.echo(f"\n[{head}]")
        click.echo(f"# {help_text}")
        click.echo(f"# {name} = {_toml_value(default)}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["init", "serve", "settings", "status", "token"]
