"""A sandbox's resource limits, how they are enforced, and disk accounting.

bwrap sets no limits of its own. Where the node can write cgroups (a delegated v2
subtree, or the v1 memory and pids hierarchies; see cgroups.py), each sandbox's
cgroup bounds its memory and processes as a whole. Otherwise the sandbox is
bounded by rlimits, which the in-sandbox supervisor sets:

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
from edgenode.sandboxes.cgroups import CgroupTree

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

    def rlimits(self, *, memory_per_process: bool = True) -> dict[str, int]:
        """rlimits for one command (names the guest supervisor understands); without
        ``memory_per_process`` (a cgroup bounds the whole sandbox) no address-space limit."""
        per_process = {"as": self.memory_mb * MIB} if memory_per_process else {}
        return {
            **per_process,
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


def enforcement(tree: CgroupTree | None, why: str) -> dict[str, str]:
    """How each limit is enforced on this node (``why``: the sentence :func:`open_tree` gave), plainly."""
    common = {"cpu_s": "RLIMIT_CPU per process", "disk_mb": "measured continuously, processes stopped past it"}
    if tree is None:
        return {
            "mode": "rlimits",
            "reason": f"no per-sandbox cgroup: {why}",
            "memory": "RLIMIT_AS per process: a sandbox of N processes may use up to N times memory_mb",
            "pids": "RLIMIT_NPROC on the sandbox's own host uid (per sandbox when the node runs as root)",
            **common,
        }
    if tree.version == "v2":
        memory = "memory.max of the sandbox's cgroup (memory.swap.max 0): the whole sandbox"
        pids, cpu = "pids.max of the sandbox's cgroup: the whole sandbox", "cpu.weight per sandbox"
    else:
        memory = ("memory.limit_in_bytes of the sandbox's cgroup (and memory.memsw.limit_in_bytes, swap "
                  "included, where the host accounts swap): the whole sandbox")
        pids, cpu = "pids.max of the sandbox's cgroup: the whole sandbox", "cpu.shares per sandbox"
    return {
        "mode": f"cgroup-{tree.version}",
        "reason": why,
        "memory": memory + "; past it the kernel kills a process inside the sandbox (reported as oom_kills)",
        "pids": pids,
        "cpu": cpu if "cpu" in tree.controllers else "no cpu controller: no CPU share per sandbox",
        **common,
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


__all__ = ["DiskUsage", "Limits", "disk_usage", "enforcement",
           "limits_from_json", "measure", "resolve_limits"]
