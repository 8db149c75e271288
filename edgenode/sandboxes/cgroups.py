"""Per-sandbox cgroups: each sandbox's processes in a cgroup of their own, bounded as a whole.

Every process of a sandbox (bwrap, the supervisor, each command, processes detached with
``setsid ... &``) lives in one cgroup under the node's own::

    <node cgroup>/edgenode/<node key>/<sandbox id>

with the sandbox's memory (swap included), process count and an equal CPU weight. The
node key is derived from the node's data directory, so several nodes on a host (each in the
same parent cgroup) keep their sandboxes apart, and a node finds the leftovers of its own
earlier run at start.

Two layouts behind one interface (:class:`CgroupTree` and :class:`SandboxCgroup`):

- cgroup v2, a subtree delegated to the node (systemd: ``Delegate=yes``): ``memory.max``,
  ``memory.swap.max``, ``pids.max``, ``cpu.weight``; controllers are enabled in each level's
  ``cgroup.subtree_control``. A cgroup with processes cannot enable controllers for its
  children, so when the kernel refuses them the node moves itself (and its own children)
  into the leaf ``<node cgroup>/node`` first, as delegation expects;
- cgroup v1, where the controllers are mounted one hierarchy each and the node can write
  them: ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` when swap accounting is on,
  ``pids.max``, ``cpu.shares``, the same path in each hierarchy.

A sandbox's first process is placed before it runs anything: see ``Guest.start``, whose
bwrap is started behind a gate (a shell blocked on a read) that opens only once the node
has written its pid into the cgroup; bwrap and everything below inherit it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The controllers a sandbox's bounds need, and the one that is welcome when present.
REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu",)
#: The directory under the node's cgroup that holds every node's sandboxes.
TOP = "edgenode"
#: The leaf of a delegated v2 cgroup that the node itself lives in.
LEAF = "node"
#: How long a sandbox cgroup of another node must have been empty before a starting node removes it, in s.
STALE_S = 60.0
#: How long removing a sandbox's cgroup waits for its last processes to go, in seconds.
REMOVE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CgroupLimits:
    """What one sandbox's cgroup is bounded to."""

    memory_bytes: int
    pids: int
    #: cgroup v2 ``cpu.weight`` scale (1-10000, 100 the kernel's default); v1 ``cpu.shares`` is 10.24 times it.
    cpu_weight: int = 100


class CgroupUnavailable(Exception):
    """The requested cgroup layout cannot be used here; the message says why."""


def node_key(data_dir: Path) -> str:
    """A short, stable name for one node's subtree, from its data directory."""
    return "n" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _pids_in(directory: Path) -> set[int]:
    try:
        return {int(p) for p in _read(directory / "cgroup.procs").split()}
    except (OSError, ValueError):
        return set()


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``memory.events``, ``memory.oom_control``)."""
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _int_file(path: Path) -> int | None:
    try:
        text = _read(path).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _rmdir_when_empty(directory: Path, deadline: float) -> None:
    """Kill what is left in ``directory`` and remove it, waiting for the dying to leave."""
    while True:
        for pid in _pids_in(directory):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


class SandboxCgroup:
    """One sandbox's cgroup: a directory per hierarchy (one on v2; memory, pids and maybe cpu on v1)."""

    def __init__(self, version: str, name: str, dirs: dict[str, Path]) -> None:
        self.version = version
        self.name = name
        #: controller -> directory; on v2 every controller maps to the same one.
        self.dirs = dirs

    @property
    def paths(self) -> list[Path]:
        """Each distinct directory, once."""
        return list(dict.fromkeys(self.dirs.values()))

    def place(self, pid: int) -> None:
        """Move process ``pid`` (before it starts anything) into this cgroup, in every hierarchy."""
        for directory in self.paths:
            _write(directory / "cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        """Processes of the sandbox the kernel killed at its memory limit, since the cgroup was made."""
        memory = self.dirs["memory"]
        if self.version == "v2":
            return _counter(memory / "memory.events", "oom_kill")
        return _counter(memory / "memory.oom_control", "oom_kill")

    def usage(self) -> dict[str, int | None]:
        """Memory and process counts now, their limits, and how often they were hit."""
        memory, pids = self.dirs["memory"], self.dirs["pids"]
        if self.version == "v2":
            limit = _int_file(memory / "memory.max")
            current, peak = _int_file(memory / "memory.current"), _int_file(memory / "memory.peak")
        else:
            limit = _int_file(memory / "memory.limit_in_bytes")
            current, peak = _int_file(memory / "memory.usage_in_bytes"), _int_file(memory / "memory.max_usage_in_bytes")
        return {
            "memory_bytes": current,
            "memory_peak_bytes": peak,
            "memory_limit_bytes": limit,
            "oom_kills": self.oom_kills(),
            "pids": _int_file(pids / "pids.current"),
            "pids_limit": _int_file(pids / "pids.max"),
            # Forks refused at the limit.
            "pids_refused": _counter(pids / "pids.events", "max"),
        }

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (``cgroup.kill`` on v2 when the kernel has it)."""
        if self.version == "v2" and (self.dirs["pids"] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs["pids"] / "cgroup.kill", "1")
        for directory in self.paths:
            for pid in _pids_in(directory):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Kill what still runs in the cgroup and remove it (blocking: call it off the event loop)."""
        self.kill()
        deadline = time.monotonic() + REMOVE_TIMEOUT_S
        for directory in self.paths:
            try:
                _rmdir_when_empty(directory, deadline)
            except OSError as exc:
                log.warning("cannot remove a sandbox's cgroup", extra={"path": str(directory), "error": str(exc)})


class CgroupTree:
    """The node's subtree of sandbox cgroups, in one layout."""

    version = ""

    def __init__(self, bases: dict[str, Path], key: str) -> None:
        #: controller -> the node's own cgroup directory in that controller's hierarchy.
        self.bases = bases
        self.key = key
        self.controllers = set(bases)

    def _subtree(self, base: Path) -> Path:
        return base / TOP / self.key

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroup:
        """The cgroup of sandbox ``name`` with ``limits`` (made, or reused and bounded anew)."""
        raise NotImplementedError

    def open(self) -> None:
        """Make the node's subtree (proving it writable) and remove what an earlier run left in it."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove the node's subtree (every sandbox's cgroup is gone by then), and the shared top if empty."""
        for base in dict.fromkeys(self.bases.values()):
            subtree = self._subtree(base)
            deadline = time.monotonic() + REMOVE_TIMEOUT_S
            if subtree.is_dir():
                for child in subtree.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            _rmdir_when_empty(child, deadline)
            for directory in (subtree, subtree.parent):
                with contextlib.suppress(OSError):  # another node may still use the top
                    directory.rmdir()

    def _clear_leftovers(self) -> None:
        self._sweep_others()
        for base in dict.fromkeys(self.bases.values()):
            subtree = self._subtree(base)
            deadline = time.monotonic() + REMOVE_TIMEOUT_S
            for child in subtree.iterdir():
                if child.is_dir():
                    log.info("removing a sandbox cgroup left by an earlier run", extra={"path": str(child)})
                    with contextlib.suppress(OSError):
                        _rmdir_when_empty(child, deadline)

    def _sweep_others(self) -> None:
        """Remove what other nodes, killed and never started again, left beside this one: their sandbox
        cgroups that hold no process and were made over :data:`STALE_S` ago (a live node's hold its
        sandbox's processes from a moment after they are made), and their subtrees once empty (a live
        node whose subtree goes makes it again at its next sandbox start)."""
        now = time.time()
        for base in dict.fromkeys(self.bases.values()):
            top = base / TOP
            with contextlib.suppress(OSError):
                for subtree in list(top.iterdir()):
                    if subtree.name == self.key or not subtree.is_dir():
                        continue
                    stale = now - subtree.stat().st_mtime > STALE_S  # before a removal below touches it
                    for child in list(subtree.iterdir()):
                        with contextlib.suppress(OSError):
                            if child.is_dir() and not _pids_in(child) and now - child.stat().st_mtime > STALE_S:
                                child.rmdir()
                    if stale:
                        with contextlib.suppress(OSError):
                            subtree.rmdir()

    def describe(self) -> dict[str, str]:
        """Where the node's subtree is, per controller (for the admin's status)."""
        return {c: str(self._subtree(b)) for c, b in sorted(self.bases.items())}


def _mkdir_retrying(path: Path) -> None:
    """``mkdir -p``, again if another node removed an empty parent between our steps."""
    for _ in range(5):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


class V1Tree(CgroupTree):
    """cgroup v1: the memory, pids (and cpu) hierarchies, each at the node's own cgroup in it."""

    version = "v1"

    def open(self) -> None:
        for base in self.bases.values():
            _mkdir_retrying(self._subtree(base))
        self._clear_leftovers()

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroup:
        dirs: dict[str, Path] = {}
        for controller, base in self.bases.items():
            directory = self._subtree(base) / name
            _mkdir_retrying(directory)
            dirs[controller] = directory
        memory = dirs["memory"]
        # memsw (memory plus swap) may not be below memory: lower it first when both shrink.
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            with contextlib.suppress(OSError):
                _write(memsw, str(max(limits.memory_bytes, _int_file(memsw) or 0)))
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if memsw.exists():
            _write(memsw, str(limits.memory_bytes))
        _write(dirs["pids"] / "pids.max", str(limits.pids))
        if "cpu" in dirs:
            with contextlib.suppress(OSError):
                _write(dirs["cpu"] / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
        return SandboxCgroup("v1", name, dirs)


class V2Tree(CgroupTree):
    """cgroup v2: one directory per sandbox in the node's delegated subtree."""

    version = "v2"

    def __init__(self, base: Path, controllers: set[str], key: str) -> None:
        super().__init__({c: base for c in controllers}, key)
        self.base = base

    def _enable(self, directory: Path) -> None:
        """Enable the controllers for ``directory``'s children (without cpu if the kernel refuses it)."""
        try:
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(self.controllers)))
        except OSError as exc:
            if exc.errno == errno.EBUSY or "cpu" not in self.controllers:
                raise
            self.controllers.discard("cpu")  # e.g. real-time processes below: memory and pids still hold
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(self.controllers)))

    def open(self) -> None:
        base = self.base
        if not self.controllers <= set(_read(base / "cgroup.subtree_control").split()):
            try:
                self._enable(base)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                # No internal processes: a cgroup with processes cannot enable controllers for its
                # children, so the node (and its own children) move into a leaf of their own first.
                leaf = base / LEAF
                leaf.mkdir(exist_ok=True)
                for pid in sorted(_pids_in(base)):
                    if _ours(pid):
                        with contextlib.suppress(ProcessLookupError):
                            _write(leaf / "cgroup.procs", str(pid))
                try:
                    self._enable(base)
                except OSError as again:
                    if again.errno != errno.EBUSY:
                        raise
                    raise CgroupUnavailable(
                        f"the node's cgroup {base} holds {len(_pids_in(base))} process(es) other than the node and "
                        "its children; run the node in a cgroup of its own (under systemd: Delegate=yes in the "
                        "node's unit)") from None
        subtree = self._subtree(base)
        for directory in (subtree.parent, subtree):
            _mkdir_retrying(directory)
            self._enable(directory)
        self._clear_leftovers()

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroup:
        subtree = self._subtree(self.base)
        if not subtree.is_dir():  # removed meanwhile: made again, with the controllers enabled
            for level in (subtree.parent, subtree):
                _mkdir_retrying(level)
                self._enable(level)
        directory = subtree / name
        _mkdir_retrying(directory)
        _write(directory / "memory.max", str(limits.memory_bytes))
        if (directory / "memory.swap.max").exists():
            _write(directory / "memory.swap.max", "0")
        _write(directory / "pids.max", str(limits.pids))
        if "cpu" in self.controllers:
            with contextlib.suppress(OSError):
                _write(directory / "cpu.weight", str(limits.cpu_weight))
        return SandboxCgroup("v2", name, {c: directory for c in (*REQUIRED, *OPTIONAL)})


# -- finding the node's own cgroups ---------------------------------------------


@dataclass(frozen=True)
class _Mount:
    root: str
    point: Path
    fstype: str
    controllers: frozenset[str]


def _mounts(mountinfo: str) -> list[_Mount]:
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        found.append(_Mount(fields[3], Path(point), tail[0], frozenset(tail[2].split(","))))
    return found


def _locate(mount: _Mount, cgroup_path: str) -> Path | None:
    """The directory of ``cgroup_path`` (as /proc/self/cgroup has it) under ``mount``."""
    root = mount.root.rstrip("/") or "/"
    if root != "/" and not (cgroup_path == root or cgroup_path.startswith(root + "/")):
        return None
    relative = cgroup_path[len(root):] if root != "/" else cgroup_path
    return mount.point / relative.lstrip("/")


def _own_cgroups(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """The node's v2 path and its v1 path per controller, from ``/proc/self/cgroup``."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
        else:
            for controller in parts[1].split(","):
                v1[controller] = parts[2]
    return unified, v1


def find_v2(key: str, proc_cgroup: str, mountinfo: str) -> V2Tree:
    """The node's delegated v2 subtree, or :class:`CgroupUnavailable` saying why not."""
    unified, v1 = _own_cgroups(proc_cgroup)
    taken = sorted(set(REQUIRED) & set(v1))
    if taken:
        raise CgroupUnavailable(f"the {' and '.join(taken)} controller(s) are mounted as cgroup v1 on this host, "
                                "so cgroup v2 cannot use them (boot with systemd.unified_cgroup_hierarchy=1)")
    if unified is None:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    mount = next((m for m in _mounts(mountinfo) if m.fstype == "cgroup2"), None)
    base = _locate(mount, unified) if mount is not None else None
    if base is None:
        raise CgroupUnavailable("the node's cgroup v2 directory is not visible under a cgroup2 mount")
    if base.name == LEAF and _delegated(base.parent):
        # Started in the leaf already (systemd's DelegateSubgroup=node, or a node started anew in the
        # cgroup an earlier one moved into): the delegated cgroup is the parent.
        base = base.parent
        unified = unified.rsplit("/", 1)[0] or "/"
    try:
        available = set(_read(base / "cgroup.controllers").split())
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {base}/cgroup.controllers ({exc.strerror})") from None
    missing = [c for c in REQUIRED if c not in available]
    if missing:
        raise CgroupUnavailable(f"the node's cgroup {unified} is not delegated the {' and '.join(missing)} "
                                "controller(s) (under systemd: Delegate=yes in the node's unit)")
    if not os.access(base, os.W_OK) or not os.access(base / "cgroup.subtree_control", os.W_OK):
        raise CgroupUnavailable(f"the node's cgroup {unified} is not writable by it "
                                "(under systemd: Delegate=yes in the node's unit)")
    controllers = {c for c in (*REQUIRED, *OPTIONAL) if c in available}
    return V2Tree(base, controllers, key)


def _delegated(directory: Path) -> bool:
    """Whether ``directory`` lists memory and pids among its controllers and the node may write it."""
    try:
        available = set(_read(directory / "cgroup.controllers").split())
    except OSError:
        return False
    return set(REQUIRED) <= available and os.access(directory / "cgroup.subtree_control", os.W_OK)


def _ours(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its descendants."""
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        try:
            stat = _read(Path(f"/proc/{pid}/stat"))
        except OSError:
            return False
        pid = int(stat[stat.rfind(")") + 2:].split()[1])
        if pid <= 1:
            return False
    return False


def find_v1(key: str, proc_cgroup: str, mountinfo: str) -> V1Tree:
    """The node's cgroup in each v1 hierarchy it needs, or :class:`CgroupUnavailable` saying why not."""
    _, v1 = _own_cgroups(proc_cgroup)
    mounts = [m for m in _mounts(mountinfo) if m.fstype == "cgroup"]
    bases: dict[str, Path] = {}
    for controller in (*REQUIRED, *OPTIONAL):
        mount = next((m for m in mounts if controller in m.controllers), None)
        path = v1.get(controller)
        if mount is None or path is None:
            if controller in REQUIRED:
                raise CgroupUnavailable(f"no cgroup v1 {controller} hierarchy is mounted")
            continue
        base = _locate(mount, path)
        if base is None or not base.is_dir():
            if controller in REQUIRED:
                raise CgroupUnavailable(f"the node's v1 {controller} cgroup {path} is not visible under "
                                        f"{mount.point}")
            continue
        if not os.access(base, os.W_OK):
            if controller in REQUIRED:
                raise CgroupUnavailable(f"the node's v1 {controller} cgroup {base} is not writable by it "
                                        "(a v1 host delegates nothing: the node needs root or a cgroup chowned to it)")
            continue
        bases[controller] = base
    return V1Tree(bases, key)


def open_tree(mode: str, key: str, *, proc_cgroup: str | None = None,
              mountinfo: str | None = None) -> tuple[CgroupTree | None, str]:
    """The subtree to bound sandboxes with for ``mode`` (``auto``, ``v2``, ``v1`` or ``off``: the setting
    ``sandboxes.cgroups``, checked when the config loads), opened, and a sentence on
    why this one (or why none: then the tree is None). ``v2`` or ``v1`` asked for and not usable raises
    :class:`CgroupUnavailable`."""
    if mode == "off":
        return None, "sandboxes.cgroups is off"
    try:
        proc_cgroup = proc_cgroup if proc_cgroup is not None else _read(Path("/proc/self/cgroup"))
        mountinfo = mountinfo if mountinfo is not None else _read(Path("/proc/self/mountinfo"))
    except OSError as exc:
        if mode == "auto":
            return None, f"cannot read this process's cgroups ({exc.strerror})"
        raise CgroupUnavailable(f"cannot read this process's cgroups ({exc.strerror})") from None
    reasons: list[str] = []
    for version, finder in (("v2", find_v2), ("v1", find_v1)):
        if mode not in ("auto", version):
            continue
        try:
            tree: CgroupTree = finder(key, proc_cgroup, mountinfo)
            tree.open()
        except CgroupUnavailable as exc:
            reasons.append(f"cgroup {version}: {exc}")
            continue
        except OSError as exc:
            reasons.append(f"cgroup {version}: cannot set up the node's subtree ({exc.strerror or exc})")
            continue
        chosen = f"cgroup {version} is writable" + (f" ({'; '.join(reasons)})" if reasons else "")
        return tree, chosen
    if mode != "auto":
        raise CgroupUnavailable(f"sandboxes.cgroups = {mode}, but {'; '.join(reasons)}")
    return None, "; ".join(reasons)


__all__ = ["CgroupLimits", "CgroupTree", "CgroupUnavailable", "SandboxCgroup", "V1Tree", "V2Tree",
           "find_v1", "find_v2", "node_key", "open_tree"]
