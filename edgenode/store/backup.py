"""Backups of a data directory: a consistent copy while the node runs, and a restore into a new directory.

The backup reads the data directory itself, beside the running node, rather than asking the node
over HTTP: SQLite's online backup API copies each database under one read transaction of its own
(in WAL mode the node goes on writing meanwhile), so each copy is the database at one moment and
the command needs neither the node's help nor a token, and works the same on a stopped node.

Order matters, and is:

1. the node's identity (node id, admin token, the ledger of its databases, peers);
2. every SQLite database (the node's own, every namespace, the agents' journals);
3. the Git repositories, each with its refs copied before its objects: while a repository lives,
   objects are only ever added (a push moves its packs in before the first ref moves), so every
   ref in the copy finds its objects in the copy. Repositories come after the databases because a
   repository's row is written before its directory: every repository the copied
   ``artifacts.db`` knows is on disk by then;
4. every other file (sandbox workspaces, uploaded components), as it is at that moment.

A backup is written to a hidden directory beside ``DEST`` and renamed into place when whole, so
``DEST`` is either a complete backup or absent. ``backup.json`` in it describes what it holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgenode import __version__
from edgenode.errors import BackupFailed, EdgenodeError, InsufficientStorage, StorageIOFailed
from edgenode.store.faults import storage_fault
from edgenode.store.ledger import inspect

log = logging.getLogger(__name__)

MANIFEST = "backup.json"
FORMAT = 1
_SQLITE_HEADER = b"SQLite format 3\0"
#: Files of a data directory that belong to the running process, not to its data.
_EPHEMERAL = {"url", "node.log", "litestream.yml"}
_SIDECARS = ("-wal", "-shm", "-journal")
#: Top-level directories copied as plain files, never opened as databases (tenants' own files).
_PLAIN_TREES = {"sandboxes"}
#: Of DATA/workers only the uploaded components are data; the rest is a cache rebuilt on demand.
_WORKERS_KEPT = "uploads"


@dataclass
class BackupReport:
    """What a backup or restore copied."""

    path: Path
    node: str | None
    databases: list[str] = field(default_factory=list)
    repositories: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    moved_aside: Path | None = None
    #: Databases left out, each with why (a damaged file; a namespace younger than a restored moment).
    left_out: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON for the command line."""
        return {"path": str(self.path), "node": self.node, "databases": self.databases,
                "repositories": self.repositories, "left_out": self.left_out, "files": self.files, "bytes": self.bytes,
                "seconds": round(self.seconds, 3),
                "moved_aside": str(self.moved_aside) if self.moved_aside else None}


# -- backup ----------------------------------------------------------------------------


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` starts with SQLite's file header."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def _is_repository(path: Path) -> bool:
    return path.name.endswith(".git") and (path / "HEAD").is_file() and (path / "objects").is_dir()


@dataclass
class _Plan:
    identity: list[Path] = field(default_factory=list)
    databases: list[Path] = field(default_factory=list)
    repositories: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)


def _plan(data_dir: Path) -> _Plan:
    """Sort the data directory's contents (relative paths) into what is copied how."""
    plan = _Plan()
    for root, dirnames, filenames in os.walk(data_dir):
        here = Path(root)
        rel = here.relative_to(data_dir)
        plain = bool(rel.parts) and rel.parts[0] in _PLAIN_TREES
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            sub_rel = rel / name
            if name.endswith("-litestream") or (name.startswith(".") and name.endswith((".partial", ".restoring"))):
                continue
            if rel == Path("workers") and name != _WORKERS_KEPT:
                continue
            if not plain and _is_repository(sub):
                plan.repositories.append(sub_rel)
                continue
            if (here / name).is_symlink():
                plan.files.append(sub_rel)
                continue
            plan.dirs.append(sub_rel)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            file_rel = rel / name
            if not rel.parts and name in _EPHEMERAL:
                continue
            if rel == Path("workers"):
                continue
            if not plain and (name.endswith(_SIDECARS) or ".tmp" in name or ".replaced-" in name
                              or ".damaged-" in name):
                continue  # logs of a live database, half-written files, files set aside by an operator
            if not rel.parts and not is_sqlite(path):
                plan.identity.append(file_rel)
            elif not plain and is_sqlite(path):
                plan.databases.append(file_rel)
            else:
                plan.files.append(file_rel)
    return plan


def _copy_database(src: Path, dst: Path) -> str | None:
    """Copy one live database with SQLite's online backup API (one read transaction); what is wrong with it."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)  # all pages in one step: one snapshot, however busy the writer
            # A standalone file, no log beside it (the node turns WAL on again when it opens it).
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    finally:
        source.close()
    return inspect(dst)


def _copy_file(src: Path, dst: Path) -> int:
    """Copy one file or symlink (metadata kept); 0 if it vanished meanwhile or is no regular file."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return 0
    if not stat.S_ISREG(st.st_mode):
        return 0  # sockets and pipes belong to running processes
    try:
        shutil.copy2(src, dst)
    except FileNotFoundError:
        return 0
    return st.st_size


def _copy_tree_files(src: Path, dst: Path, *, skip: tuple[str, ...] = (), git: bool = False) -> tuple[int, int]:
    files = size = 0
    for root, dirnames, filenames in os.walk(src):
        here = Path(root)
        rel = here.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        keep = []
        for name in sorted(dirnames):
            if skip and name.startswith(skip):
                continue
            if (here / name).is_symlink():  # a link to a directory is copied as the link
                _copy_file(here / name, dst / rel / name)
                files += 1
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if git and (name.startswith("tmp_") or name.endswith(".lock")):
                continue  # a pack or ref being written now: not part of the repository yet
            size += _copy_file(here / name, dst / rel / name)
            files += 1
    return files, size


def _copy_repository(src: Path, dst: Path) -> tuple[int, int]:
    """Copy a bare repository: its metadata, then its refs, then its objects (never the other way)."""
    dst.mkdir(parents=True)
    files = size = 0
    for name in sorted(os.listdir(src)):
        path = src / name
        if name in ("refs", "objects", "packed-refs") or path.is_dir():
            continue
        size += _copy_file(path, dst / name)
        files += 1
    if (src / "packed-refs").exists():
        size += _copy_file(src / "packed-refs", dst / "packed-refs")
        files += 1
    for part in ("refs", "info", "hooks"):
        if (src / part).is_dir():
            f, s = _copy_tree_files(src / part, dst / part, git=True)
            files, size = files + f, size + s
    # A push's quarantine (objects/incoming-*) is not part of the repository until its refs move.
    f, s = _copy_tree_files(src / "objects", dst / "objects", skip=("incoming-",), git=True)
    return files + f, size + s


def _node_id(data_dir: Path) -> str | None:
    try:
        return (data_dir / "node-id").read_text().strip() or None
    except OSError:
        return None


def _fault(exc: OSError, path: Path, purpose: str) -> EdgenodeError:
    where = exc.filename or path
    return storage_fault(exc, path, purpose) or BackupFailed(f"copying failed at {where}: {exc.strerror or exc}; "
                                                             "nothing was replaced", path=str(where))


def backup(data_dir: Path, dest: Path) -> BackupReport:
    """Write a consistent copy of the (running or stopped) node in ``data_dir`` to the new directory ``dest``."""
    started = time.monotonic()
    data_dir = data_dir.resolve()
    dest = dest.resolve()
    node = _node_id(data_dir)
    if node is None:
        raise BackupFailed(f"{data_dir} is not a node's data directory (it has no node-id)", path=str(data_dir))
    if dest == data_dir or data_dir in dest.parents:
        raise BackupFailed(f"the backup {dest} cannot be inside the data directory {data_dir}", path=str(dest))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupFailed(f"{dest} exists and is not an empty directory; name a new one", path=str(dest))
    staged = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    report = BackupReport(path=dest, node=node)
    try:
        staged.mkdir(parents=True, mode=0o700)  # it holds the admin token and every tenant's data
        plan = _plan(data_dir)
        for rel in plan.dirs:
            (staged / rel).mkdir(parents=True, exist_ok=True)
        for rel in plan.identity:
            report.bytes += _copy_file(data_dir / rel, staged / rel)
            report.files += 1
        began = time.time()
        for rel in plan.databases:
            if not (data_dir / rel).exists():
                continue  # deleted meanwhile (a purged tenant's namespace)
            try:
                problem = _copy_database(data_dir / rel, staged / rel)
            except sqlite3.Error as exc:
                fault = storage_fault(exc, dest.parent, "backup")
                if isinstance(fault, (InsufficientStorage, StorageIOFailed)):
                    raise fault from exc  # the backup's disk, not the database
                problem = f"cannot be read as a SQLite database ({exc})"
            if problem is None:
                report.bytes += (staged / rel).stat().st_size
                report.databases.append(str(rel))
            else:  # one damaged namespace must not make the node impossible to back up
                (staged / rel).unlink(missing_ok=True)
                report.left_out[str(rel)] = problem
                log.warning("a damaged database was left out of the backup", extra={"db": str(rel), "problem": problem})
        for rel in plan.repositories:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                files, size = _copy_repository(data_dir / rel, staged / rel)
            except FileNotFoundError:
                if (data_dir / rel).exists():
                    raise
                shutil.rmtree(staged / rel, ignore_errors=True)  # deleted meanwhile
                continue
            report.files, report.bytes = report.files + files, report.bytes + size
            report.repositories.append(str(rel))
        for rel in plan.files:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            report.bytes += _copy_file(data_dir / rel, staged / rel)
            report.files += 1
        manifest = {"format": FORMAT, "edgenode": __version__, "node": node, "data_dir": str(data_dir),
                    "began_at": round(began, 3), "finished_at": round(time.time(), 3),
                    "databases": report.databases, "repositories": report.repositories,
                    "left_out": report.left_out}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            dest.rmdir()
        os.rename(staged, dest)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise _fault(exc, dest.parent, "backup") from exc
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    report.seconds = time.monotonic() - started
    log.info("backup written", extra={"dest": str(dest), "databases": len(report.databases),
                                      "repositories": len(report.repositories), "bytes": report.bytes})
    return report


# -- restore ---------------------------------------------------------------------------


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src`` (BackupFailed if ``src`` is none)."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupFailed(f"{src} is not a backup made by edgenode backup (it has no {MANIFEST})",
                           path=str(src)) from None
    except (OSError, ValueError) as exc:
        raise BackupFailed(f"the manifest of the backup {src} cannot be read: {exc}", path=str(src)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupFailed(f"{src}/{MANIFEST} is not a backup manifest of format {FORMAT}", path=str(src))
    return manifest


def node_running(data_dir: Path) -> str | None:
    """The URL of a node serving from ``data_dir`` now, or None."""
    try:
        url = (data_dir / "url").read_text().strip()
    except OSError:
        return None
    if not url:
        return None
    try:
        httpx.get(f"{url}/healthz", timeout=5)
    except httpx.HTTPError:
        return None
    return url


def _refuse_running(data_dir: Path) -> None:
    url = node_running(data_dir)
    if url is not None:
        raise BackupFailed(f"a node is serving from {data_dir} ({url}); stop it before restoring into its "
                           "data directory", path=str(data_dir))


def _rewrite_alternates(root: Path, repositories: list[str], old: str, new: str) -> None:
    """Point forks' alternates, which name their parent's objects by absolute path, into the new directory."""
    for rel in repositories:
        alternates = root / rel / "objects" / "info" / "alternates"
        if not alternates.exists():
            continue
        lines = alternates.read_text().splitlines()
        fixed = [new + line[len(old):] if line == old or line.startswith(old + "/") else line for line in lines]
        if fixed != lines:
            alternates.write_text("".join(line + "\n" for line in fixed))


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def prepare_target(data_dir: Path, *, force: bool) -> None:
    """Refuse a non-empty ``data_dir`` unless ``force``; never one a node serves from."""
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupFailed(f"{data_dir} is not a directory", path=str(data_dir))
    if data_dir.exists() and any(data_dir.iterdir()):
        _refuse_running(data_dir)
        if not force:
            raise BackupFailed(
                f"{data_dir} is not empty; restore into a new directory, or pass --force to move what it holds "
                f"aside (to {data_dir.name}.replaced-<time>) and restore in its place", path=str(data_dir))


def swap_in(staged: Path, data_dir: Path) -> Path | None:
    """Rename ``staged`` to ``data_dir``, moving a non-empty ``data_dir`` aside first; where it went."""
    moved: Path | None = None
    if data_dir.exists():
        if any(data_dir.iterdir()):
            moved = data_dir.with_name(f"{data_dir.name}.replaced-{_stamp()}")
            os.rename(data_dir, moved)
        else:
            data_dir.rmdir()
    os.rename(staged, data_dir)
    return moved


def restore(src: Path, data_dir: Path, *, force: bool = False) -> BackupReport:
    """Lay the backup ``src`` out as the data directory ``data_dir`` (new or empty, or any with ``force``)."""
    started = time.monotonic()
    src = src.resolve()
    data_dir = data_dir.resolve()
    manifest = read_manifest(src)
    prepare_target(data_dir, force=force)
    staged = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(staged, ignore_errors=True)
    report = BackupReport(path=data_dir, node=manifest.get("node"))
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staged.mkdir(mode=0o700)
        files, size = _copy_tree_files(src, staged)
        (staged / MANIFEST).unlink()
        report.files, report.bytes = files - 1, size
        repositories = [str(r) for r in manifest.get("repositories", [])]
        _rewrite_alternates(staged, repositories, str(manifest.get("data_dir", "")), str(data_dir))
        for rel in manifest.get("databases", []):
            problem = inspect(staged / rel)
            if problem is not None:
                raise BackupFailed(f"the backup's copy of {rel} {problem}; nothing was restored", path=str(src / rel))
            report.databases.append(str(rel))
        report.repositories = repositories
        report.moved_aside = swap_in(staged, data_dir)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise _fault(exc, data_dir.parent, "restored data directory") from exc
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    report.seconds = time.monotonic() - started
    return report


def restore_databases(src: Path, data_dir: Path, names: list[str]) -> BackupReport:
    """Put back only the databases ``names`` (paths relative to the data directory) from the backup ``src``.

    For one damaged database of a stopped node: the file in place (with its log) is moved aside as
    ``NAME.replaced-<time>``, never deleted, and a namespace's damage marker is removed.
    """
    src = src.resolve()
    data_dir = data_dir.resolve()
    manifest = read_manifest(src)
    _refuse_running(data_dir)
    known = set(manifest.get("databases", []))
    report = BackupReport(path=data_dir, node=manifest.get("node"))
    for name in names:
        rel = Path(name)
        if str(rel) not in known:
            raise BackupFailed(f"the backup {src} holds no database {name} (it has: {', '.join(sorted(known))})",
                               path=str(src))
        if inspect(src / rel) is not None:
            raise BackupFailed(f"the backup's copy of {name} {inspect(src / rel)}", path=str(src / rel))
    stamp = _stamp()
    for name in names:
        target = data_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.restoring")
        try:
            shutil.copy2(src / name, staged)
            for suffix in ("", *_SIDECARS):
                part = target.with_name(target.name + suffix)
                if part.exists():
                    os.rename(part, target.with_name(f"{target.name}.replaced-{stamp}{suffix}"))
            os.rename(staged, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise _fault(exc, target.parent, "restored database") from exc
        target.with_name(target.name + ".damaged").unlink(missing_ok=True)
        report.databases.append(name)
        report.bytes += target.stat().st_size
    return report
