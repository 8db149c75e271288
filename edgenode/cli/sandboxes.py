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


@sandbox.command("shell")
@click.argument("sandbox_ref")
@click.option("--cmd", default=None, help="Command to run on the terminal (default: bash, else sh).")
@click.option("--session", default=None, help="A session whose cwd and env the shell starts with.")
@pass_client
def shell(client: ClientContext, sandbox_ref: str, cmd: str | None, session: str | None) -> None:
    """An interactive terminal in a sandbox (exits with the shell's exit code)."""
    import os
    import select
    import shutil
    import signal
    import termios
    import tty
    from urllib.parse import urlencode

    from edgenode.client.websocket import WebSocket, WebSocketClosed

    size = shutil.get_terminal_size()
    query = {"rows": size.lines, "cols": size.columns, **({"cmd": cmd} if cmd else {}),
             **({"session": session} if session else {})}
    url = client.base_url().replace("https://", "wss://").replace("http://", "ws://")
    token = client.bearer()
    try:
        sock = WebSocket(f"{url}/v1/sandboxes/{sandbox_ref}/pty?{urlencode(query)}",
                         headers={"authorization": f"Bearer {token}"} if token else {}, timeout=None)
    except (OSError, WebSocketClosed) as exc:
        raise click.ClickException(f"cannot open a terminal in {sandbox_ref}: {exc}") from None
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    resized = [False]

    def on_winch(signum: int, frame: object) -> None:
        resized[0] = True

    previous = signal.signal(signal.SIGWINCH, on_winch)
    code = 1
    try:
        if interactive:
            tty.setraw(stdin)
        while True:
            if resized[0]:
                resized[0] = False
                now = shutil.get_terminal_size()
                sock.send_text(json.dumps({"resize": [now.lines, now.columns]}))
            try:
                ready = [sock] if sock.pending() else select.select([sock, stdin], [], [], 0.5)[0]
            except InterruptedError:
                continue
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    sock.send_text(json.dumps({"input": "\x04"}))
                else:
                    sock.send_bytes(data)
            if sock in ready:
                message = sock.recv()
                if isinstance(message, bytes):
                    os.write(sys.stdout.fileno(), message)
                    continue
                event = json.loads(message)
                if "exit" in event:
                    code = int(event["exit"] if event["exit"] is not None else 128 + (event["signal"] or 9))
                    break
                if "error" in event:
                    os.write(sys.stderr.fileno(), f"\r\n[edgenode] {event['error']}\r\n".encode())
    except WebSocketClosed as exc:
        if exc.code >= 4000:
            raise click.ClickException(f"the terminal closed: {exc.reason}") from None
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        sock.close()
    sys.exit(code)


@sandbox.group("image")
def image() -> None:
    """Root file systems on the node that sandboxes may run on (--image): add, ls, rm."""


@image.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, resolve_path=True))
@pass_client
def image_add(client: ClientContext, name: str, path: str) -> None:
    """Make image NAME from a directory or tarball on the node's machine (it needs usr/bin/python3).

    From Debian packages: debootstrap --variant=minbase --include=python3 bookworm DIR, then add DIR.
    """
    client.request("POST", "/v1/sandbox-images", json={"name": name, "path": path})
    click.echo(f"added image {name}")


@image.command("ls")
@pass_client
def image_ls(client: ClientContext) -> None:
    """List the node's sandbox images."""
    echo_table(client.request("GET", "/v1/sandbox-images")["images"], ["name", "kind", "source", "created_at"])


@image.command("rm")
@click.argument("name")
@pass_client
def image_rm(client: ClientContext, name: str) -> None:
    """Remove an image no sandbox runs on."""
    client.request("DELETE", f"/v1/sandbox-images/{name}")
    click.echo(f"removed image {name}")


__all__ = ["sandbox"]
