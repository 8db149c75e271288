"""Watching a workspace path for changes with inotify (through ctypes): created, modified, deleted, moved.

Watches are added on directories the node opened itself, beneath the workspace
(``openat2`` with ``RESOLVE_BENEATH``, then ``/proc/self/fd/N``), so a symlink a
sandboxed process plants cannot point a watch outside. Recursive watches follow new
directories as they appear, up to ``max_dirs``; past that, and when the kernel's queue
overflows, an ``overflow`` event says that changes may have been missed.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import Any

from edgenode.errors import Conflict
from edgenode.sandboxes.paths import Workspace, check_path, openat2

_libc = ctypes.CDLL(None, use_errno=True)

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
         | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)  # no IN_DONT_FOLLOW: /proc/self/fd/N is a link to follow
_HEADER = struct.Struct("iIII")
#: Directories one recursive watch follows at most.
MAX_DIRS = 4096
#: Events kept for a slow reader before an ``overflow`` replaces what does not fit.
MAX_QUEUED = 10_000


@dataclass(frozen=True)
class Change:
    """One change: ``kind`` is created, modified, deleted, moved or overflow; paths relative to /workspace."""

    kind: str
    path: str
    is_dir: bool = False
    to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The change as JSON."""
        out: dict[str, Any] = {"path": self.path, "is_dir": self.is_dir}
        if self.to is not None:
            out["from"], out["path"] = self.path, self.to
        return out


class Watch:
    """Changes under one path of a workspace, while open: iterate :meth:`changes`, then :meth:`close`."""

    def __init__(self, workspace: Workspace, path: str, *, recursive: bool, max_dirs: int = MAX_DIRS) -> None:
        self.workspace = workspace
        self.recursive = recursive
        self.max_dirs = max_dirs
        self.base = "/".join(check_path(path))
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.dirs: dict[int, str] = {}  # watch descriptor -> path relative to the workspace
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._moves: dict[int, Change] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.truncated = False
        try:
            self._add_tree(self.base)
        except BaseException:
            os.close(self.fd)
            raise

    def _add_tree(self, rel: str, announce: bool = False) -> None:
        with self.workspace._root_fd() as root:
            try:
                top = openat2(root, rel or ".", os.O_PATH | os.O_DIRECTORY) if rel else os.dup(root)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise Conflict(f"{rel!r} is not a directory: watch its directory") from None
                raise
        stack = [(top, rel)]
        while stack:
            fd, here = stack.pop()
            try:
                if len(self.dirs) >= self.max_dirs:
                    self.truncated = True
                    continue
                wd = _libc.inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), _MASK)
                if wd < 0:
                    if here == rel:
                        err = ctypes.get_errno()
                        raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", here)
                    continue
                self.dirs[wd] = here
                if not self.recursive:
                    continue
                with os.scandir(f"/proc/self/fd/{fd}") as entries:
                    for entry in entries:
                        if announce:  # made before its directory was watched: say so now
                            self._put(Change("created", f"{here}/{entry.name}" if here else entry.name,
                                             entry.is_dir(follow_symlinks=False)))
                        if entry.is_dir(follow_symlinks=False):
                            try:
                                child = os.open(entry.name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                                | os.O_CLOEXEC, dir_fd=fd)
                            except OSError:
                                continue
                            stack.append((child, f"{here}/{entry.name}" if here else entry.name))
            finally:
                os.close(fd)

    def start(self) -> None:
        """Start delivering changes to :attr:`queue` (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_readable)

    def _put(self, change: Change) -> None:
        if self.queue.qsize() >= MAX_QUEUED:
            return
        if self.queue.qsize() == MAX_QUEUED - 1:
            change = Change("overflow", self.base)
        self.queue.put_nowait(change)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            self.queue.put_nowait(None)
            return
        offset = 0
        last: Change | None = None
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, size = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size: offset + _HEADER.size + size]
            offset += _HEADER.size + size
            name = raw.rstrip(b"\0").decode(errors="surrogateescape")
            change = self._change(wd, mask, cookie, name)
            if change is not None and change != last:  # a write of many blocks is one "modified"
                self._put(change)
                last = change
        for pending in self._moves.values():  # moved out of what is watched: gone from here
            self._put(Change("deleted", pending.path, pending.is_dir))
        self._moves.clear()

    def _change(self, wd: int, mask: int, cookie: int, name: str) -> Change | None:
        if mask & IN_Q_OVERFLOW:
            return Change("overflow", self.base)
        if mask & IN_IGNORED:
            self.dirs.pop(wd, None)
            return None
        parent = self.dirs.get(wd)
        if parent is None or not name:
            return None
        path = f"{parent}/{name}" if parent else name
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            if is_dir and self.recursive:
                self._follow(path)
            return Change("created", path, is_dir)
        if mask & (IN_MODIFY | IN_CLOSE_WRITE):
            return Change("modified", path, is_dir)
        if mask & IN_DELETE:
            return Change("deleted", path, is_dir)
        if mask & IN_MOVED_FROM:
            self._moves[cookie] = Change("moved", path, is_dir)
            return None
        if mask & IN_MOVED_TO:
            if is_dir and self.recursive:
                self._follow(path)
            source = self._moves.pop(cookie, None)
            if source is None:
                return Change("created", path, is_dir)
            return Change("moved", source.path, is_dir, to=path)
        return None

    def _follow(self, path: str) -> None:
        try:
            self._add_tree(path, announce=True)
        except (OSError, Conflict):
            pass  # gone again already, or replaced by something else

    def close(self) -> None:
        """Stop watching."""
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


__all__ = ["Change", "Watch"]
