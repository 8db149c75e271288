"""Commands for state and the fleet: ``edgenode kv get|put|ls|rm``, ``edgenode sql``, ``edgenode cluster``."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

import click
import httpx

from edgenode.cli.client import ClientContext, check, pass_client
from edgenode.cli.output import echo_table, emit, json_mode


def _raw(client: ClientContext, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = client.send(method, path, **kwargs)
    if response.is_error:
        check(response)
    return response


def _kv_path(namespace: str, key: str) -> str:
    return f"/v1/kv/{quote(namespace, safe='')}/{quote(key, safe='')}"


@click.group()
def kv() -> None:
    """Read and write a namespace's key-value pairs (values are raw bytes)."""


@kv.command("get")
@click.argument("namespace")
@click.argument("key")
@click.option("--show-version", "show_version", is_flag=True, help="Print the key's version to stderr.")
@pass_client
def kv_get(client: ClientContext, namespace: str, key: str, show_version: bool) -> None:
    """Print the value of KEY in NAMESPACE to stdout, as is."""
    response = _raw(client, "GET", _kv_path(namespace, key))
    if json_mode():
        emit({"key": key, "version": response.headers.get("etag", "").strip('"'),
              "value": response.content.decode(errors="replace")})
        return
    if show_version:
        click.echo(response.headers.get("etag", "").strip('"'), err=True)
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()


@kv.command("put")
@click.argument("namespace")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--file", "source", type=click.File("rb"), help="Read the value from a file ('-' for stdin).")
@click.option("--if-version", help="Only if the key is at this version (compare-and-set).")
@click.option("--create-only", is_flag=True, help="Only if the key does not exist yet.")
@pass_client
def kv_put(client: ClientContext, namespace: str, key: str, value: str | None, source: Any,
           if_version: str | None, create_only: bool) -> None:
    """Set KEY in NAMESPACE to VALUE (or --file); prints the new version."""
    if (value is None) == (source is None):
        raise click.UsageError("give a VALUE or --file, not both")
    body = value.encode() if value is not None else source.read()
    headers = {}
    if if_version:
        headers["if-match"] = f'"{if_version}"'
    if create_only:
        headers["if-none-match"] = "*"
    response = _raw(client, "PUT", _kv_path(namespace, key), content=body, headers=headers)
    emit(response.json(), lambda r: click.echo(r["version"]))


@kv.command("ls")
@click.argument("namespace")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--page-size", "limit", default=1000, show_default=True, help="Keys per request.")
@click.option("--all", "everything", is_flag=True, help="Follow cursors to list every key.")
@pass_client
def kv_ls(client: ClientContext, namespace: str, prefix: str, limit: int, everything: bool) -> None:
    """List keys of NAMESPACE in order."""
    cursor: str | None = None
    keys: list[str] = []
    while True:
        params = {"prefix": prefix, "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        page = client.request("GET", f"/v1/kv/{quote(namespace, safe='')}", params=params)
        keys += page["keys"]
        if not json_mode():
            for key in page["keys"]:
                click.echo(key)
        cursor = page.get("cursor")
        if not everything or not cursor:
            break
    if json_mode():
        emit({"keys": keys, "cursor": cursor})


@kv.command("rm")
@click.argument("namespace")
@click.argument("key")
@click.option("--if-version", help="Only if the key is at this version.")
@pass_client
def kv_rm(client: ClientContext, namespace: str, key: str, if_version: str | None) -> None:
    """Delete KEY from NAMESPACE."""
    headers = {"if-match": f'"{if_version}"'} if if_version else {}
    _raw(client, "DELETE", _kv_path(namespace, key), headers=headers)
    emit({"deleted": key}, lambda _: None)


@click.command()
@click.argument("namespace")
@click.argument("query")
@click.option("-p", "--param", "params", multiple=True, help="A positional parameter (JSON, else a string).")
@pass_client
def sql(client: ClientContext, namespace: str, query: str, params: tuple[str, ...]) -> None:
    """Run QUERY in NAMESPACE's own SQLite database."""
    values: list[Any] = []
    for p in params:
        try:
            values.append(json.loads(p))
        except ValueError:
            values.append(p)
    result = client.request("POST", f"/v1/sql/{quote(namespace, safe='')}", json={"sql": query, "params": values})
    if json_mode():
        emit(result)
    elif result["columns"]:
        echo_table([dict(zip(result["columns"], row, strict=True)) for row in result["rows"]], result["columns"])
    else:
        click.echo(f"{result['rows_affected']} row(s) changed", err=True)


@click.command()
@pass_client
def cluster(client: ClientContext) -> None:
    """Show the fleet's members, their health and replication lag (in stream messages)."""
    data = client.request("GET", "/v1/cluster")
    emit(data, _print_cluster)


def _print_cluster(data: dict[str, Any]) -> None:
    nats = data.get("nats") or {}
    click.echo(f"node {data['node_id']}  {data['url']}  fleet={'on' if data['fleet_enabled'] else 'off'}"
               + (f"  shape={nats.get('shape')}  nats={'up' if nats.get('connected') else 'down'}" if nats else ""))
    echo_table(data.get("members", []), ["node_id", "url", "healthy", "last_seen_ago_s", "applied_seq",
                                         "lag_messages", "blocked_namespaces"])
    for blocked in data.get("blocked_namespaces", []):
        click.echo(f"blocked: {blocked['tenant']}/{blocked['namespace']} from {blocked['peer']}: "
                   f"{blocked['reason']}", err=True)


__all__ = ["cluster", "kv", "sql"]
