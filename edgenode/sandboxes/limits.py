"""A sandbox's resource limits, how they are enforced, and disk accounting.

bwrap sets no limits of its own. Where the node can write a cgroup v2 subtree
with the memory and pids controllers, cgroups would bound the sandbox as a whole;
otherwise (as on hosts whose memory and pids controllers sit in cgroup v1) the
sandbox is bounded by rlimits, which the in-sandbox supervisor sets:

- pids: ``RLIMIT_NPROC`` on the supervisor, inherited by everything in the sandbox.
  Each sandbox runs as its own host uid, so the count is per sandbox;
- memory: ``RLIMIT_AS`` per process; CPU: ``RLIMIT_CPU`` per process;
- open files: ``RLIMIT_NOFILE``; disk: ``RLIMIT_FSIZE`` caps one file at the quota,
  and the node measures the workspace while commands run and stops them past it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edgenode.config import SandboxSettings
from edgenode.errors import ValidationFailed

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits, each already within the node's maxima."""

    memory_mb: int
    pids: int
    cpu_s: int
    timeout_s: int
    disk_mb: int
    open_files: int

    def as_dict(self) -> dict[str, int]:
        """The limits as plain JSON."""
        return asdict(self)

    def rlimits(self) -> dict[str, int]:
        """rlimits for one command (names the guest supervisor understands)."""
        return {
            "as": self.memory_mb * MIB,
            "cpu": self.cpu_s,
            "fsize": self.disk_mb * MIB,
            "nofile": self.open_files,
            "core": 0,
        }


def _maxima(settings: SandboxSettings) -> dict[str, int]:
    return {
        "memory_mb": settings.max_memory_mb,
        "pids": settings.max_pids,
        "cpu_s": settings.max_cpu_s,
        "timeout_s": settings.max_exec_s,
        "disk_mb": settings.max_disk_mb,
        "open_files": settings.max_open_files,
    }


def _defaults(settings: SandboxSettings) -> dict[str, int]:
    maxima = _maxima(settings)
    wanted = {
        "memory_mb": settings.default_memory_mb,
        "pids": settings.default_pids,
        "cpu_s": settings.default_cpu_s,
        "timeout_s": settings.default_exec_s,
        "disk_mb": settings.default_disk_mb,
        "open_files": settings.default_open_files,
    }
    return {k: min(v, maxima[k]) for k, v in wanted.items()}


#: Floors below which common tools cannot even start (python3 maps ~30 MiB at start).
_MINIMA = {"memory_mb": 64, "pids": 8, "cpu_s": 1, "timeout_s": 1, "disk_mb": 1, "open_files": 32}


def resolve_limits(requested: Any, settings: SandboxSettings) -> Limits:
    """Limits from a request's ``limits`` object, defaults filled in; 400 past a node maximum."""
    if requested is None:
        requested = {}
    if not isinstance(requested, dict):
        raise ValidationFailed("field 'limits' must be an object", field="limits")
    maxima = _maxima(settings)
    values = _defaults(settings)
    for key, value in requested.items():
        if key not in maxima:
            raise ValidationFailed(f"unknown limit {key!r}; known: {', '.join(maxima)}", field=f"limits.{key}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationFailed(f"limit {key!r} must be an integer", field=f"limits.{key}")
        if value < _MINIMA[key]:
            raise ValidationFailed(f"limit {key!r} must be at least {_MINIMA[key]}", field=f"limits.{key}")
        if value > maxima[key]:
            raise ValidationFailed(f"limit {key!r} is {value}, above this node's maximum of {maxima[key]}",
                                   field=f"limits.{key}", maximum=maxima[key])
        values[key] = value
    return Limits(**values)


def limits_from_json(data: dict[str, Any], settings: SandboxSettings) -> Limits:
    """Stored limits, clamped to the node's current maxima (which may have been lowered)."""
    maxima = _maxima(settings)
    values = _defaults(settings)
    for key in values:
        if isinstance(data.get(key), int):
            values[key] = min(int(data[key]), maxima[key])
    return Limits(**values)


def cgroup_v2_writable(root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The cgroup v2 directory of this process if the node can delegate memory and pids limits there.

    The node's own cgroup must be on a cgroup2 mount, list ``memory`` and ``pids`` among its
    controllers, and be writable. On hosts with the v1 layout (v2 mounted at
    ``/sys/fs/cgroup/unified`` with no controllers) this is None.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return None
    for mount in (root, root / "unified"):
        candidate = mount / relative.lstrip("/")
        controllers = candidate / "cgroup.controllers"
        try:
            available = set(controllers.read_text().split())
        except OSError:
            continue
        if {"memory", "pids"} <= available and os.access(candidate, os.W_OK):
            return candidate
    return None


def cgroup_v2_reason(proc_cgroup: str | None = None) -> str:
    """Why the node cannot bound sandboxes with cgroup v2 here (from ``/proc/self/cgroup``, or the text
    given), in words an operator can act on."""
    try:
        lines = (proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()).splitlines()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup ({exc})"
    v1 = sorted({c for line in lines if not line.startswith("0::") for c in line.split(":")[1].split(",")}
                & {"memory", "pids"})
    if v1:
        return (f"the {' and '.join(v1)} controller(s) are mounted as cgroup v1 on this host, so cgroup v2 "
                "cannot use them (boot with the unified hierarchy, systemd.unified_cgroup_hierarchy=1)")
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return "no cgroup v2 hierarchy is mounted"
    return (f"the node's cgroup {relative} is not delegated to it with the memory and pids controllers "
            "(under systemd: Delegate=yes in the node's unit)")


def enforcement(cgroup: Path | None) -> dict[str, str]:
    """How each limit is enforced on this node, and why not per sandbox when it is not."""
    reason = cgroup_v2_reason() if cgroup is None else (
        f"cgroup v2 with memory and pids is writable at {cgroup}, but this version does not place "
        "sandboxes in cgroups yet")
    return {
        "mode": "rlimits",
        "reason": reason,
        "memory": "RLIMIT_AS per process: a sandbox of N processes may use up to N times memory_mb",
        "pids": "RLIMIT_NPROC on the sandbox's own host uid (per sandbox when the node runs as root)",
        "cpu_s": "RLIMIT_CPU per process",
        "disk_mb": "measured continuously, processes stopped past it",
    }


class DiskUsage(NamedTuple):
    """What a sandbox holds on the host's disk."""

    bytes: int
    files: int  # inodes: files, directories and links (an empty file costs no block but one inode)


def measure(*roots: Path) -> DiskUsage:
    """Bytes allocated to, and the number of, entries under ``roots``, without following symlinks."""
    total = 0
    files = 0
    stack = [str(r) for r in roots]
    while stack:
        path = stack.pop()
        try:
            entries = os.scandir(path)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                files += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return DiskUsage(total, files)


def disk_usage(*roots: Path) -> int:
    """Bytes allocated to every file under ``roots``, without following symlinks."""
    return measure(*roots).bytes


__all__ = ["DiskUsage", "Limits", "cgroup_v2_reason", "cgroup_v2_writable", "disk_usage", "enforcement",
           "limits_from_json", "measure", "resolve_limits"]
