"""``edgenode sandbox``: create, exec (streamed), files, background processes (ps, logs, kill), ls, rm."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from edgenode.cli.base import CliError, TrailingCommand
from edgenode.cli.client import ClientContext, pass_client
from edgenode.cli.output import byte_size, echo_table, emit, json_mode
from edgenode.client import _calls as calls
from edgenode.client.errors import transport_error

_env_option = click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
                           help="An environment variable for the command; repeat.")


def pairs(items: tuple[str, ...], flag: str, *, integers: bool = False) -> dict[str, Any]:
    """``NAME=VALUE`` options as a dict (values as integers with ``integers``); a usage error otherwise."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or (integers and not value.strip().isdigit()):
            raise click.BadParameter(f"{item!r} is not NAME={'INTEGER' if integers else 'VALUE'}", param_hint=flag)
        parsed[key.strip()] = int(value) if integers else value
    return parsed


@click.group("sandbox")
def sandbox() -> None:
    """Persistent Linux workspaces: create, exec, files, ps, logs, kill, ls, rm."""


@sandbox.command("create")
@click.option("--name", help="A name, unique per tenant, usable instead of the id.")
@click.option("--allow", "allow", multiple=True,
              help="Host the sandbox may reach through the egress proxy (host, host:port, *.domain, node); "
                   "repeat. Default: no network.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="A limit such as memory_mb=512, pids=64, disk_mb=2048, timeout_s=60; repeat.")
@pass_client
def create(client: ClientContext, name: str | None, allow: tuple[str, ...], limits: tuple[str, ...]) -> None:
    """Create a sandbox and print its id."""
    network = {"allow": list(allow)} if allow else None
    box = client.sdk().sandboxes.create(name, network=network, limits=pairs(limits, "--limit", integers=True) or None)
    emit(box.info, lambda info: click.echo(info["id"]))


def _exec_body(command: tuple[str, ...], cwd: str | None, env: tuple[str, ...], kill_after_s: float | None,
               use_stdin: bool) -> dict[str, Any]:
    if not command:
        raise click.UsageError("give the command to run after the sandbox (or after --)")
    options: dict[str, Any] = {"cwd": cwd, "env": pairs(env, "--env") or None, "timeout_s": kill_after_s}
    if use_stdin:
        options["stdin"] = sys.stdin.read()
    return calls.exec_body(command[0] if len(command) == 1 else list(command), options)


@sandbox.command("exec", cls=TrailingCommand)
@click.argument("sandbox_ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--cwd", help="Working directory (relative to /workspace, or absolute inside the sandbox).")
@_env_option
@click.option("--kill-after", "kill_after_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds before the command is killed (default: the sandbox's timeout_s limit).")
@click.option("--stdin", "use_stdin", is_flag=True, help="Send this command's standard input to the command.")
@click.option("--background", is_flag=True, help="Start it as a background process and print its id (see ps, logs).")
@pass_client
def exec_command(client: ClientContext, sandbox_ref: str, command: tuple[str, ...], cwd: str | None,
                 env: tuple[str, ...], kill_after_s: float | None, use_stdin: bool, background: bool) -> None:
    """Run COMMAND in SANDBOX_REF, streaming its output; exits with the command's exit status.

    Everything after the sandbox (or after --) is the command, untouched: `exec work ls -h`,
    `exec work -- grep -e root /etc/passwd`. One word is run by /bin/sh -c (pipes and globs
    work); several are run as argv. Options of exec itself go before the command.
    """
    body = _exec_body(command, cwd, env, kill_after_s, use_stdin)
    sdk = client.sdk()
    if background:
        proc = sdk.send(calls.process_start(sandbox_ref, body))
        emit(proc, lambda p: click.echo(p["id"]))
        return
    if json_mode():
        result = sdk.send(_bounded(client, calls.sandbox_exec(sandbox_ref, body)))
        emit(result.raw)
        sys.exit(_status(result.raw))
    final = _stream(client, calls.sandbox_exec(sandbox_ref, body, stream=True))
    if final.get("timed_out"):
        click.echo(f"edgenode: the command was killed after {final.get('duration_ms')} ms", err=True)
    if any((final.get("truncated") or {}).values()):
        click.echo("edgenode: output was truncated", err=True)
    sys.exit(_status(final))


def _bounded(client: ClientContext, call: calls.Call[Any]) -> calls.Call[Any]:
    """``call`` bounded by ``--timeout`` when it is given (the node bounds it otherwise)."""
    return dataclasses.replace(call, node_bounded=False) if client.timeout_s is not None else call


def _status(result: dict[str, Any]) -> int:
    code = result.get("exit_code")
    return code if isinstance(code, int) and 0 <= code < 256 else 1


def _stream(client: ClientContext, call: calls.Call[Any]) -> dict[str, Any]:
    """Print a streamed exec's lines as they come (stderr to stderr); the exit event's result."""
    response = client.sdk().open_stream(_bounded(client, call))
    parser = calls.SseParser()
    try:
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is None:
                continue
            if event.kind == "exit" and event.result is not None:
                return event.result.raw
            stream = sys.stderr if event.kind == "stderr" else sys.stdout
            stream.write(event.line + ("" if event.partial else "\n"))
            stream.flush()
    except httpx.TransportError as exc:
        raise transport_error(client.base_url(), exc, f"{call.method} {call.path}",
                              client.timeout(long=True).read) from exc
    finally:
        response.close()
    raise CliError("stream_ended", "the stream ended without an exit event")


@sandbox.command("ls")
@pass_client
def list_sandboxes(client: ClientContext) -> None:
    """List your sandboxes."""
    boxes = [box.info for box in client.sdk().sandboxes.list()]
    rows = [{**s, "network": _network(s.get("network"))} for s in boxes]
    emit({"sandboxes": boxes},
         lambda _: echo_table(rows, ["id", "name", "state", "network", "processes", "created_at", "last_used_at"]))


def _network(network: Any) -> str:
    if isinstance(network, dict):
        return ",".join(network.get("allow") or []) or "none"
    return str(network or "none")


@sandbox.command("show")
@click.argument("sandbox_ref")
@pass_client
def show(client: ClientContext, sandbox_ref: str) -> None:
    """Show a sandbox: state, limits, disk use, egress counters."""
    emit(client.sdk().sandboxes.get(sandbox_ref).info)


@sandbox.command("rm")
@click.argument("sandbox_refs", nargs=-1, required=True)
@pass_client
def remove(client: ClientContext, sandbox_refs: tuple[str, ...]) -> None:
    """Destroy sandboxes and their workspaces."""
    for ref in sandbox_refs:
        client.sdk().send(calls.sandbox_delete(ref))
    emit({"removed": list(sandbox_refs)}, lambda _: click.echo("\n".join(f"removed {ref}" for ref in sandbox_refs)))


# -- checkpoints -------------------------------------------------------------------


@sandbox.command("checkpoint")
@click.argument("sandbox_ref")
@click.option("--show", is_flag=True, help="Print the latest checkpoint instead of making one (on any node).")
@click.option("--forget", is_flag=True, help="Forget the sandbox's checkpoint fleet-wide.")
@pass_client
def checkpoint(client: ClientContext, sandbox_ref: str, show: bool, forget: bool) -> None:
    """Checkpoint SANDBOX_REF's workspace into the fleet (files only; processes are not kept).

    Another node restores it with `edgenode sandbox restore SANDBOX_REF`.
    """
    if show and forget:
        raise click.UsageError("--show and --forget do not go together")
    sdk = client.sdk()
    if forget:
        sdk.sandboxes.forget_checkpoint(sandbox_ref)
        emit({"forgotten": sandbox_ref}, lambda _: click.echo(f"forgot the checkpoint of {sandbox_ref}"))
        return
    if show:
        emit(sdk.sandboxes.checkpoint(sandbox_ref), _print_checkpoint)
        return
    emit(sdk.send(calls.sandbox_checkpoint(sandbox_ref)), _print_checkpoint)


def _print_checkpoint(info: dict[str, Any]) -> None:
    click.echo(f"manifest {info['manifest']}")
    click.echo(f"sandbox  {info['sandbox']}" + (f" ({info['name']})" if info.get("name") else ""))
    click.echo(f"files    {info.get('files')} ({byte_size(info.get('bytes') or 0)}), {info.get('entries')} entries")
    if "uploaded_bytes" in info:
        click.echo(f"uploaded {byte_size(info['uploaded_bytes'])}, reused {byte_size(info['reused_bytes'])}, "
                   f"{info['duration_ms']} ms")
        if info.get("skipped"):
            click.echo(f"skipped  {', '.join(info['skipped'])} (not files)")


@sandbox.command("restore")
@click.argument("sandbox_ref")
@pass_client
def restore(client: ClientContext, sandbox_ref: str) -> None:
    """Make SANDBOX_REF again on this node from its latest fleet checkpoint (same id and name); print its id."""
    box = client.sdk().sandboxes.restore(sandbox_ref)
    emit(box.info, lambda info: click.echo(info["id"]))


# -- background processes --------------------------------------------------------


@sandbox.command("ps")
@click.argument("sandbox_ref")
@pass_client
def ps(client: ClientContext, sandbox_ref: str) -> None:
    """List a sandbox's background processes (started with `exec --background`)."""
    procs = client.sdk().send(calls.process_list(sandbox_ref))
    rows = [{**p, "command": " ".join(p.get("argv") or []), "log": byte_size(p.get("log_bytes") or 0)}
            for p in procs]
    emit({"processes": procs},
         lambda _: echo_table(rows, ["id", "pid", "state", "exit_code", "started_at", "log", "command"]))


@sandbox.command("logs")
@click.argument("sandbox_ref")
@click.argument("process_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the process exits.")
@pass_client
def logs(client: ClientContext, sandbox_ref: str, process_id: int, follow: bool) -> None:
    """Print a background process's output (stdout and stderr, as written)."""
    call = _bounded(client, calls.process_logs(sandbox_ref, process_id, follow))
    if json_mode():
        emit({"id": process_id, "log": client.sdk().send(call)})
        return
    response = client.sdk().open_stream(call)
    try:
        for chunk in response.iter_text():
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except httpx.TransportError as exc:
        raise transport_error(client.base_url(), exc, f"{call.method} {call.path}", None) from exc
    finally:
        response.close()


@sandbox.command("kill")
@click.argument("sandbox_ref")
@click.argument("process_id", type=int)
@click.option("--signal", "signal_name", default="KILL", show_default=True,
              help="Signal to send to the process group (TERM, INT, HUP, KILL or a number).")
@pass_client
def kill(client: ClientContext, sandbox_ref: str, process_id: int, signal_name: str) -> None:
    """Send a signal to a background process's group."""
    signal: str | int = int(signal_name) if signal_name.isdigit() else signal_name
    proc = client.sdk().send(calls.process_signal(sandbox_ref, process_id, signal))
    emit(proc, lambda p: click.echo(f"{p['id']} {p['state']}"))


# -- files -----------------------------------------------------------------------


@sandbox.group("files")
def files() -> None:
    """Read, write, list and delete files in a sandbox's workspace."""


@files.command("ls")
@click.argument("sandbox_ref")
@click.argument("path", default="")
@pass_client
def files_ls(client: ClientContext, sandbox_ref: str, path: str) -> None:
    """List a directory of the workspace (the workspace itself by default)."""
    entries = client.sdk().send(calls.file_list(sandbox_ref, path))
    rows = [{**e, "size": byte_size(e["size"]) if e.get("type") == "file" else "-", "modified_at": e.get("mtime")}
            for e in entries]
    emit({"path": path, "entries": entries},
         lambda _: echo_table(rows, ["name", "type", "size", "mode", "modified_at"]))


@files.command("get")
@click.argument("sandbox_ref")
@click.argument("path")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
@pass_client
def files_get(client: ClientContext, sandbox_ref: str, path: str, output: Path | None) -> None:
    """Print a workspace file's bytes (or write them to --output)."""
    data = client.sdk().send(calls.file_read(sandbox_ref, path))
    if output is not None:
        output.write_bytes(data)
        emit({"path": path, "size": len(data), "output": str(output)},
             lambda _: click.echo(f"{len(data)} bytes to {output}", err=True))
    elif json_mode():
        emit({"path": path, "size": len(data), "text": data.decode(errors="replace")})
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@files.command("put")
@click.argument("sandbox_ref")
@click.argument("path")
@click.argument("source", type=click.File("rb"), default="-")
@pass_client
def files_put(client: ClientContext, sandbox_ref: str, path: str, source: Any) -> None:
    """Write SOURCE (a local file, or stdin) to PATH in the workspace, creating its parent directories."""
    data = source.read()
    sdk = client.sdk()
    parent = calls.file_parent(path)
    if parent:
        sdk.send(calls.file_mkdir(sandbox_ref, parent))
    written = sdk.send(calls.file_write(sandbox_ref, path, data))
    emit(written, lambda w: click.echo(f"wrote {w.get('size', len(data))} bytes to {path}", err=True))


@files.command("rm")
@click.argument("sandbox_ref")
@click.argument("path")
@click.option("--recursive", "-r", is_flag=True, help="Delete a directory and everything in it.")
@pass_client
def files_rm(client: ClientContext, sandbox_ref: str, path: str, recursive: bool) -> None:
    """Delete a workspace file (or a directory, with --recursive)."""
    client.sdk().send(calls.file_delete(sandbox_ref, path, recursive))
    emit({"deleted": path}, lambda _: click.echo(f"deleted {path}", err=True))



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
    added = client.request("POST", "/v1/sandbox-images", json={"name": name, "path": path})
    emit(added, lambda _: click.echo(f"added image {name}"))


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
    emit({"removed": name}, lambda _: click.echo(f"removed image {name}"))


__all__ = ["pairs", "sandbox"]
