"""Worker commands: deploy a directory, run a file once, list and manage workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgenode.cli.client import ClientContext, pass_client
from edgenode.cli.output import echo_json, echo_table, emit, progress

#: Directories never uploaded with a worker's files.
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"}


def collect_files(directory: Path) -> dict[str, str]:
    """Every ``.py`` file under ``directory`` (vendored packages included), keyed by relative path."""
    files: dict[str, str] = {}
    for path in sorted(directory.rglob("*.py")):
        rel = path.relative_to(directory)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        files[rel.as_posix()] = path.read_text()
    return files


def _limits(cpu_ms: int | None, memory_mb: int | None, wall_ms: int | None) -> dict[str, int]:
    return {k: v for k, v in {"cpu_ms": cpu_ms, "memory_mb": memory_mb, "wall_ms": wall_ms}.items() if v is not None}


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


_cpu = click.option("--cpu-ms", type=int, help="CPU time per request, in ms.")
_memory = click.option("--memory-mb", type=int, help="Linear memory per isolate, in MiB.")
_wall = click.option("--wall-ms", type=int, help="Wall time per request, in ms.")
_allow = click.option("--allow", "allowed_hosts", multiple=True,
                      help="Host the worker may fetch (scheme://host:port, *.domain); repeat for several.")
_env_opt = click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE variable for the guest; repeatable.")


@click.command()
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@_cpu
@_memory
@_wall
@_allow
@_env_opt
@click.option("--public", is_flag=True, help="Serve it at /p/TENANT/NAME without a token.")
@pass_client
def deploy(client: ClientContext, name: str, source: Path, cpu_ms: int | None, memory_mb: int | None,
           wall_ms: int | None, allowed_hosts: tuple[str, ...], env_pairs: tuple[str, ...], public: bool) -> None:
    """Deploy SOURCE as worker NAME: a directory with main.py, or a .wasm component or WASI module."""
    body: dict[str, Any] = {"limits": _limits(cpu_ms, memory_mb, wall_ms), "allowed_hosts": list(allowed_hosts),
                            "env": _env(env_pairs), "public": public}
    if source.is_dir():
        body["files"] = collect_files(source)
        if "main.py" not in body["files"]:
            raise click.UsageError(f"{source} has no main.py")
    elif source.suffix == ".py":
        body["files"] = {"main.py": source.read_text()}
    else:
        import base64

        body["component_b64"] = base64.b64encode(source.read_bytes()).decode()
    with progress(f"deploying {name}"):
        reply = client.request("PUT", f"/v1/workers/{name}", json=body, long=True)

    def human(r: dict[str, Any]) -> None:
        click.echo(f"deployed {r['name']} version {r['version']} ({r['kind']}, {r['hash'][:12]})")
        click.echo(f"invoke: curl -H \"Authorization: Bearer $EDGENODE_TOKEN\" {client.base_url()}/w/{r['name']}/",
                   err=True)
    emit(reply, human)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "input_json", help="JSON input for main(input) / the request body ('-' reads stdin).")
@_cpu
@_memory
@_wall
@_allow
@pass_client
def run(client: ClientContext, file: Path, input_json: str | None, cpu_ms: int | None, memory_mb: int | None,
        wall_ms: int | None, allowed_hosts: tuple[str, ...]) -> None:
    """Run a Python FILE once in an isolate (it defines main(input) or handle(request)); nothing is kept."""
    body: dict[str, Any] = {"code": file.read_text(), "limits": _limits(cpu_ms, memory_mb, wall_ms),
                            "allowed_hosts": list(allowed_hosts)}
    if input_json is not None:
        text = sys.stdin.read() if input_json == "-" else input_json
        try:
            body["input"] = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc
    with progress(f"running {file.name}"):
        reply = client.request("POST", "/v1/run", json=body, long=True)
    emit(reply, _print_run)


def _print_run(reply: dict[str, Any]) -> None:
    for line in reply.get("logs", []):
        click.echo(f"[{line['level']}] {line['message']}", err=True)
    if reply.get("output"):
        click.echo(reply["output"], err=True, nl=False)
    if "json" in reply:
        echo_json(reply["json"])
    else:
        click.echo(reply.get("body", ""))


@click.group(invoke_without_command=True)
@click.pass_context
def workers(ctx: click.Context) -> None:
    """List and manage workers (without a subcommand: list them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(workers_list)


@workers.command("list")
@pass_client
def workers_list(client: ClientContext) -> None:
    """List this tenant's workers."""
    data = client.request("GET", "/v1/workers")
    emit(data, lambda d: echo_table(d["workers"], ["name", "version", "kind", "public", "updated_at"]))


@workers.command("show")
@click.argument("name")
@pass_client
def workers_show(client: ClientContext, name: str) -> None:
    """Show a worker's current version, settings and history."""
    emit(client.request("GET", f"/v1/workers/{name}"))


@workers.command("rm")
@click.argument("name")
@pass_client
def workers_rm(client: ClientContext, name: str) -> None:
    """Delete a worker and all its versions."""
    client.request("DELETE", f"/v1/workers/{name}")
    emit({"deleted": name}, lambda _: click.echo(f"deleted {name}"))


@workers.command("rollback")
@click.argument("name")
@click.option("--version", type=int, help="Version to make current (default: the one before the current).")
@pass_client
def workers_rollback(client: ClientContext, name: str, version: int | None) -> None:
    """Make an earlier version of a worker current again."""
    reply = client.request("POST", f"/v1/workers/{name}/rollback", json={"version": version})
    emit(reply, lambda r: click.echo(f"{name} is at version {r['version']}"))


@workers.command("usage")
@pass_client
def workers_usage(client: ClientContext) -> None:
    """Requests, errors, CPU and wall time per worker."""
    data = client.request("GET", "/v1/usage")
    rows = [{**u, "cpu_ms": round(u["cpu_ms"], 1), "wall_ms": round(u["wall_ms"], 1)} for u in data["usage"]]
    emit(data, lambda _: echo_table(rows, ["worker", "requests", "errors", "cpu_ms", "wall_ms", "subrequests"]))


__all__ = ["deploy", "run", "workers"]
