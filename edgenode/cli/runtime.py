"""``edgenode runtime``: build and inspect the shared Python runtime ahead of time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgenode.errors import EdgenodeError


@click.group()
def runtime() -> None:
    """The shared Python runtime every Python worker, run and agent uses (built once per version)."""


@runtime.command("build")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="EDGENODE_WORKERS_RUNTIME_DIR",
              help="Where to keep it (default: the node's default runtime directory).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Longest the build may take, in seconds.")
def build(directory: Path | None, timeout_s: float) -> None:
    """Build and compile the runtime now, so no node waits for it at first start."""
    from edgenode.isolates.python import default_runtime_dir, prepare_runtime

    target = directory or default_runtime_dir()
    started = time.monotonic()
    click.echo(f"edgenode: preparing the Python runtime in {target} (a first build takes a minute or so)", err=True)
    try:
        python = prepare_runtime(target, timeout_s=timeout_s)
    except EdgenodeError as exc:
        raise click.ClickException(f"{exc.message}\n{getattr(exc, 'output', '')}".strip()) from None
    status = python.status()
    status["seconds"] = round(time.monotonic() - started, 1)
    click.echo(json.dumps(status))
