"""File operations on a workspace, resolved inside it by the kernel.

Paths from clients are checked twice. First by their text: absolute paths and
``..`` components are refused outright. Then every lookup goes through
``openat2(RESOLVE_BENEATH)`` from a descriptor of the workspace root, so a symlink
that a sandboxed process planted (or swaps in mid-request) can never lead the node
outside: the kernel refuses the walk with ``EXDEV``. Final components are created,
renamed and removed relative to their parent's descriptor, never by path name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgenode.errors import Conflict, NotFound
from edgenode.errors import SandboxPathRefused as PathRefused

_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """``openat2`` with ``RESOLVE_BENEATH``: open ``path`` under ``dir_fd`` or fail with OSError."""
    how = ctypes.create_string_buffer(struct.pack("=QQQ", flags | os.O_CLOEXEC, mode,
                                                  _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS))
    raw = path.encode()
    for _ in range(8):
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(raw),
                           how, ctypes.c_size_t(24))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:  # EAGAIN: a rename raced the walk; try again
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def check_path(path: str) -> list[str]:
    """The components of a client's relative path; PathRefused for absolute paths and ``..``."""
    if "\x00" in path:
        raise PathRefused("path contains a NUL byte", path=path, reason="invalid")
    if path.startswith("/"):
        raise PathRefused(f"absolute path {path!r} refused: paths are relative to /workspace",
                          path=path, reason="absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"path {path!r} refused: '..' is not allowed", path=path, reason="traversal")
    return parts


def _translate(exc: OSError, path: str) -> Exception:
    if exc.errno == errno.EXDEV:
        return PathRefused(f"path {path!r} leads outside the workspace (through a symlink)",
                           path=path, reason="escapes")
    if exc.errno == errno.ELOOP:
        return PathRefused(f"path {path!r} has too many or forbidden symlinks", path=path, reason="escapes")
    if exc.errno == errno.ENOENT:
        return NotFound(f"no such file or directory: {path!r}")
    if exc.errno == errno.ENOTDIR:
        return Conflict(f"a component of {path!r} is not a directory")
    if exc.errno == errno.EISDIR:
        return Conflict(f"{path!r} is a directory")
    if exc.errno == errno.ENOTEMPTY:
        return Conflict(f"directory {path!r} is not empty; delete it with recursive=true")
    if exc.errno == errno.EEXIST:
        return Conflict(f"{path!r} already exists")
    return exc


class Workspace:
    """A sandbox's workspace directory on the host; every path is relative to it."""

    def __init__(self, root: Path, *, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner  # (uid, gid) new files get; None when the node is not root

    @contextmanager
    def _root_fd(self) -> Iterator[int]:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """A descriptor of ``path``'s parent directory and its final name."""
        parts = check_path(path)
        if not parts:
            raise PathRefused("this operation needs a path inside the workspace, not its root",
                              path=path, reason="root")
        with self._root_fd() as root:
            parent = "/".join(parts[:-1]) or "."
            try:
                fd = openat2(root, parent, os.O_PATH | os.O_DIRECTORY)
            except OSError as exc:
                raise _translate(exc, path) from exc
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _chown(self, fd: int) -> None:
        if self.owner is not None:
            os.fchown(fd, *self.owner)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """A descriptor of ``path`` (following only symlinks that stay inside)."""
        parts = check_path(path)
        with self._root_fd() as root:
            try:
                return openat2(root, "/".join(parts) or ".", flags)
            except OSError as exc:
                raise _translate(exc, path) from exc

    def stat(self, path: str) -> os.stat_result:
        """``stat`` of ``path``."""
        fd = self.open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def list(self, path: str) -> list[dict[str, Any]]:
        """The entries of directory ``path``: name, type, size, mode and mtime."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        entries = []
        try:
            for name in sorted(os.listdir(fd)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                entry: dict[str, Any] = {
                    "name": name,
                    "type": _kind(st.st_mode),
                    "size": st.st_size,
                    "mode": oct(stat.S_IMODE(st.st_mode)),
                    "mtime": st.st_mtime,
                }
                if stat.S_ISLNK(st.st_mode):
                    entry["target"] = os.readlink(name, dir_fd=fd)
                entries.append(entry)
        finally:
            os.close(fd)
        return entries

    def begin_write(self, path: str) -> tuple[int, int, str, str]:
        """Start writing ``path``: ``(file fd, parent fd, temp name, final name)``; see :meth:`commit`."""
        with self._parent(path) as (parent, name):
            temp = f".edgenode-upload-{secrets.token_hex(6)}"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=parent)
            except OSError as exc:
                raise _translate(exc, path) from exc
            self._chown(fd)
            return fd, os.dup(parent), temp, name

    def commit(self, fd: int, parent: int, temp: str, name: str, path: str) -> None:
        """Finish a write: the temp file atomically replaces ``name`` (a symlink there is replaced, not followed)."""
        try:
            os.fsync(fd)
            os.close(fd)
            try:
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except OSError as exc:
                os.unlink(temp, dir_fd=parent)
                raise _translate(exc, path) from exc
        finally:
            os.close(parent)

    def abort(self, fd: int, parent: int, temp: str) -> None:
        """Drop an unfinished write."""
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            os.unlink(temp, dir_fd=parent)
        except OSError:
            pass
        os.close(parent)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file at once."""
        fd, parent, temp, name = self.begin_write(path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            self.abort(fd, parent, temp)
            raise
        self.commit(fd, parent, temp, name, path)

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Create directory ``path`` (and missing parents when ``parents``)."""
        parts = check_path(path)
        if not parts:
            return
        with self._root_fd() as root:
            current = os.dup(root)
            try:
                for i, part in enumerate(parts):
                    last = i == len(parts) - 1
                    try:
                        nxt = openat2(current, part, os.O_PATH | os.O_DIRECTORY)
                    except OSError as exc:
                        if exc.errno != errno.ENOENT or (not parents and not last):
                            raise _translate(exc, path) from exc
                        try:
                            os.mkdir(part, 0o755, dir_fd=current)
                        except FileExistsError:
                            pass
                        nxt = openat2(current, part, os.O_RDONLY | os.O_DIRECTORY)
                        self._chown(nxt)
                    else:
                        if last and not parents:
                            os.close(nxt)
                            raise Conflict(f"{path!r} already exists")
                    os.close(current)
                    current = nxt
            finally:
                os.close(current)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, symlink or (empty, or with ``recursive``) directory."""
        with self._parent(path) as (parent, name):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if recursive:
                        # rmtree with dir_fd walks by descriptor and never follows symlinks.
                        shutil.rmtree(name, dir_fd=parent)
                    else:
                        os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
            except OSError as exc:
                raise _translate(exc, path) from exc

    def move(self, source: str, destination: str, *, overwrite: bool = False) -> None:
        """Rename ``source`` to ``destination`` inside the workspace."""
        with self._parent(source) as (src_parent, src_name), self._parent(destination) as (dst_parent, dst_name):
            try:
                os.stat(src_name, dir_fd=src_parent, follow_symlinks=False)
                if not overwrite:
                    try:
                        os.stat(dst_name, dir_fd=dst_parent, follow_symlinks=False)
                    except FileNotFoundError:
                        pass
                    else:
                        raise Conflict(f"{destination!r} already exists; pass overwrite=true to replace it")
                os.rename(src_name, dst_name, src_dir_fd=src_parent, dst_dir_fd=dst_parent)
            except OSError as exc:
                raise _translate(exc, source) from exc


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


__all__ = ["PathRefused", "Workspace", "check_path", "openat2"]
