"""The ``edgenode`` command line: the daemon (``serve``, ``init``) and a client for a running node."""

from __future__ import annotations

from pathlib import Path

import click

from edgenode import __version__
from edgenode.cli.artifacts import repo
from edgenode.cli.client import ClientContext
from edgenode.cli.node import init, serve, settings, status, token


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgenode")
@click.option("--url", envvar="EDGENODE_URL", help="Base URL of the node to talk to (client commands).")
@click.option("--token", envvar="EDGENODE_TOKEN", help="Bearer token for client commands.")
@click.option(
    "--data",
    "data_dir",
    envvar="EDGENODE_DATA",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory of a local node: client commands read its URL and admin token from it.",
)
@click.option(
    "--timeout",
    "timeout_s",
    envvar="EDGENODE_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for the node's answer to any call. Default: 60 for quick calls, and for "
    "builds, runs, imports, model calls and exec streams as long as the node works on them.",
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, data_dir: Path | None,
        timeout_s: float | None) -> None:
    """edgenode: an agent cloud on one small machine, or a fleet of them.

    Run a node with `edgenode serve`; every other command talks to a running node
    over HTTP (`--url`, `--token`, or `--data` of a local node).
    """
    ctx.obj = ClientContext(url=url, token=token, data_dir=data_dir, timeout_s=timeout_s)
    ctx.call_on_close(ctx.obj.close)


for command in (serve, init, status, token, settings):
    cli.add_command(command)
# Capabilities add their command groups below.
cli.add_command(repo)
from edgenode.cli.sandboxes import sandbox  # noqa: E402

cli.add_command(sandbox)
from edgenode.cli.state import cluster, kv, sql  # noqa: E402

for command in (kv, sql, cluster):
    cli.add_command(command)
from edgenode.cli.agents import agent  # noqa: E402

cli.add_command(agent)
from edgenode.cli.workers import deploy, run, workers  # noqa: E402

for command in (deploy, run, workers):
    cli.add_command(command)
from edgenode.cli.runtime import runtime  # noqa: E402

cli.add_command(runtime)
from edgenode.cli.hub import hub  # noqa: E402

cli.add_command(hub)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgenode")


__all__ = ["cli", "main"]
