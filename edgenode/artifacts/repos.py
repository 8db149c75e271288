"""Repositories on disk: one bare Git repository per tenant and name, metadata in SQLite.

Layout: ``DATA/artifacts/<tenant>/<name>.git``. A fork is a fresh bare repository whose
``objects/info/alternates`` names its parent's object directory, so forking copies no
objects; deleting a repository that forks depend on first hard-links its own object
files into each dependent (no bytes copied) and rewires their alternates.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dulwich.errors import NotGitRepository
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from edgenode.auth import validate_tenant
from edgenode.errors import ArtifactNotFound, RepoExists, TenantQuotaExceeded, ValidationFailed
from edgenode.store import Database

REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
BRANCH_NAME = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![/.])\Z")

#: Refs that belong to a repository's shared history (gossiped, copied into forks).
SHARED_REF_PREFIXES = (b"refs/heads/", b"refs/tags/")


def validate_repo_name(name: Any) -> str:
    """Return ``name`` if it is a valid repository name, else raise ValidationFailed."""
    if (
        not isinstance(name, str)
        or not REPO_NAME.match(name)
        or name.endswith(".git")
        or ".." in name
        or name.endswith(".lock")
    ):
        raise ValidationFailed(
            "a repository name is 1-100 lower-case letters, digits, '.', '_' and '-', starting with a letter"
            " or digit, not ending in .git",
            field="name",
        )
    return name


def validate_branch(name: Any, field: str = "branch") -> str:
    """Return ``name`` if it is a valid branch name (without ``refs/heads/``)."""
    if not isinstance(name, str) or not BRANCH_NAME.match(name) or name.endswith(".lock"):
        raise ValidationFailed(f"{field} is not a valid branch name", field=field)
    return name


@dataclass(frozen=True)
class RepoInfo:
    """A repository's metadata row."""

    tenant: str
    name: str
    created_at: float
    fork_of: str | None
    default_branch: str
    path: Path

    def as_dict(self) -> dict[str, Any]:
        """JSON form (without the on-disk path)."""
        return {
            "tenant": self.tenant,
            "name": self.name,
            "created_at": self.created_at,
            "fork_of": self.fork_of,
            "default_branch": self.default_branch,
        }


class RepoStore:
    """Creates, finds, forks and deletes repositories; serialises changes per repository."""

    def __init__(self, root: Path, db: Database, *, now: Callable[[], float] = time.time) -> None:
        self.root = root
        self.db = db
        self._now = now
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # -- paths and locks ---------------------------------------------------

    def path(self, tenant: str, name: str) -> Path:
        """Where a repository lives (whether or not it exists)."""
        return self.root / tenant / f"{name}.git"

    def lock(self, tenant: str, name: str) -> threading.RLock:
        """The lock that serialises ref writes this node makes to one repository."""
        key = (tenant, name)
        with self._locks_guard:
            found = self._locks.get(key)
            if found is None:
                found = self._locks[key] = threading.RLock()
            return found

    @contextmanager
    def open(self, info: RepoInfo) -> Iterator[Repo]:
        """A dulwich ``Repo`` for ``info``, closed afterwards; ArtifactNotFound while its directory is not there
        yet (its row is written first, under the repository's lock, and the directory made right after)."""
        try:
            repo = Repo(str(info.path))
        except NotGitRepository:
            raise ArtifactNotFound(f"repository {info.name!r} is not there yet; try again", repo=info.name) from None
        try:
            yield repo
        finally:
            repo.close()

    # -- metadata ----------------------------------------------------------

    def get_sync(self, tenant: str, name: str) -> RepoInfo:
        """The repository ``tenant/name``; ArtifactNotFound if there is none."""
        row = self.db.read_sync(
            lambda c: c.execute("SELECT * FROM repos WHERE tenant = ? AND name = ?", (tenant, name)).fetchone()
        )
        if row is None:
            raise ArtifactNotFound(f"no repository named {name!r}", repo=name)
        return self._info(row)

    def find_sync(self, tenant: str, name: str) -> RepoInfo | None:
        """The repository ``tenant/name``, or None."""
        try:
            return self.get_sync(tenant, name)
        except ArtifactNotFound:
            return None

    def list_sync(self, tenant: str | None = None) -> list[RepoInfo]:
        """Repositories of one tenant (or all), by name."""
        if tenant is None:
            rows = self.db.read_sync(lambda c: c.execute("SELECT * FROM repos ORDER BY tenant, name").fetchall())
        else:
            rows = self.db.read_sync(
                lambda c: c.execute("SELECT * FROM repos WHERE tenant = ? ORDER BY name", (tenant,)).fetchall()
            )
        return [self._info(r) for r in rows]

    def tombstone_sync(self, tenant: str, name: str) -> float | None:
        """When ``tenant/name`` was last deleted on this node, if ever."""
        row = self.db.read_sync(
            lambda c: c.execute(
                "SELECT deleted_at FROM repo_tombstones WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
        )
        return None if row is None else float(row[0])

    def _info(self, row: sqlite3.Row) -> RepoInfo:
        return RepoInfo(
            tenant=row["tenant"],
            name=row["name"],
            created_at=row["created_at"],
            fork_of=row["fork_of"],
            default_branch=row["default_branch"],
            path=self.path(row["tenant"], row["name"]),
        )

    # -- create, fork, delete ----------------------------------------------

    def create_sync(
        self,
        tenant: str,
        name: str,
        *,
        default_branch: str = "main",
        fork_of: RepoInfo | None = None,
        created_at: float | None = None,
        cap: int = 0,
    ) -> RepoInfo:
        """Create an empty bare repository (or a fork sharing ``fork_of``'s objects); at most ``cap`` per tenant."""
        validate_tenant(tenant)
        validate_repo_name(name)
        validate_branch(default_branch, "default_branch")
        created = self._now() if created_at is None else created_at
        path = self.path(tenant, name)

        def insert(c: sqlite3.Connection) -> None:
            if cap > 0 and c.execute("SELECT COUNT(*) FROM repos WHERE tenant = ?", (tenant,)).fetchone()[0] >= cap:
                raise TenantQuotaExceeded(f"this tenant has {cap} repositories, as many as the node allows one "
                                          "tenant; delete one first", limit=cap, retry_after=60)
            try:
                c.execute(
                    "INSERT INTO repos (tenant, name, created_at, fork_of, default_branch) VALUES (?, ?, ?, ?, ?)",
                    (tenant, name, created, fork_of.name if fork_of else None, default_branch),
                )
            except sqlite3.IntegrityError as exc:
                raise RepoExists(f"a repository named {name!r} already exists", repo=name) from exc
            c.execute("DELETE FROM repo_tombstones WHERE tenant = ? AND name = ?", (tenant, name))

        with self.lock(tenant, name):
            self.db.write_sync(insert)
            try:
                if path.exists():  # left behind by a crash between rmtree and the row delete
                    shutil.rmtree(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                repo = Repo.init_bare(str(path), mkdir=True)
                try:
                    repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(b"refs/heads/" + default_branch.encode()))
                    if fork_of is not None:
                        alternates = path / "objects" / "info" / "alternates"
                        alternates.write_text(str(fork_of.path / "objects") + "\n")
                finally:
                    repo.close()
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                self.db.write_sync(
                    lambda c: c.execute("DELETE FROM repos WHERE tenant = ? AND name = ?", (tenant, name))
                )
                raise
        return self.get_sync(tenant, name)

    def fork_sync(self, source: RepoInfo, name: str, *, default_branch_only: bool = False, cap: int = 0) -> RepoInfo:
        """A new repository sharing ``source``'s objects, with a copy of its branches and tags."""
        fork = self.create_sync(source.tenant, name, default_branch=source.default_branch, fork_of=source, cap=cap)
        with self.open(source) as src, self.open(fork) as dst:
            wanted = src.refs.as_dict()
            for ref, sha in wanted.items():
                if not ref.startswith(SHARED_REF_PREFIXES):
                    continue
                if default_branch_only and ref != b"refs/heads/" + source.default_branch.encode():
                    continue
                dst.refs.set_if_equals(ref, ObjectID(b"0" * 40), sha)
        return fork

    def dependents_sync(self, info: RepoInfo) -> list[RepoInfo]:
        """Forks whose alternates point at ``info``'s objects."""
        rows = self.db.read_sync(
            lambda c: c.execute(
                "SELECT * FROM repos WHERE tenant = ? AND fork_of = ?", (info.tenant, info.name)
            ).fetchall()
        )
        return [self._info(r) for r in rows]

    def delete_sync(self, info: RepoInfo) -> None:
        """Remove a repository; forks that borrowed its objects get their own (hard-linked) copies."""
        with self.lock(info.tenant, info.name):
            for dependent in self.dependents_sync(info):
                with self.lock(dependent.tenant, dependent.name):
                    _dissociate(dependent.path / "objects", info.path / "objects")
                self.db.write_sync(_reparent(info.fork_of, dependent))
            now = self._now()

            def remove(c: sqlite3.Connection) -> None:
                c.execute("DELETE FROM repos WHERE tenant = ? AND name = ?", (info.tenant, info.name))
                c.execute(
                    "INSERT OR REPLACE INTO repo_tombstones (tenant, name, deleted_at) VALUES (?, ?, ?)",
                    (info.tenant, info.name, now),
                )
                c.execute("DELETE FROM repo_tokens WHERE tenant = ? AND repo = ?", (info.tenant, info.name))
                c.execute("DELETE FROM ref_tombstones WHERE tenant = ? AND repo = ?", (info.tenant, info.name))

            self.db.write_sync(remove)
            shutil.rmtree(info.path, ignore_errors=True)

    def disk_usage(self, info: RepoInfo) -> int:
        """Bytes of the repository's own files (borrowed objects not counted)."""
        total = 0
        for dirpath, _, files in os.walk(info.path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
        return total


def _reparent(parent: str | None, fork: RepoInfo) -> Callable[[sqlite3.Connection], object]:
    def run(c: sqlite3.Connection) -> object:
        return c.execute("UPDATE repos SET fork_of = ? WHERE tenant = ? AND name = ?", (parent, fork.tenant, fork.name))

    return run


def _alternate_paths(objects: Path) -> list[str]:
    try:
        lines = (objects / "info" / "alternates").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _dissociate(objects: Path, lender: Path) -> None:
    """Give ``objects`` its own links to every object file in ``lender`` and drop it as an alternate.

    Hard links share the bytes, so this is cheap; ``lender``'s own alternates are inherited
    so the chain to older ancestors stays intact.
    """
    for dirpath, _, files in os.walk(lender):
        rel = Path(dirpath).relative_to(lender)
        if rel.parts and rel.parts[0] == "info":
            continue
        target_dir = objects / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        # .pack before .idx: a pack is only visible once its index exists.
        for f in sorted(files, key=lambda n: (n.endswith(".idx"), n)):
            target = target_dir / f
            if target.exists():
                continue
            try:
                os.link(Path(dirpath) / f, target)
            except OSError:
                shutil.copy2(Path(dirpath) / f, target)
    lender_str = str(lender)
    merged: list[str] = []
    for line in _alternate_paths(objects):
        for path in _alternate_paths(lender) if line == lender_str else [line]:
            if path not in merged:
                merged.append(path)
    alternates = objects / "info" / "alternates"
    if merged:
        alternates.write_text("".join(p + "\n" for p in merged))
    else:
        alternates.unlink(missing_ok=True)
