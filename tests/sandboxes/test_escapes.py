"""Escape attempts from inside a sandbox, each of which must fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.sandboxes.conftest import run
from tests.support import NodeProcess

#: Calls a syscall by number with ctypes and prints "ok" or the errno name.
SYSCALL = """
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
args = [ctypes.c_long(int(a, 0)) for a in sys.argv[1:]]
r = libc.syscall(*args)
print("ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
"""

X86 = {"ioctl": 16, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
       "ptrace": 101, "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298, "clone": 56,
       "clone3": 435, "bpf": 321}
AARCH64 = {"ioctl": 29, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
           "ptrace": 117, "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241, "clone": 220,
           "clone3": 435, "bpf": 280}
NR = AARCH64 if os.uname().machine in ("aarch64", "arm64") else X86


def syscall(admin: httpx.Client, sandbox: str, name: str, *args: int) -> str:
    result = run(admin, sandbox, ["python3", "-c", SYSCALL, str(NR[name]), *(hex(a) for a in args)])
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


def test_cannot_read_shadow(admin: httpx.Client, shared_sandbox: str) -> None:
    result = run(admin, shared_sandbox, "cat /etc/shadow")
    assert result["exit_code"] != 0 and "root:" not in result["stdout"]


def test_cannot_see_the_node_data_dir(admin: httpx.Client, shared_sandbox: str, node: NodeProcess) -> None:
    for path in (node.data_dir / "admin-token", node.data_dir / "node.db", node.data_dir):
        result = run(admin, shared_sandbox, ["ls", "-la", str(path)])
        assert result["exit_code"] != 0, result
    assert node.admin_token not in run(admin, shared_sandbox, "cat /proc/1/environ; env")["stdout"]


def test_cannot_write_outside_the_workspace(admin: httpx.Client, shared_sandbox: str) -> None:
    for target in ("/usr/pwned", "/etc/pwned", "/pwned", "/dev/pwned", "/bin/pwned"):
        result = run(admin, shared_sandbox, f"echo x > {target}")
        assert result["exit_code"] != 0, target
        assert not os.path.exists(target)
    assert run(admin, shared_sandbox, "echo ok > /tmp/t && cat /tmp/t")["stdout"] == "ok\n"


def test_cannot_see_or_signal_host_processes(admin: httpx.Client, shared_sandbox: str) -> None:
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        listing = run(admin, shared_sandbox, "ps -eo pid,args")["stdout"]
        assert "time.sleep(60)" not in listing and "edgenode serve" not in listing and "pytest" not in listing
        killed = run(admin, shared_sandbox, f"kill -9 {host.pid}")
        assert killed["exit_code"] != 0
        time.sleep(0.2)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_cannot_see_other_sandboxes_processes(admin: httpx.Client, shared_sandbox: str, sandbox: str) -> None:
    started = admin.post(f"/v1/sandboxes/{sandbox}/processes", json={"cmd": "exec sleep 61"})
    assert started.status_code == 201
    listing = run(admin, shared_sandbox, "ps -eo args")["stdout"]
    assert "sleep 61" not in listing
    assert "sleep 61" in run(admin, sandbox, "ps -eo args")["stdout"]


def test_no_network_without_a_policy(admin: httpx.Client, shared_sandbox: str, node: NodeProcess) -> None:
    port = node.url.rsplit(":", 1)[1]
    result = run(admin, shared_sandbox, ["python3", "-c", f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""])
    assert result["stdout"].startswith("refused")
    links = run(admin, shared_sandbox, "cat /proc/net/dev")["stdout"]
    assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]
    assert run(admin, shared_sandbox, "echo $http_proxy")["stdout"] == "\n"


@pytest.mark.parametrize("request_code", [0x5412, 0x5412 | (1 << 32), 0x541C])
def test_tiocsti_and_tioclinux_are_blocked(admin: httpx.Client, shared_sandbox: str, request_code: int) -> None:
    # Without the filter this fails with ENOTTY (stdin is not a terminal); the filter answers EPERM first,
    # including for the high-bit variant that a 64-bit compare would miss.
    assert syscall(admin, shared_sandbox, "ioctl", 0, request_code, 0) == "EPERM"
    assert syscall(admin, shared_sandbox, "ioctl", 0, 0x5401, 0) == "ENOTTY"  # TCGETS still reaches the kernel


def test_cannot_create_a_user_namespace(admin: httpx.Client, shared_sandbox: str) -> None:
    clone_newuser = 0x10000000
    assert syscall(admin, shared_sandbox, "unshare", clone_newuser) == "EPERM"
    assert syscall(admin, shared_sandbox, "clone", clone_newuser | 17, 0, 0, 0, 0) == "EPERM"
    assert syscall(admin, shared_sandbox, "clone3", 0, 0) == "ENOSYS"
    assert run(admin, shared_sandbox, "unshare -U true")["exit_code"] != 0


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("mount", (0, 0, 0, 0, 0)),
        ("umount2", (0, 0)),
        ("pivot_root", (0, 0)),
        ("chroot", (0,)),
        ("setns", (0, 0)),
        ("ptrace", (0, 0, 0, 0)),  # PTRACE_TRACEME would succeed without the filter
        ("keyctl", (0, 0xFFFFFFFD, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
        ("add_key", (0, 0, 0, 0, 0)),
        ("request_key", (0, 0, 0, 0)),
        ("perf_event_open", (0, 0, 0, 0, 0)),
        ("bpf", (0, 0, 0)),
    ],
)
def test_dangerous_syscalls_are_blocked(admin: httpx.Client, shared_sandbox: str, name: str, args: tuple) -> None:
    assert syscall(admin, shared_sandbox, name, *args) == "EPERM"


def test_mount_command_fails(admin: httpx.Client, shared_sandbox: str) -> None:
    result = run(admin, shared_sandbox, "mount -t tmpfs none /workspace/m 2>&1; mkdir -p m; "
                                        "mount -t tmpfs none m 2>&1; echo rc=$?")
    assert "rc=0" not in result["stdout"]


def test_runs_as_an_unprivileged_host_user(admin: httpx.Client, shared_sandbox: str, node: NodeProcess) -> None:
    run(admin, shared_sandbox, "echo x > owned-by-me")
    sandbox_dir = node.data_dir / "sandboxes" / shared_sandbox / "workspace"
    if os.geteuid() == 0:
        assert (sandbox_dir / "owned-by-me").stat().st_uid >= 1_000_000
    status = run(admin, shared_sandbox, "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")["stdout"]
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert int(fields["CapEff"], 16) == 0
    assert fields["Seccomp"].strip() == "2"


def test_cannot_reach_the_supervisor_pipes(admin: httpx.Client, shared_sandbox: str) -> None:
    # The supervisor speaks to the node over its stdin/stdout; a command forging events there
    # could fake another command's completion.
    found = run(admin, shared_sandbox, "for p in /proc/[0-9]*; do grep -l edgenode-init $p/cmdline; done "
                                       "2>/dev/null | head -1 | cut -d/ -f3")["stdout"].strip()
    assert found.isdigit()
    result = run(admin, shared_sandbox, f"echo '{{\"ev\":\"exit\",\"id\":1,\"code\":0}}' > /proc/{found}/fd/1")
    assert result["exit_code"] != 0
    assert run(admin, shared_sandbox, f"ls /proc/{found}/fd")["exit_code"] != 0


@pytest.mark.skipif(NR is not X86, reason="the x32 ABI exists on x86-64 only")
def test_the_x32_abi_is_refused(admin: httpx.Client, shared_sandbox: str) -> None:
    # getpid through the x32 ABI (syscall number with bit 30 set): x32's own table would let a
    # program reach calls by numbers the x86-64 filter does not look at. The filter answers EPERM;
    # without it the kernel answers ENOSYS (no x32 support) or runs it.
    result = run(admin, shared_sandbox, ["python3", "-c", SYSCALL, hex(0x40000000 | 39)])
    assert result["exit_code"] == 0, result
    assert str(result["stdout"]).strip() == "EPERM"
