"""A workspace as a manifest of entries, read and written back without ever following a symlink.

Reading (:func:`scan`, :class:`PieceReader`) walks the workspace by directory descriptors: every
entry is looked at with ``fstatat(AT_SYMLINK_NOFOLLOW)``, a directory is entered with
``openat2(RESOLVE_BENEATH)`` and ``O_NOFOLLOW``, a symlink is recorded as its target's text and
never followed, so a link a sandboxed process planted cannot make the node read outside the
workspace. Sockets, FIFOs and devices are not part of a workspace's files and are skipped.

Writing (:class:`Restorer`) only goes into a fresh, empty workspace, and only from a manifest
:func:`parse_manifest` accepted: paths relative, without ``..``, in canonical form, each one's
parent a directory of the manifest itself (so nothing is ever written *through* a symlink), modes
without set-id bits. Every parent is opened with ``openat2(RESOLVE_BENEATH)`` from the workspace
root and every final component is created with ``O_EXCL | O_NOFOLLOW``, so even a manifest that
got past the checks could not lead outside: the kernel would refuse the walk.

A symlink's target is kept as text, absolute or relative: inside the sandbox it names a path of
the sandbox's own file system (``python -m venv`` links ``bin/python`` to ``/usr/bin/python3``);
the node itself never resolves it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenode.errors import CheckpointInvalid, SandboxPathRefused
from edgenode.sandboxes.paths import check_path, openat2

#: The version of the manifest format.
VERSION = 1
#: Bytes of a file per blob: a larger file is several blobs, so memory stays bounded and an
#: append re-uploads only its last pieces.
PIECE_BYTES = 4 * 1024 * 1024
#: Longest path or symlink target kept, in bytes (Linux's PATH_MAX).
PATH_MAX = 4096
_NAME_MAX = 255
_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
#: Files the node's own uploads are being written to (see paths.Workspace.begin_write).
_UPLOAD_PREFIX = ".edgenode-upload-"
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Entry:
    """One entry of a workspace: a file, a directory or a symlink (``path`` relative to its root)."""

    path: str
    type: str
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    #: A file's content SHA-256.
    digest: str = ""
    #: A file's blobs, in order (one per :data:`PIECE_BYTES` of content).
    blobs: list[str] = field(default_factory=list)
    #: A symlink's target.
    target: str = ""
    #: What identifies an unchanged file locally (size, mtime, ctime, inode); not in the manifest.
    stamp: tuple[int, int, int, int] = (0, 0, 0, 0)

    def as_json(self) -> dict[str, Any]:
        """The entry as the manifest stores it."""
        if self.type == "file":
            return {"path": self.path, "type": "file", "mode": self.mode, "size": self.size,
                    "mtime_ns": self.mtime_ns, "digest": self.digest, "blobs": self.blobs}
        if self.type == "symlink":
            return {"path": self.path, "type": "symlink", "target": self.target}
        return {"path": self.path, "type": "directory", "mode": self.mode, "mtime_ns": self.mtime_ns}


@dataclass
class Scan:
    """What :func:`scan` found: the entries (sorted by path) and what it skipped."""

    entries: list[Entry]
    skipped: list[str]

    @property
    def file_bytes(self) -> int:
        """The size of every regular file together."""
        return sum(e.size for e in self.entries if e.type == "file")


def scan(root: Path, *, max_entries: int) -> Scan:
    """Every file, directory and symlink under ``root``, found without following a symlink.

    Raises CheckpointInvalid (reason ``too_many``) past ``max_entries`` entries.
    """
    entries: list[Entry] = []
    skipped: list[str] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack: list[tuple[str, int]] = [("", root_fd)]
    try:
        while stack:
            prefix, dir_fd = stack.pop()
            try:
                for name in sorted(os.listdir(dir_fd)):
                    if name.startswith(_UPLOAD_PREFIX):
                        continue  # a write in progress: not a file of the workspace yet
                    path = prefix + name
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed meanwhile
                    if len(entries) >= max_entries:
                        raise CheckpointInvalid(f"the workspace holds more than {max_entries} entries, the most a "
                                                "checkpoint takes (sandboxes.max_files)", reason="too_many",
                                                limit=max_entries)
                    mode = stat.S_IMODE(st.st_mode)
                    if stat.S_ISREG(st.st_mode):
                        entries.append(Entry(path, "file", mode, st.st_size, st.st_mtime_ns,
                                             stamp=(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)))
                    elif stat.S_ISLNK(st.st_mode):
                        try:
                            target = os.readlink(name, dir_fd=dir_fd)
                        except FileNotFoundError:
                            continue
                        entries.append(Entry(path, "symlink", target=target))
                    elif stat.S_ISDIR(st.st_mode):
                        try:
                            child = openat2(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                        except OSError as exc:
                            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                                continue  # removed or swapped for a symlink meanwhile
                            raise
                        entries.append(Entry(path, "directory", mode, mtime_ns=st.st_mtime_ns))
                        stack.append((path + "/", child))
                    else:
                        skipped.append(path)
            finally:
                os.close(dir_fd)
    except BaseException:
        for _, fd in stack:
            os.close(fd)
        raise
    entries.sort(key=lambda e: e.path)
    return Scan(entries, skipped)


class PieceReader:
    """A workspace file opened beneath the root without following symlinks, read and hashed piece by piece.

    Each piece comes back prefixed with ``scope`` and with its blob's name (the SHA-256 of both),
    and the file's own SHA-256 (``whole``) grows with it: the hashing happens on the thread that
    reads, not on the event loop.
    """

    def __init__(self, root: Path, path: str, scope: bytes) -> None:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = openat2(root_fd, path, os.O_RDONLY | os.O_NOFOLLOW)
        finally:
            os.close(root_fd)
        self.scope = scope
        self.before = _stamp(os.fstat(self.fd))
        self.whole = hashlib.sha256()
        self.size = 0

    def read(self) -> tuple[bytes, str, int]:
        """The next piece as a blob (scope + up to :data:`PIECE_BYTES`), its name, and its length (0: the end)."""
        parts: list[bytes] = [self.scope]
        wanted = PIECE_BYTES
        while wanted:
            chunk = os.read(self.fd, min(wanted, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            self.whole.update(chunk)
            wanted -= len(chunk)
        blob = b"".join(parts)
        length = len(blob) - len(self.scope)
        self.size += length
        return blob, hashlib.sha256(blob).hexdigest(), length

    def close(self) -> bool:
        """Close it; whether the file stayed unchanged while it was read."""
        try:
            return _stamp(os.fstat(self.fd)) == self.before
        finally:
            os.close(self.fd)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


# -- the manifest ------------------------------------------------------------------


def dump_manifest(entries: list[Entry]) -> bytes:
    """The manifest's one byte form (canonical JSON, entries sorted by path)."""
    body = {"v": VERSION, "entries": [e.as_json() for e in sorted(entries, key=lambda e: e.path)]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _refuse(message: str, reason: str, path: str | None = None) -> CheckpointInvalid:
    return CheckpointInvalid(message, reason=reason, **({"path": path} if path is not None else {}))


def _int(item: dict[str, Any], key: str, path: str, *, high: int) -> int:
    value = item.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise _refuse(f"entry {path!r}: {key!r} is not an integer in 0..{high}", "malformed", path)
    return value


def _text(value: Any, what: str, path: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value.encode()) > PATH_MAX:
        raise _refuse(f"entry {path!r}: the {what} is not a path of at most {PATH_MAX} bytes", "malformed", path)
    return value


def parse_manifest(data: bytes, *, max_entries: int) -> list[Entry]:
    """A manifest's entries, parents before children; CheckpointInvalid for anything a restore must refuse."""
    try:
        body = json.loads(data)
    except ValueError:
        raise _refuse("the manifest is not JSON", "malformed") from None
    if not isinstance(body, dict) or body.get("v") != VERSION or not isinstance(body.get("entries"), list):
        raise _refuse(f"the manifest is not a version {VERSION} manifest", "malformed")
    items: list[Any] = body["entries"]
    if len(items) > max_entries:
        raise _refuse(f"the manifest has more than {max_entries} entries (sandboxes.max_files)", "too_many")
    directories = {""}
    seen: set[str] = set()
    entries: list[Entry] = []
    for item in items:
        if not isinstance(item, dict):
            raise _refuse("a manifest entry is not an object", "malformed")
        path = _text(item.get("path"), "path", str(item.get("path")))
        try:
            parts = check_path(path)
        except SandboxPathRefused as exc:
            raise _refuse(f"entry {path!r} leads outside the workspace: {exc.message}", "escapes", path) from None
        if "/".join(parts) != path or any(len(p.encode()) > _NAME_MAX for p in parts):
            raise _refuse(f"entry {path!r} is not a canonical relative path", "malformed", path)
        if path in seen:
            raise _refuse(f"entry {path!r} appears twice", "malformed", path)
        seen.add(path)
        kind = item.get("type")
        entry = Entry(path, str(kind))
        if kind == "file":
            entry.mode = _int(item, "mode", path, high=0o7777) & 0o777
            entry.size = _int(item, "size", path, high=1 << 62)
            entry.mtime_ns = _int(item, "mtime_ns", path, high=1 << 63)
            entry.digest = str(item.get("digest"))
            blobs = item.get("blobs")
            pieces = max(1, -(-entry.size // PIECE_BYTES))
            if (not _DIGEST.match(entry.digest) or not isinstance(blobs, list) or len(blobs) != pieces
                    or not all(isinstance(b, str) and _DIGEST.match(b) for b in blobs)):
                raise _refuse(f"entry {path!r}: its digest or blobs are malformed", "malformed", path)
            entry.blobs = list(blobs)
        elif kind == "directory":
            entry.mode = _int(item, "mode", path, high=0o7777) & 0o1777
            entry.mtime_ns = _int(item, "mtime_ns", path, high=1 << 63)
            directories.add(path)
        elif kind == "symlink":
            entry.target = _text(item.get("target"), "symlink target", path)
        else:
            raise _refuse(f"entry {path!r} has unknown type {kind!r}", "malformed", path)
        entries.append(entry)
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        if parent not in directories:
            # Its parent is a symlink, a file, or missing: writing it would go through something else.
            raise _refuse(f"entry {entry.path!r} is not under a directory of the manifest", "escapes", entry.path)
    entries.sort(key=lambda e: (e.path.count("/"), e.path))
    return entries


# -- writing back ------------------------------------------------------------------


class Restorer:
    """Writes a parsed manifest's entries into an empty workspace, beneath its root only."""

    def __init__(self, root: Path, owner: tuple[int, int] | None) -> None:
        self.root = root
        self.owner = owner
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._directories: list[Entry] = []

    def close(self) -> None:
        """Give directories their modes and times (deepest first, once their content is in), sync, close."""
        try:
            for entry in sorted(self._directories, key=lambda e: -e.path.count("/")):
                fd = self._open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    os.fchmod(fd, entry.mode)
                    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                finally:
                    os.close(fd)
            _libc.syncfs(self.root_fd)
        finally:
            os.close(self.root_fd)

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        parent, _, name = path.rpartition("/")
        fd = self._open(parent or ".", os.O_PATH | os.O_DIRECTORY)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _open(self, path: str, flags: int) -> int:
        try:
            return openat2(self.root_fd, path, flags)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP):
                raise _refuse(f"entry {path!r} leads outside the workspace", "escapes", path) from None
            raise

    def _chown(self, fd: int | None = None, name: str | None = None, dir_fd: int | None = None) -> None:
        if self.owner is None:
            return
        if fd is not None:
            os.fchown(fd, *self.owner)
        elif name is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def directory(self, entry: Entry) -> None:
        """Make a directory (its mode is set at :meth:`close`)."""
        with self._parent(entry.path) as (parent, name):
            os.mkdir(name, 0o700, dir_fd=parent)
            self._chown(name=name, dir_fd=parent)
        self._directories.append(entry)

    def symlink(self, entry: Entry) -> None:
        """Make a symlink (never followed)."""
        with self._parent(entry.path) as (parent, name):
            os.symlink(entry.target, name, dir_fd=parent)
            self._chown(name=name, dir_fd=parent)

    def create(self, entry: Entry) -> int:
        """A new file's descriptor, to :meth:`write` its pieces into and :meth:`finish`."""
        with self._parent(entry.path) as (parent, name):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
        self._chown(fd)
        return fd

    @staticmethod
    def write(fd: int, data: memoryview, whole: Any) -> None:
        """Append ``data`` to a file being restored, and to ``whole`` (its hash so far)."""
        whole.update(data)
        view = data
        while view:
            view = view[os.write(fd, view):]

    @staticmethod
    def finish(fd: int, entry: Entry) -> tuple[int, int, int, int]:
        """Give the file its mode and time and close it; what identifies it unchanged from now on."""
        try:
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            return _stamp(os.fstat(fd))
        finally:
            os.close(fd)
