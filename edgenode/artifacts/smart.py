"""Git smart HTTP, spoken by dulwich's own server handlers, with quarantined pushes.

The HTTP layer hands over bytes; dulwich's ``ReceivePackHandler`` (and ``UploadPackHandler``
when git's own upload-pack is not used, see ``gitserve``) do all protocol and pack work.
What this module adds is policy around pushes:

- A push is received into a *quarantine* object directory (``objects/incoming-*``, with the
  real object store as its alternate), as ``git receive-pack`` does. Objects move into the
  repository only just before the first ref moves, so a refused or broken push leaves
  neither objects nor refs behind.
- An ``update`` hook checks each ref: only branches and tags, the new tip present and
  connected, and no force-push or deletion of a protected branch.
- Oversized packs never reach dulwich: the body is counted while it is spooled (413).
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from dulwich.errors import GitProtocolError, HookError
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Commit, ObjectID, Tag, Tree
from dulwich.pack import Pack, PackInflater
from dulwich.protocol import ReceivableProtocol
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler

from edgenode.artifacts.history import ZERO, is_ancestor

log = logging.getLogger(__name__)

SERVICES = ("git-upload-pack", "git-receive-pack")


@dataclass
class PushOutcome:
    """What a push did: the response body for git, and the refs that moved."""

    output: bytes
    updated: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    unpack_error: str | None = None


class _OneRepoBackend(Backend):
    """A dulwich backend that serves exactly one already-opened repository."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Any:
        return self.repo


class _GuardedRefs:
    """The real refs container, but objects leave quarantine before the first ref write."""

    def __init__(self, inner: Any, before_write: Callable[[], None], moved: list[tuple[bytes, bytes, bytes]],
                 refused: list[tuple[str, str]]):
        self._inner = inner
        self._before_write = before_write
        self._moved = moved
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __getitem__(self, name: bytes) -> bytes:
        return self._inner[name]  # type: ignore[no-any-return]

    # dulwich's handler ignores a False from these compare-and-swaps and would report "ok"
    # for a ref that did not move; raising OSError makes it report "failed to write".

    def set_if_equals(self, name: bytes, old: bytes | None, new: bytes, **kwargs: Any) -> bool:
        self._before_write()
        current = self._inner.as_dict().get(name)
        try:
            ok = bool(self._inner.set_if_equals(name, old, new, **kwargs))
        except FileLocked:
            ok = False
        if not ok:
            self._refused.append((name.decode(errors="replace"), "changed during the push"))
            raise OSError(f"{name.decode(errors='replace')} changed during the push")
        self._moved.append((name, current or ZERO, new))
        return ok

    def remove_if_equals(self, name: bytes, old: bytes | None, **kwargs: Any) -> bool:
        current = self._inner.as_dict().get(name)
        try:
            ok = bool(self._inner.remove_if_equals(name, old, **kwargs))
        except FileLocked:
            ok = False
        if not ok:
            self._refused.append((name.decode(errors="replace"), "changed during the push"))
            raise OSError(f"{name.decode(errors='replace')} changed during the push")
        if current is not None:
            self._moved.append((name, current, ZERO))
        return ok


class _UpdateHook:
    """dulwich ``update`` hook: refuses what policy forbids, per ref."""

    def __init__(self, target: _QuarantinedRepo) -> None:
        self.target = target

    def execute(self, ref: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        reason = self.target.check_update(ref, new)
        if reason is not None:
            self.target.refused.append((ref.decode(errors="replace"), reason))
            raise HookError(reason)
        return b"", b""


class _QuarantinedRepo:
    """What ``ReceivePackHandler`` sees: the real refs, and a quarantine object store."""

    def __init__(self, repo: Repo, protected: Iterable[str], *, git: GitTools | None = None) -> None:
        self.repo = repo
        self.protected = list(protected)
        objects = os.path.join(repo.path, "objects")
        self.quarantine = tempfile.mkdtemp(prefix="incoming-", dir=objects)
        store = _QuarantineStore.init(os.path.join(self.quarantine, "q"))
        assert isinstance(store, _QuarantineStore)
        self.store = store
        self.git = git
        self.store.git = git
        self.store.repo_path = repo.path
        with open(os.path.join(self.store.path, "info", "alternates"), "w") as f:
            f.write(objects + "\n")
        self.moved: list[tuple[bytes, bytes, bytes]] = []
        self.refused: list[tuple[str, str]] = []
        self._migrated = False
        self._connected: dict[bytes, bool] = {}
        self.refs = _GuardedRefs(repo.refs, self.migrate, self.moved, self.refused)
        self.hooks = {"update": _UpdateHook(self)}

    # BackendRepo surface --------------------------------------------------

    @property
    def object_store(self) -> DiskObjectStore:
        return self.store

    @property
    def object_format(self) -> Any:
        return self.repo.object_format

    def get_refs(self) -> Any:
        return self.repo.get_refs()

    def get_peeled(self, ref: bytes) -> bytes | None:
        return self.repo.get_peeled(Ref(ref))

    def get_config_stack(self) -> Any:
        return self.repo.get_config_stack()

    # policy ---------------------------------------------------------------

    def is_protected(self, ref: bytes) -> bool:
        """Whether ``ref`` is a branch matching a protected pattern."""
        if not ref.startswith(b"refs/heads/"):
            return False
        branch = ref[len(b"refs/heads/"):].decode(errors="replace")
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.protected)

    def check_update(self, ref: bytes, new: bytes) -> str | None:
        """Why the update of ``ref`` to ``new`` is refused, or None to allow it."""
        if not ref.startswith((b"refs/heads/", b"refs/tags/")):
            return "only branches and tags may be pushed"
        current = self.repo.refs.as_dict().get(Ref(ref))
        if new == ZERO:
            if self.is_protected(ref):
                return "protected branch: deletion refused"
            return None
        if ObjectID(new) not in self.store:
            return "missing object"
        if not self.connected(new):
            return "pack is not connected: missing objects"
        target = self.store[ObjectID(new)]
        if ref.startswith(b"refs/heads/") and not isinstance(target, Commit):
            return "a branch must point at a commit"
        if current is not None and self.is_protected(ref) and not is_ancestor(self.store, current, new):
            return "protected branch: force-push refused"
        return None

    def connected(self, new: bytes) -> bool:
        """Everything ``new`` reaches exists, here or in the repository.

        git checks it as ``receive-pack`` does (``rev-list --objects`` from the new tip, not
        from the existing refs); without git, dulwich checks every reference in the
        quarantined packs once.
        """
        key = new if self.git is not None else b""
        if key not in self._connected:
            if self.git is not None:
                self._connected[key] = self.git.connected(self.repo.path, os.fspath(self.store.path), new)
            else:
                self._connected[key] = _check_connected(self.store)
        return self._connected[key]

    # quarantine -----------------------------------------------------------

    def migrate(self) -> None:
        """Move the quarantined packs into the repository (index last, so readers never see half)."""
        if self._migrated:
            return
        self._migrated = True
        pack_src = os.path.join(self.store.path, "pack")
        pack_dst = os.path.join(self.repo.path, "objects", "pack")
        names = sorted(os.listdir(pack_src), key=lambda n: (n.endswith(".idx"), n))
        for name in names:
            if name.startswith("tmp_"):
                continue
            dst = os.path.join(pack_dst, name)
            if os.path.exists(dst):
                continue
            os.replace(os.path.join(pack_src, name), dst)

    def discard(self) -> None:
        """Remove the quarantine directory and whatever is left in it."""
        self.store.close()
        shutil.rmtree(self.quarantine, ignore_errors=True)


@dataclass(frozen=True)
class GitTools:
    """The git binary and the clean environment it runs in (see ``gitserve.environment``)."""

    git: str
    env: dict[str, str]

    def _env(self, repo_path: str, objects: str) -> dict[str, str]:
        # Objects go to (and are looked up first in) the quarantine; its alternates file
        # leads to the repository's objects, and from there to a fork's parent.
        return {**self.env, "GIT_DIR": repo_path, "GIT_OBJECT_DIRECTORY": objects}

    def index_pack(self, repo_path: str, objects: str, read: Callable[[int], bytes]) -> str:
        """Stream a (thin) pack into ``git index-pack --fix-thin --fsck-objects``; its pack name."""
        proc = subprocess.Popen([self.git, "index-pack", "--stdin", "--fix-thin", "--fsck-objects"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self._env(repo_path, objects), cwd=repo_path)
        assert proc.stdin is not None
        stdin, proc.stdin = proc.stdin, None  # communicate() below must not touch it
        try:
            with stdin:
                while chunk := read(256 * 1024):
                    stdin.write(chunk)
        except BrokenPipeError:
            pass  # index-pack gave up; its stderr says why
        out, err = proc.communicate()
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise OSError(lines[-1] if lines else f"index-pack failed ({proc.returncode})")
        kind, _, name = out.decode().strip().partition("\t")
        if kind not in ("pack", "keep") or not name:
            raise OSError(f"index-pack said {out!r}")
        return name

    def connected(self, repo_path: str, objects: str, new: bytes) -> bool:
        """Whether every object ``new`` reaches, short of the existing refs, is present."""
        result = subprocess.run([self.git, "rev-list", "--objects", "--quiet", "--stdin", "--not", "--all"],
                                input=new + b"\n", capture_output=True, env=self._env(repo_path, objects),
                                cwd=repo_path)
        return result.returncode == 0


class _QuarantineStore(DiskObjectStore):
    """A push's quarantine object store; git indexes incoming packs when it is there."""

    git: GitTools | None = None
    repo_path = ""

    def add_thin_pack(self, read_all: Callable[[int], bytes], read_some: Callable[[int], bytes] | None,
                      progress: Callable[..., None] | None = None, *, max_input_size: int | None = None) -> Pack:
        """Index the pushed pack with git (C, fast) when available, else with dulwich."""
        if self.git is None:
            return super().add_thin_pack(read_all, read_some, progress, max_input_size=max_input_size)
        # The body was counted against the pack limit before any of this ran.
        name = self.git.index_pack(self.repo_path, os.fspath(self.path), read_some or read_all)
        return Pack(os.path.join(self.pack_dir, f"pack-{name}"), object_format=self.object_format)


def _check_connected(store: DiskObjectStore) -> bool:
    """Whether every object in ``store``'s own packs has its referenced objects available.

    One pass over each pack (deltas resolved once, in pack order); references are checked
    against the pack's own ids first, and each outside id is looked up once.
    """
    known: set[bytes] = set()
    for pack in store.packs:
        known.update(pack)
    outside: dict[bytes, bool] = {}
    for pack in store.packs:
        for obj in PackInflater.for_pack_data(pack.data, resolve_ext_ref=store.get_raw):
            if isinstance(obj, Commit):
                needed: list[bytes] = [obj.tree, *obj.parents]
            elif isinstance(obj, Tree):
                needed = [entry.sha for entry in obj.iteritems() if entry.mode != 0o160000]
            elif isinstance(obj, Tag):
                needed = [obj.object[1]]
            else:
                continue
            for sha in needed:
                if sha in known:
                    continue
                found = outside.get(sha)
                if found is None:
                    found = outside[sha] = ObjectID(sha) in store
                if not found:
                    return False
    return True


# -- the three requests -------------------------------------------------------------


def advertise(repo_path: str, service: str) -> bytes:
    """The ``info/refs?service=...`` body: the service line and dulwich's ref advertisement."""
    out = io.BytesIO()
    repo = Repo(repo_path)
    try:
        proto = ReceivableProtocol(io.BytesIO().read, out.write)
        proto.write_pkt_line(b"# service=" + service.encode() + b"\n")
        proto.write_pkt_line(None)
        handler_cls = UploadPackHandler if service == "git-upload-pack" else ReceivePackHandler
        handler = handler_cls(_OneRepoBackend(repo), [repo_path], proto, stateless_rpc=True,
                              advertise_refs=True)
        handler.handle()
    finally:
        repo.close()
    return out.getvalue()


def upload_pack(repo_path: str, body: bytes, write: Callable[[bytes], None]) -> None:
    """Answer one stateless ``git-upload-pack`` request through ``write`` (the fallback when
    git is not installed; see ``gitserve`` for the usual path)."""
    repo = Repo(repo_path)

    def write_fn(data: bytes) -> int:
        write(data)
        return len(data)

    try:
        proto = ReceivableProtocol(io.BytesIO(body).read, write_fn)
        UploadPackHandler(_OneRepoBackend(repo), [repo_path], proto, stateless_rpc=True).handle()
    finally:
        repo.close()


def receive_pack(
    repo_path: str, body: IO[bytes], *, protected: Iterable[str], lock: threading.RLock | None = None,
    git: GitTools | None = None,
) -> PushOutcome:
    """Answer one ``git-receive-pack`` request with quarantine and the update policy.

    With ``git``, git's index-pack and rev-list do the pack work in the quarantine; dulwich
    still speaks the protocol, applies the policy and moves the refs.
    """
    repo = Repo(repo_path)
    target = _QuarantinedRepo(repo, protected, git=git)
    out = io.BytesIO()

    def write_fn(data: bytes) -> int:
        out.write(data)
        return len(data)

    try:
        proto = ReceivableProtocol(body.read, write_fn)
        handler = ReceivePackHandler(_OneRepoBackend(target), [repo_path], proto, stateless_rpc=True)
        if lock is not None:
            with lock:
                handler.handle()
        else:
            handler.handle()
    except GitProtocolError as exc:
        log.info("push refused: protocol error", extra={"error": str(exc)})
        raise
    finally:
        target.discard()
        repo.close()
    outcome = PushOutcome(output=out.getvalue(), refused=list(target.refused))
    for ref, old, new in target.moved:
        outcome.updated.append((ref.decode(), None if old == ZERO else old.decode(),
                                None if new == ZERO else new.decode()))
    return outcome
