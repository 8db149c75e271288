"""Resource limits: a fork bomb, a memory hog and a disk filler are each stopped; the node and others go on.

The module's node bounds sandboxes with rlimits only (``sandboxes.cgroups = off``), as a host that
offers no writable cgroup does; per-sandbox cgroups are tested in test_cgroups.py.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from edgenode.node import Node
from tests.sandboxes.conftest import run
from tests.support import NodeProcess, wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node bounding sandboxes with rlimits only."""
    proc = NodeProcess(tmp_path_factory.mktemp("node"), env={"EDGENODE_SANDBOXES_CGROUPS": "off"})
    proc.start()
    yield proc
    proc.stop()


def test_the_status_says_only_rlimits_apply(admin: httpx.Client) -> None:
    status = admin.get("/v1/status").json()["capabilities"]["sandboxes"]
    assert status["limits"] == "rlimits+disk-accounting" and status["cgroup"] is None
    enforcement = status["enforcement"]
    assert enforcement["mode"] == "rlimits"
    assert enforcement["reason"] == "no per-sandbox cgroup: sandboxes.cgroups is off"
    assert "per process" in enforcement["memory"] and "RLIMIT_NPROC" in enforcement["pids"]
    box = _make(admin)
    try:
        assert admin.get(f"/v1/sandboxes/{box}").json()["limits_enforced_by"] == "rlimits"
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def _make(admin: httpx.Client, **limits: int) -> str:
    created = admin.post("/v1/sandboxes", json={"limits": limits})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_fork_bomb_is_contained(admin: httpx.Client, shared_sandbox: str, node: NodeProcess) -> None:
    bomb = _make(admin, pids=32, timeout_s=5)
    try:
        # The bomb outlives its shell's sleep, so the exec's timeout kills its whole process group.
        result = run(admin, bomb, "bomb() { bomb | bomb & }; bomb; sleep 30; echo survived", timeout_s=4)
        assert result["exit_code"] is not None and "survived" not in result["stdout"]
        # The limit held, and once the bomb is gone the sandbox runs commands again.
        counted = wait_for(
            lambda: run(admin, bomb, ["python3", "-c",
                                      "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC))"]
                        )["stdout"],
            timeout=30, message="the sandbox to run a command after the bomb")
        assert counted == "(32, 32)\n"
        assert admin.get("/healthz").status_code == 200
        # Other sandboxes are unaffected while (and after) the bomb runs.
        assert run(admin, shared_sandbox, "echo fine")["stdout"] == "fine\n"
    finally:
        admin.delete(f"/v1/sandboxes/{bomb}")
    assert admin.get("/healthz").json()["status"] == "ok"


def test_fork_bomb_cannot_exceed_the_pids_limit(admin: httpx.Client) -> None:
    box = _make(admin, pids=16)
    try:
        result = run(admin, box, ["python3", "-c", """
import os, time
children = []
try:
    for _ in range(100):
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        children.append(pid)
except OSError as e:
    print("stopped at", len(children), e.strerror)
for pid in children:
    os.kill(pid, 9)
"""])
        assert result["stdout"].startswith("stopped at")
        assert int(result["stdout"].split()[2]) < 16
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_memory_hog_is_stopped(admin: httpx.Client, shared_sandbox: str) -> None:
    box = _make(admin, memory_mb=256)
    try:
        result = run(admin, box, ["python3", "-c", "x = bytearray(1024 * 1024 * 1024); print('allocated')"])
        assert result["exit_code"] != 0 and "allocated" not in result["stdout"]
        assert "MemoryError" in result["stderr"]
        assert run(admin, box, ["python3", "-c", "x = bytearray(64 * 1024 * 1024); print('small ok')"])["stdout"] \
            == "small ok\n"
        assert admin.get("/healthz").status_code == 200
        assert run(admin, shared_sandbox, "echo fine")["stdout"] == "fine\n"
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_disk_filler_one_big_file_is_stopped(admin: httpx.Client) -> None:
    box = _make(admin, disk_mb=8)
    try:
        result = run(admin, box, "dd if=/dev/zero of=big bs=1M count=64 2>&1; echo rc=$?")
        assert "rc=0" not in result["stdout"] or result["exit_code"] != 0
        size = int(run(admin, box, "stat -c %s big")["stdout"])
        assert size <= 8 * 1024 * 1024
        assert admin.get("/healthz").status_code == 200
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_disk_filler_many_files_is_stopped(admin: httpx.Client) -> None:
    box = _make(admin, disk_mb=4)
    try:
        # Files each under the per-file cap; only the node's disk accounting can stop this.
        result = run(admin, box, "i=0; while true; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); done",
                     timeout_s=60)
        assert result["stopped_by"] == "disk_quota" and result["timed_out"] is False
        assert result["signal"] == 9
        info = admin.get(f"/v1/sandboxes/{box}").json()
        # Stopped within about one accounting interval of the quota, far from filling the disk.
        assert info["disk_used_bytes"] < 256 * 1024 * 1024
        assert run(admin, box, "rm -f f*; echo cleaned")["stdout"] == "cleaned\n"
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_tmp_counts_towards_the_quota(admin: httpx.Client) -> None:
    box = _make(admin, disk_mb=4)
    try:
        result = run(admin, box, "i=0; while true; do head -c 1048576 /dev/zero > /tmp/f$i; i=$((i+1)); done",
                     timeout_s=60)
        assert result["stopped_by"] == "disk_quota"
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_open_files_and_cpu_limits(admin: httpx.Client) -> None:
    box = _make(admin, open_files=64, cpu_s=1)
    try:
        files = run(admin, box, ["python3", "-c", """
fs = []
try:
    for i in range(1000):
        fs.append(open('/dev/null'))
except OSError as e:
    print(len(fs), e.strerror)
"""])
        opened = int(files["stdout"].split()[0])
        assert opened < 64 and "Too many open files" in files["stdout"]
        spin = run(admin, box, ["python3", "-c", "while True: pass"], timeout_s=30)
        assert spin["timed_out"] is False and spin["signal"] in (9, 24)  # SIGXCPU, then SIGKILL at the hard limit
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_a_quota_stop_measures_from_after_the_kill(local: tuple[Node, TestClient]) -> None:
    # What a stopped command writes between the walk that found the sandbox over its quota and its
    # death must count in the baseline, or the next command (the ``rm`` that cleans up) is stopped too.
    node, client = local
    box = client.post("/v1/sandboxes", json={"limits": {"disk_mb": 1024}}).json()["id"]
    writer = client.post(f"/v1/sandboxes/{box}/processes",
                         json={"cmd": "while true; do head -c 65536 /dev/zero >> f; sleep 0.01; done"})
    assert writer.status_code == 201, writer.text
    runtime = node.sandboxes.runtimes[box]
    measured = runtime.measure_disk()
    # The writer goes on after the walk: the interleaving a busy node sees by chance.
    wait_for(lambda: runtime.disk_used() > measured.bytes + 256 * 1024, message="writes after the walk")
    baseline = client.portal.call(runtime.stop_for_disk, measured)
    proc = client.get(f"/v1/sandboxes/{box}/processes/{writer.json()['id']}").json()
    assert proc["state"] == "exited" and proc["stopped_by"] == "disk_quota"
    assert baseline.bytes >= runtime.disk_used() > measured.bytes


def test_a_supervisor_that_dies_is_logged_with_what_it_said(local: tuple[Node, TestClient],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    node, client = local
    box = client.post("/v1/sandboxes", json={}).json()["id"]
    assert client.post(f"/v1/sandboxes/{box}/exec", json={"cmd": "echo up"}).json()["stdout"] == "up\n"
    runtime = node.sandboxes.runtimes[box]
    assert runtime.guest.proc is not None
    with caplog.at_level(logging.WARNING, logger="edgenode.sandboxes.guest"):
        os.kill(runtime.guest.proc.pid, signal.SIGKILL)
        wait_for(lambda: any(r.getMessage() == "sandbox supervisor exited unexpectedly" for r in caplog.records),
                 message="the supervisor's exit to be logged")
    # The next exec starts the sandbox's processes again.
    assert client.post(f"/v1/sandboxes/{box}/exec", json={"cmd": "echo again"}).json()["stdout"] == "again\n"
    # A release on purpose is not reported as a failure.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgenode.sandboxes.guest"):
        assert client.post(f"/v1/sandboxes/{box}/release").status_code == 204
    assert not [r for r in caplog.records if "unexpectedly" in r.getMessage()]


_FILLER = ("i=0; while [ $i -lt 200 ]; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); sleep 0.02; done; "
           "exec sleep 1000")


def _filler_alive(admin: httpx.Client, box: str) -> bool:
    # The bracket keeps the pattern from matching this check's own command line.
    return run(admin, box, "pgrep -f 'sh fil[l].sh' >/dev/null && echo alive || echo gone")["stdout"] == "alive\n"


def test_a_detached_disk_filler_is_stopped(admin: httpx.Client) -> None:
    box = _make(admin, disk_mb=16)
    try:
        # The exec returns at once; the filler lives on, detached from every tracked command.
        assert admin.put(f"/v1/sandboxes/{box}/files/fill.sh", content=_FILLER.encode()).status_code in (200, 201)
        started = run(admin, box, "setsid sh fill.sh >/dev/null 2>&1 </dev/null & echo started")
        assert started["stdout"] == "started\n"
        # Watched without running any command (a command would be measured anyway).
        wait_for(lambda: admin.get(f"/v1/sandboxes/{box}").json()["disk_quota_exceeded"], timeout=60,
                 message="the sandbox is over its quota")
        wait_for(lambda: not _filler_alive(admin, box), timeout=60, message="the detached filler is stopped")
        info = admin.get(f"/v1/sandboxes/{box}").json()
        assert info["disk_used_bytes"] < 100 * 1024 * 1024  # it would have written 200 MiB
        assert run(admin, box, "rm -f f*; echo cleaned")["stdout"] == "cleaned\n"
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_background_logs_count_towards_the_quota(admin: httpx.Client) -> None:
    box = _make(admin, disk_mb=8)
    try:
        procs = []
        for _ in range(4):  # 4 logs of up to 4 MiB each (the node's log cap) exceed 8 MiB together
            r = admin.post(f"/v1/sandboxes/{box}/processes", json={"cmd": "head -c 4194304 /dev/zero; sleep 1000"})
            assert r.status_code == 201, r.text
            procs.append(r.json()["id"])

        def all_stopped() -> bool:
            listed = admin.get(f"/v1/sandboxes/{box}/processes").json()["processes"]
            return all(p["state"] == "exited" for p in listed)

        wait_for(all_stopped, timeout=60, message="the processes are stopped")
        listed = admin.get(f"/v1/sandboxes/{box}/processes").json()["processes"]
        assert {p["stopped_by"] for p in listed} == {"disk_quota"}, listed
        assert admin.get(f"/v1/sandboxes/{box}").json()["disk_used_bytes"] > 8 * 1024 * 1024
    finally:
        admin.delete(f"/v1/sandboxes/{box}")


def test_empty_files_count_towards_the_quota(make_node: Any) -> None:
    node = make_node(env={"EDGENODE_SANDBOXES_MAX_FILES": "2000"})
    with node.client(timeout=120) as c:
        box = _make(c, disk_mb=1024)
        # Empty files hold no block, only inodes: bytes alone would never stop this.
        result = run(c, box, "i=0; while true; do : > e$i; i=$((i+1)); done", timeout_s=60)
        assert result["stopped_by"] == "disk_quota" and result["timed_out"] is False, result
        assert int(run(c, box, "ls | wc -l")["stdout"]) < 50_000
