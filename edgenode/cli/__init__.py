"""The ``edgenode`` command line: the daemon (``serve``, ``init``) and a client for a running node."""

from __future__ import annotations

from pathlib import Path

import click

from edgenode import __version__
from edgenode.cli.artifacts import repo
from edgenode.cli.base import JSON_HELP, Root, add_json_options
from edgenode.cli.client import ClientContext
from edgenode.cli.node import init, serve, settings, status, token
from edgenode.cli.output import set_json_mode


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    help="Seconds to wait for the node's answer to any call, and for followed work (imports, --wait) "
    "to finish. Default: 60 for quick calls; runs, deploys, model calls, exec streams and jobs wait as long "
    "as the node works on them.",
)
@click.option("--json", is_flag=True, expose_value=False, is_eager=True, callback=set_json_mode, help=JSON_HELP)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, data_dir: Path | None,
        timeout_s: float | None) -> None:
    """edgenode: an agent cloud on one small machine, or a fleet of them.

    Run a node with `edgenode serve`; every other command talks to a running node
    over HTTP (`--url`, `--token`, or `--data` of a local node). Every command takes
    --json: its result as JSON on stdout, a failure as {"error": {...}} on stderr.
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
from edgenode.cli.backup import backup, restore  # noqa: E402
from edgenode.cli.hub import hub  # noqa: E402
from edgenode.cli.rollout import rollout  # noqa: E402
from edgenode.cli.selftest import selftest  # noqa: E402

for command in (rollout, selftest, backup, restore, hub):
    cli.add_command(command)
# Every command gets --json (run again at each start, so commands added after this line get it too).
add_json_options(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgenode")


__all__ = ["cli", "main"]
