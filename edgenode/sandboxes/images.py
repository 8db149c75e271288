"""Root file systems prepared on the node, that a sandbox may name instead of the host's system dirs.

An image is a directory ``DATA/sandboxes/images/<name>/rootfs`` made from a directory
(hard-linked where it is on the same file system, else copied) or a tarball (extracted
with the standard library's ``tar`` filter: no absolute paths, no ``..``, no device
files). Its ``/usr``, ``/bin``, ``/lib``... and ``/etc`` are mounted read-only in the
sandbox in place of the host's, with the workspace writable as always. It must hold a
``python3`` of 3.9 or newer (``usr/bin/python3``), which runs the sandbox's supervisor.

From Debian packages: ``debootstrap --variant=minbase --include=python3 bookworm DIR``
then ``edgenode sandbox image add NAME DIR``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from edgenode.errors import Conflict, NotFound, ValidationFailed

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
#: Where the supervisor's interpreter may be in an image, as the sandbox sees it.
PYTHONS = ("/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3")


def check_image_name(name: Any) -> str:
    """``name`` if it is a valid image name; 400 otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationFailed("an image name is lower-case letters, digits, '.', '_' or '-' (up to 63)",
                               field="image")
    return name


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


class Images:
    """The node's sandbox images under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def rootfs(self, name: str) -> Path:
        """An image's root file system; 404 if there is no such image."""
        path = self.root / check_image_name(name) / "rootfs"
        if not path.is_dir():
            raise NotFound(f"no sandbox image {name!r} on this node (see 'edgenode sandbox image add')")
        return path

    def python(self, name: str) -> str:
        """The image's python3, as a path inside the sandbox."""
        rootfs = self.rootfs(name)
        for candidate in PYTHONS:
            if os.path.lexists(str(rootfs) + candidate):
                return candidate
        raise NotFound(f"sandbox image {name!r} has no python3")

    def add(self, name: str, source: Path) -> dict[str, Any]:
        """Make image ``name`` from a directory or a tarball on the node's file system."""
        check_image_name(name)
        if (self.root / name).exists():
            raise Conflict(f"a sandbox image named {name!r} exists; remove it first")
        if not source.is_absolute():
            raise ValidationFailed("field 'path' must be an absolute path on the node", field="path")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(self.root, 0o755)
        staging = self.root / f".{name}.{secrets.token_hex(4)}"
        rootfs = staging / "rootfs"
        staging.mkdir(mode=0o755)
        try:
            if source.is_dir():
                shutil.copytree(source, rootfs, symlinks=True, copy_function=_link_or_copy)
                kind = "directory"
            elif source.is_file() and tarfile.is_tarfile(source):
                with tarfile.open(source) as tar:
                    tar.extractall(rootfs, filter="tar")
                kind = "tarball"
            else:
                raise ValidationFailed(f"{str(source)!r} is neither a directory nor a tarball", field="path")
            os.chmod(rootfs, 0o755)
            # bwrap mounts the sandbox's own passwd and group over these: they must exist (/etc is read-only).
            (rootfs / "etc").mkdir(mode=0o755, exist_ok=True)
            for name_in_etc in ("passwd", "group"):
                target = rootfs / "etc" / name_in_etc
                if not os.path.lexists(target):
                    target.write_bytes(b"")
            if not any(os.path.lexists(str(rootfs) + p) for p in PYTHONS):
                raise ValidationFailed("the image has no python3 (usr/bin/python3), which runs the sandbox's "
                                       "supervisor", field="path")
            info = {"name": name, "source": str(source), "kind": kind, "created_at": time.time()}
            (staging / "image.json").write_text(json.dumps(info))
            os.rename(staging, self.root / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return info

    def list(self) -> list[dict[str, Any]]:
        """Every image, by name."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not (entry / "image.json").is_file():
                continue
            out.append(json.loads((entry / "image.json").read_text()))
        return out

    def remove(self, name: str) -> None:
        """Remove an image (the caller checks that no sandbox names it)."""
        self.rootfs(name)
        shutil.rmtree(self.root / name)


__all__ = ["Images", "check_image_name"]
