"""``edgenode sandbox``: create, exec (streamed to the terminal), list and remove sandboxes."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import httpx

from edgenode.cli.client import ClientContext, check, echo_json, echo_table, pass_client


@click.group("sandbox")
def sandbox() -> None:
    """Persistent Linux workspaces: create, exec, ls, rm."""


@sandbox.command("create")
@click.option("--name", help="A name, unique per tenant, usable instead of the id.")
@click.option("--allow", "allow", multiple=True,
              help="Host the sandbox may reach through the egress proxy (host, host:port, *.domain, node); "
                   "repeat. Default: no network.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="A limit such as memory_mb=512, pids=64, disk_mb=2048, timeout_s=60; repeat.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@pass_client
def create(client: ClientContext, name: str | None, allow: tuple[str, ...], limits: tuple[str, ...],
           as_json: bool) -> None:
    """Create a sandbox and print its id."""
    body: dict[str, Any] = {}
    if name:
        body["name"] = name
    if allow:
        body["network"] = {"allow": list(allow)}
    if limits:
        parsed: dict[str, int] = {}
        for item in limits:
            key, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise click.BadParameter(f"{item!r} is not NAME=INTEGER", param_hint="--limit")
            parsed[key.strip()] = int(value)
        body["limits"] = parsed
    created = client.request("POST", "/v1/sandboxes", json=body)
    if as_json:
        echo_json(created)
    else:
        click.echo(created["id"])


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_ref")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", help="Working directory (relative to /workspace, or absolute inside the sandbox).")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable; repeat.")
@click.option("--timeout", "timeout_s", type=float, help="Seconds before the command is killed.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Send this command's standard input to the command.")
@pass_client
def exec_command(client: ClientContext, sandbox_ref: str, command: tuple[str, ...], cwd: str | None,
                 env: tuple[str, ...], timeout_s: float | None, use_stdin: bool) -> None:
    """Run COMMAND in SANDBOX_REF, streaming its output; exits with the command's exit code.

    One argument is run by /bin/sh -c (so pipes and globs work); several are run as argv.
    """
    body: dict[str, Any] = {"cmd": command[0] if len(command) == 1 else list(command)}
    if cwd:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(item.partition("=")[::2] for item in env)
    if timeout_s:
        body["timeout_s"] = timeout_s
    if use_stdin:
        body["stdin"] = sys.stdin.read()
    http = client.client()
    timeout = client.timeout(long=True)
    with client.reaching("the exec", timeout), \
            http.stream("POST", f"/v1/sandboxes/{sandbox_ref}/exec", json=body,
                        headers={"accept": "text/event-stream"}, timeout=timeout) as response:
        if response.is_error:
            response.read()
            check(response)
        result = _print_events(response)
    if result is None:
        raise click.ClickException("the stream ended without an exit event")
    if result.get("timed_out"):
        click.echo(f"edgenode: timed out after {result.get('duration_ms')} ms", err=True)
    if any((result.get("truncated") or {}).values()):
        click.echo("edgenode: output was truncated", err=True)
    code = result.get("exit_code")
    sys.exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def _print_events(response: httpx.Response) -> dict[str, Any] | None:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
            if event == "exit":
                return dict(data)
            text = data.get("line", "") + ("" if data.get("partial") else "\n")
            stream = sys.stderr if event == "stderr" else sys.stdout
            stream.write(text)
            stream.flush()
    return None


@sandbox.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@pass_client
def list_sandboxes(client: ClientContext, as_json: bool) -> None:
    """List your sandboxes."""
    data = client.request("GET", "/v1/sandboxes")
    if as_json:
        echo_json(data)
        return
    rows = [{**s, "network": json.dumps(s["network"]) if isinstance(s["network"], dict) else s["network"]}
            for s in data["sandboxes"]]
    echo_table(rows, ["id", "name", "state", "network", "processes", "created_at", "last_used_at"])


@sandbox.command("rm")
@click.argument("sandbox_refs", nargs=-1, required=True)
@pass_client
def remove(client: ClientContext, sandbox_refs: tuple[str, ...]) -> None:
    """Destroy sandboxes and their workspaces."""
    for ref in sandbox_refs:
        client.request("DELETE", f"/v1/sandboxes/{ref}")
        click.echo(f"removed {ref}")


__all__ = ["sandbox"]
