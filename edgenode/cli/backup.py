"""Backups on the node's own machine: ``backup`` (works while the node runs) and ``restore``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgenode.cli.client import echo_json
from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from edgenode.store.backup import BackupReport

_DEFAULT_DATA = Path(".edgenode")


def _data_dir(ctx: click.Context, data_dir: Path | None) -> Path:
    """``--data`` of the command, else of the group (or EDGENODE_DATA), else the default."""
    if data_dir is not None:
        return data_dir
    parent = getattr(ctx.obj, "data_dir", None)
    return parent if isinstance(parent, Path) else _DEFAULT_DATA


def _echo(report: BackupReport) -> None:
    for name, why in sorted(report.left_out.items()):
        click.echo(f"warning: {name} was left out: it {why}", err=True)
    echo_json(report.as_dict())


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Data directory of the node to back up. [default: the group's --data, or ./.edgenode]")
@click.pass_context
def backup(ctx: click.Context, dest: Path, data_dir: Path | None) -> None:
    """Write a consistent copy of a node's data directory to the new directory DEST.

    Works while the node runs (SQLite's online backup of every database, repositories refs
    before objects); run it on the node's machine. Prints what was copied as JSON.
    """
    from edgenode.store.backup import backup as make_backup

    try:
        report = make_backup(_data_dir(ctx, data_dir), dest)
    except EdgenodeError as exc:
        raise click.ClickException(exc.message) from exc
    _echo(report)


@click.command()
@click.argument("src")
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Restore although DATA_DIR is not empty: what it holds is moved aside to "
                   "DATA_DIR.replaced-<time>, never deleted.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Put back only this database (as named in the backup, e.g. node.db or state/acme/app.db) into "
                   "the stopped node's DATA_DIR; the file there is moved aside. Repeat for several.")
@click.option("--timestamp", metavar="TIME",
              help="Point-in-time restore: SRC is the replica (a directory, file:// or s3:// URL) the node "
                   "replicates its databases to; every database is restored as it was at TIME (ISO 8601, e.g. "
                   "2026-12-01T21:30:00Z, or seconds since the epoch).")
def restore(src: str, data_dir: Path, force: bool, only: tuple[str, ...], timestamp: str | None) -> None:
    """Bring the backup SRC back as the data directory DATA_DIR (new or empty, or any with --force).

    The node must not be running on DATA_DIR. Start it afterwards with `edgenode serve --data DATA_DIR`.
    """
    from edgenode.store import backup as backups

    try:
        if timestamp is not None:
            from edgenode.store import replication

            report = replication.restore_to(src, data_dir, replication.parse_time(timestamp), force=force,
                                            only=list(only))
        elif only:
            report = backups.restore_databases(Path(src), data_dir, list(only))
        else:
            report = backups.restore(Path(src), data_dir, force=force)
    except EdgenodeError as exc:
        raise click.ClickException(exc.message) from exc
    _echo(report)


__all__ = ["backup", "restore"]
