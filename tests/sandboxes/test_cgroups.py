"""Per-sandbox cgroups: memory and processes bounded per sandbox as a whole, detached processes included.

These run against the host's real cgroups (v1 or v2, whichever the node can write) and skip
only when the host has no writable cgroup of either version.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgenode.config import Config
from edgenode.errors import ValidationFailed
from edgenode.sandboxes.cgroups import CgroupLimits, CgroupUnavailable, find_v2, open_tree
from tests.sandboxes.conftest import run
from tests.support import wait_for

MIB = 1024 * 1024


def _why_no_cgroup() -> str | None:
    """Why this host gives the test's process no writable cgroup with memory and pids (None: it does)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup: {exc}"
    own = {c: line.split(":", 2)[2] for line in lines for c in line.split(":", 2)[1].split(",")}
    if "memory" in own and "pids" in own:  # v1 hierarchies
        for controller in ("memory", "pids"):
            probe = Path("/sys/fs/cgroup", controller, own[controller].lstrip("/"), f"probe-{os.getpid()}")
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError as exc:
                return f"the cgroup v1 {controller} hierarchy is not writable here: {exc}"
        return None
    unified = next((line[3:] for line in lines if line.startswith("0::")), None)
    if unified is None:
        return "no cgroup v2 hierarchy and no cgroup v1 memory and pids hierarchies"
    base = Path("/sys/fs/cgroup", unified.lstrip("/"))
    try:
        controllers = set((base / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return f"cannot read the cgroup v2 controllers: {exc}"
    if not {"memory", "pids"} <= controllers or not os.access(base / "cgroup.subtree_control", os.W_OK):
        return f"the cgroup v2 subtree {unified} is not delegated with memory and pids"
    return None


WHY_NOT = _why_no_cgroup()
needs_cgroups = pytest.mark.skipif(WHY_NOT is not None, reason=f"no writable cgroup on this host: {WHY_NOT}")


@pytest.fixture(scope="module")
def status(admin: httpx.Client) -> dict[str, Any]:
    body = admin.get("/v1/status").json()["capabilities"]["sandboxes"]
    return dict(body)


def _make(admin: httpx.Client, **limits: int) -> str:
    created = admin.post("/v1/sandboxes", json={"limits": limits})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _cgroup_dirs(status: dict[str, Any], sandbox_id: str) -> dict[str, Path]:
    return {controller: Path(subtree) / sandbox_id for controller, subtree in status["cgroup"].items()}


@needs_cgroups
def test_the_status_says_sandboxes_are_bounded_by_cgroups(admin: httpx.Client, status: dict[str, Any]) -> None:
    enforcement = status["enforcement"]
    assert enforcement["mode"] in {"cgroup-v1", "cgroup-v2"}, enforcement
    assert status["limits"] == f"{enforcement['mode']}+disk-accounting"
    assert "whole sandbox" in enforcement["memory"] and "whole sandbox" in enforcement["pids"]
    assert status["cgroups"] == "auto"
    for subtree in status["cgroup"].values():
        assert Path(subtree).is_dir()
    box = _make(admin)
    try:
        assert admin.get(f"/v1/sandboxes/{box}").json()["limits_enforced_by"] == enforcement["mode"]
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


# Two children of one process each take 48 MiB (touched), then wait to be let go: together they
# are over the sandbox's 64 MiB, each alone is not (and nothing bounds memory per process).
TWO_HOGS = """
import contextlib
import os
import subprocess
hold_r, hold_w = os.pipe()
children = []
for _ in range(2):
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        data = b"x" * (48 << 20)
        os.write(ready_w, b"1")
        os.read(hold_r, 1)
        os._exit(0)
    os.close(ready_w)
    children.append((pid, ready_r))
for _, ready_r in children:
    os.read(ready_r, 1)  # b"1" once it holds its memory, b"" if it died first
os.close(hold_w)
for pid, _ in children:
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_cgroups
def test_memory_is_bounded_for_the_whole_sandbox(admin: httpx.Client) -> None:
    box = _make(admin, memory_mb=64)
    try:
        result = run(admin, box, ["python3", "-c", TWO_HOGS], timeout_s=60)
        assert result["exit_code"] == 0, result
        codes = sorted(int(line) for line in result["stdout"].split())
        # One of them was killed by the kernel at the sandbox's limit; the other finished.
        assert codes == [-9, 0], result
        assert result["memory_limit_hit"] is True and result["oom_kills"] >= 1, result
        body = admin.get(f"/v1/sandboxes/{box}").json()
        assert body["memory_limit_hit"] is True
        assert body["cgroup"]["memory_limit_bytes"] == 64 * MIB and body["cgroup"]["oom_kills"] >= 1
        # The kill was inside the sandbox: it and the node go on.
        assert run(admin, box, "echo alive")["stdout"] == "alive\n"
        assert admin.get("/healthz").status_code == 200
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


@needs_cgroups
def test_a_command_killed_at_the_memory_limit_says_so(admin: httpx.Client) -> None:
    box = _make(admin, memory_mb=64)
    try:
        result = run(admin, box, ["python3", "-c", "data = b'x' * (200 << 20)"], timeout_s=60)
        assert result["signal"] == 9 and result["stopped_by"] == "memory_limit", result
        assert result["memory_limit_hit"] is True
        # A background process killed at the limit says so too.
        started = admin.post(f"/v1/sandboxes/{box}/processes", json={"cmd": ["python3", "-c",
                                                                             "data = b'x' * (200 << 20)"]})
        assert started.status_code == 201, started.text
        url = f"/v1/sandboxes/{box}/processes/{started.json()['id']}"
        proc = wait_for(lambda: (p := admin.get(url).json())["state"] == "exited" and p, timeout=60,
                        message="the background hog to be killed")
        assert proc["signal"] == 9 and proc["stopped_by"] == "memory_limit", proc
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


FORKER = """
import os, time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            while not os.path.exists("/workspace/release"):
                time.sleep(0.2)
            os._exit(0)
        children.append(pid)
except OSError as e:
    pass
with open("/workspace/count.tmp", "w") as f:
    f.write(str(len(children)))
os.rename("/workspace/count.tmp", "/workspace/count")
for pid in children:
    os.waitpid(pid, 0)
"""


@needs_cgroups
def test_a_fork_bomb_is_bounded_by_the_sandboxes_pids_limit(admin: httpx.Client) -> None:
    other = _make(admin)
    bomb = _make(admin, pids=32)
    try:
        started = admin.post(f"/v1/sandboxes/{bomb}/processes", json={"cmd": ["python3", "-c", FORKER]})
        assert started.status_code in (200, 201), started.text
        count = wait_for(lambda: (r := admin.get(f"/v1/sandboxes/{bomb}/files/count")).status_code == 200
                         and int(r.text), timeout=60, message="the forker to stop forking")
        # Held at the limit (the supervisor, the forker and bwrap count too), not at 200.
        assert count < 32
        held = admin.get(f"/v1/sandboxes/{bomb}").json()["cgroup"]
        assert held["pids_limit"] == 32 and held["pids"] <= 32 and held["pids_refused"] >= 1, held
        # While the bomb's sandbox is full, the node and another sandbox work.
        assert admin.get("/healthz").json()["status"] == "ok"
        assert run(admin, other, "echo fine")["stdout"] == "fine\n"
    finally:
        admin.delete(f"/v1/sandboxes/{bomb}")
        admin.delete(f"/v1/sandboxes/{other}")
    assert admin.get("/healthz").json()["status"] == "ok"


def _pids_with(directory: Path, marker: bytes) -> list[int]:
    found = []
    for pid in (directory / "cgroup.procs").read_text().split():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@needs_cgroups
def test_a_detached_process_is_in_the_sandboxes_cgroup_until_it_is_deleted(admin: httpx.Client,
                                                                           status: dict[str, Any]) -> None:
    box = _make(admin)
    deleted = False
    try:
        result = run(admin, box, "setsid sleep 4242 </dev/null >/dev/null 2>&1 & echo started")
        assert result["stdout"] == "started\n"
        dirs = _cgroup_dirs(status, box)
        assert set(dirs) >= {"memory", "pids"}
        # In every hierarchy: a detached process is still the sandbox's.
        pids = {c: wait_for(lambda d=d: _pids_with(d, b"sleep\x004242"), timeout=30,
                            message=f"the detached sleep in the sandbox's {c} cgroup") for c, d in dirs.items()}
        pid = pids["pids"][0]
        assert all(found == [pid] for found in pids.values()), pids
        assert admin.delete(f"/v1/sandboxes/{box}").status_code == 204
        deleted = True
        for directory in dirs.values():
            assert not directory.exists(), directory
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or b"4242" not in _cmdline(pid), timeout=30,
                 message="the detached process to be killed")
    finally:
        if not deleted:
            admin.delete(f"/v1/sandboxes/{box}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@needs_cgroups
def test_a_released_sandbox_leaves_no_cgroup_and_a_new_start_makes_one(admin: httpx.Client,
                                                                        status: dict[str, Any]) -> None:
    box = _make(admin)
    try:
        run(admin, box, "true")
        dirs = _cgroup_dirs(status, box)
        assert all(d.is_dir() for d in dirs.values())
        assert admin.post(f"/v1/sandboxes/{box}/release").status_code == 204
        assert not any(d.exists() for d in dirs.values())
        assert run(admin, box, "echo again")["stdout"] == "again\n"
        assert all(d.is_dir() for d in dirs.values())
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def _missing_version() -> str:
    """A version the node cannot use here (v2 on a host with v1 controllers, v1 on a unified one)."""
    try:
        find_v2("nprobe", Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
    except CgroupUnavailable:
        return "v2"
    return "v1"


def test_the_cgroups_setting_is_checked_at_start() -> None:
    with pytest.raises(ValidationFailed, match="sandboxes.cgroups must be one of auto, v2, v1, off"):
        Config.load(env={"EDGENODE_SANDBOXES_CGROUPS": "v3"})
    with pytest.raises(ValidationFailed, match="sandboxes.cgroup_cpu_weight must be at most"):
        Config.load(env={"EDGENODE_SANDBOXES_CGROUP_CPU_WEIGHT": "20000"})
    assert Config.load(env={"EDGENODE_SANDBOXES_CGROUPS": "off"}).sandboxes.cgroups == "off"
    assert open_tree("off", "nprobe") == (None, "sandboxes.cgroups is off")


def test_the_v2_layout_enables_controllers_and_writes_the_bounds(tmp_path: Path) -> None:
    """cgroup v2 cannot be reached on a v1 host: its file layout is checked on a directory tree instead."""
    root = tmp_path / "cg"
    service = root / "system.slice" / "edgenode.service"
    service.mkdir(parents=True)
    (service / "cgroup.controllers").write_text("cpu memory pids\n")
    (service / "cgroup.subtree_control").write_text("")
    (service / "cgroup.procs").write_text("")
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    tree = find_v2("nkey", "0::/system.slice/edgenode.service\n", mountinfo)
    assert tree.controllers == {"cpu", "memory", "pids"}
    tree.open()
    assert (service / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (service / "edgenode" / "nkey" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    cgroup = tree.create("sb_1", CgroupLimits(64 * MIB, 32, 200))
    leaf = service / "edgenode" / "nkey" / "sb_1"
    assert (leaf / "memory.max").read_text() == str(64 * MIB)
    assert (leaf / "pids.max").read_text() == "32"
    assert (leaf / "cpu.weight").read_text() == "200"
    assert cgroup.paths == [leaf]
    # Started in the leaf already (DelegateSubgroup=node): the delegated cgroup is its parent.
    (service / "node").mkdir()
    assert find_v2("nkey", "0::/system.slice/edgenode.service/node\n", mountinfo).base == service
    with pytest.raises(CgroupUnavailable, match="not delegated the memory and pids"):
        (service / "cgroup.controllers").write_text("cpu\n")
        find_v2("nkey", "0::/system.slice/edgenode.service\n", mountinfo)
    with pytest.raises(CgroupUnavailable, match="mounted as cgroup v1"):
        find_v2("nkey", "4:memory:/x\n8:pids:/\n0::/\n", mountinfo)


def test_the_unit_delegates_its_cgroup_to_the_node() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "edgenode.service"
    settings = dict(line.split("=", 1) for line in unit.read_text().splitlines()
                    if "=" in line and not line.startswith(("#", "[")))
    assert settings["Delegate"] == "yes"
    # A read-only /sys/fs/cgroup would leave the node rlimits only.
    assert settings.get("ProtectControlGroups", "no") == "no"


def _plant_leftovers(subtrees: list[Path], keeper: int) -> list[Path]:
    """Beside the node's subtree: what a node killed long ago left (its subtree, an empty sandbox cgroup),
    and a live node's (an old sandbox cgroup holding a process, a fresh empty one). Returns what was made."""
    made: list[Path] = []
    for subtree in subtrees:
        top = subtree.parent
        for path in (top / "ndead", top / "ndead" / "sb_old", top / "nlive", top / "nlive" / "sb_busy",
                     top / "nlive" / "sb_new"):
            path.mkdir(parents=True)
            made.append(path)
        (top / "nlive" / "sb_busy" / "cgroup.procs").write_text(str(keeper))
        for path in (top / "ndead", top / "ndead" / "sb_old", top / "nlive", top / "nlive" / "sb_busy"):
            os.utime(path, (0, 0))
    return made


@needs_cgroups
def test_cgroups_across_node_restarts(make_node: Any) -> None:
    """A killed node's sandbox cgroups stay; a version asked for and missing is said clearly; a node
    started again removes its own leftovers and the empty ones of dead nodes beside it; a stopped node
    leaves no cgroup."""
    node = make_node("restarted")
    with node.client(timeout=60) as c:
        status = c.get("/v1/status").json()["capabilities"]["sandboxes"]
        box = c.post("/v1/sandboxes", json={"limits": {"pids": 40}}).json()["id"]
        run(c, box, "true")
    left = _cgroup_dirs(status, box)
    subtrees = [Path(p) for p in status["cgroup"].values()]
    node.kill()  # no chance to clean up: its sandboxes die with it (bwrap --die-with-parent), their cgroups stay
    assert all(d.is_dir() for d in left.values())
    keeper = subprocess.Popen(["sleep", "300"])
    made: list[Path] = []
    try:
        made = _plant_leftovers(subtrees, keeper.pid)
        missing = _missing_version()
        node.env["EDGENODE_SANDBOXES_CGROUPS"] = missing
        node.start()
        with node.client(timeout=60) as c:
            refused = c.get("/v1/status").json()["capabilities"]["sandboxes"]
            assert refused["available"] is False
            assert refused["reason"].startswith(f"sandboxes.cgroups = {missing}, but cgroup "), refused["reason"]
            created = c.post("/v1/sandboxes", json={})
            assert created.status_code == 503, created.text
            assert "sandboxes.cgroups" in created.json()["error"]["message"]
        node.kill()
        del node.env["EDGENODE_SANDBOXES_CGROUPS"]
        node.start()
        with node.client(timeout=60) as c:
            assert c.get("/v1/status").json()["capabilities"]["sandboxes"]["cgroup"] == status["cgroup"]
        assert not any(d.exists() for d in left.values())
        for subtree in subtrees:
            assert not (subtree.parent / "ndead").exists()
            assert (subtree.parent / "nlive" / "sb_busy").is_dir() and (subtree.parent / "nlive" / "sb_new").is_dir()
        node.stop()
        for subtree in subtrees:
            assert not subtree.exists(), subtree
    finally:
        keeper.kill()
        keeper.wait()
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
