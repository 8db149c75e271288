"""Copy-on-write workspaces for forks: frozen layers shared by overlayfs mounts.

Measured on the node's own file system (ext4 here, see ``bench/sandboxes.py``): reflinks
are not supported by ext4; a hard-link farm costs one ``link()`` per file and, worse,
shares each inode, so a sandbox writing a file in place (``open(O_RDWR)``, an editor's
truncate) changes it in every fork, since a process's writes cannot be intercepted to copy
first. overlayfs copies a file up on its first write in the kernel, and mounting it costs
the same whatever the workspace holds. So a fork freezes the source's workspace as a
read-only *layer* (a rename, no copy) and gives source and fork each an empty upper
directory over the same layers.

When the node runs as root, every sandbox has a host uid of its own, and a layer's files
belong to the sandbox that wrote them. Each fork sees its layers through idmapped mounts
(the layer's owner mapped to the fork's uid), so the fork owns what it sees and copies up
as itself; the layer on disk never changes.

Needs root (``mount``); without it forks are refused with a clear error.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import time
from pathlib import Path

from edgenode.errors import SandboxUnavailable

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MNT_DETACH = 2
_CLONE_NEWUSER = 0x10000000

#: Most layers one workspace may stack (a fork of a fork of ...); past it, forks are refused.
MAX_LAYERS = 32


def _check(result: int, what: str, path: object = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path) if path is not None else None)
    return result


def overlay_supported() -> str | None:
    """None when forks can be made here, else why not."""
    if os.geteuid() != 0:
        return "forks need the node to run as root (overlayfs mounts)"
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                return "this kernel has no overlayfs"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    return None


def user_namespace(from_id: int, to_id: int) -> int:
    """A descriptor of a new user namespace mapping uid and gid ``from_id`` to ``to_id`` (for idmapped mounts)."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only unshares, says so and waits
        try:
            os.close(ready_r)
            os.close(hold_w)
            ok = _libc.unshare(_CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "cannot create a user namespace for an idmapped mount")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"{from_id} {to_id} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def idmapped_bind(source: Path, target: Path, userns_fd: int) -> None:
    """Mount ``source`` at ``target`` with the ids mapped by ``userns_fd``."""
    tree = _check(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD),
                                ctypes.c_char_p(str(source).encode()),
                                ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)), "open_tree", source)
    try:
        attr = ctypes.create_string_buffer(struct.pack("=QQQQ", _MOUNT_ATTR_IDMAP, 0, 0, userns_fd))
        _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), ctypes.c_char_p(b""),
                             ctypes.c_uint(_AT_EMPTY_PATH), attr, ctypes.c_size_t(32)), "mount_setattr", source)
        _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), ctypes.c_char_p(b""),
                             ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(str(target).encode()),
                             ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", target)
    finally:
        os.close(tree)


def unmount(path: Path) -> None:
    """Detach the mount at ``path`` if there is one."""
    if _libc.umount2(str(path).encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL,
                                                                                           errno.ENOENT):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


class LayerStore:
    """Frozen layers under ``root`` and the overlay mounts of the workspaces that stack them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, layer: str) -> Path:
        """Where a layer's files are."""
        return self.root / layer

    def freeze(self, directory: Path) -> str:
        """Turn ``directory`` into a new layer (a rename, no copy); returns its id."""
        self.root.mkdir(mode=0o711, exist_ok=True)
        layer = f"L{time.time_ns():x}{os.getpid():x}"
        os.rename(directory, self.path(layer))
        return layer

    def mount(self, base: Path, layers: list[str], owner: tuple[int, int] | None) -> None:
        """Mount ``base/workspace`` as ``layers`` (top first) under ``base/upper``, as ``owner`` sees them."""
        if len(layers) > MAX_LAYERS:
            raise SandboxUnavailable(f"a workspace may stack at most {MAX_LAYERS} layers")
        upper, work, lower_root = base / "upper", base / "work", base / "lower"
        if work.exists():  # overlayfs wants its work directory empty at each mount
            shutil.rmtree(work)
        for path in (upper, work, lower_root, base / "workspace"):
            path.mkdir(mode=0o755, exist_ok=True)
        if owner is not None:
            os.chown(upper, *owner)
        lowers: list[Path] = []
        namespaces: dict[int, int] = {}
        try:
            for i, layer in enumerate(layers):
                source = self.path(layer)
                layer_owner = os.stat(source).st_uid
                if owner is None or layer_owner == owner[0]:
                    lowers.append(source)
                    continue
                # The layer's files as the sandbox's own: it may write them (copied up) like its own.
                if layer_owner not in namespaces:
                    namespaces[layer_owner] = user_namespace(layer_owner, owner[0])
                target = lower_root / str(i)
                target.mkdir(mode=0o755, exist_ok=True)
                idmapped_bind(source, target, namespaces[layer_owner])
                lowers.append(target)
        finally:
            for fd in namespaces.values():
                os.close(fd)
        options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
        if any(c in str(p) for p in (*lowers, upper, work) for c in ",:"):
            raise SandboxUnavailable("the data directory's path holds ',' or ':', which overlayfs cannot take")
        _check(_libc.mount(b"overlay", str(base / "workspace").encode(), b"overlay", 0, options.encode()),
               "mount overlay", base / "workspace")

    def unmount(self, base: Path) -> None:
        """Unmount a workspace's overlay and its idmapped layers."""
        unmount(base / "workspace")
        lower_root = base / "lower"
        if lower_root.is_dir():
            for entry in lower_root.iterdir():
                unmount(entry)

    def upper_is_empty(self, base: Path) -> bool:
        """Whether a stacked workspace has changed nothing since it was mounted over its layers."""
        with os.scandir(base / "upper") as entries:
            return next(entries, None) is None

    def collect(self, referenced: set[str]) -> list[str]:
        """Remove the layers no workspace stacks; returns their ids."""
        if not self.root.is_dir():
            return []
        removed = []
        for entry in self.root.iterdir():
            if entry.name not in referenced:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed


__all__ = ["MAX_LAYERS", "LayerStore", "idmapped_bind", "overlay_supported", "unmount", "user_namespace"]
