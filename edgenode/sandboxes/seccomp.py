"""The seccomp filter every sandbox runs under, assembled as classic BPF.

bwrap loads a compiled program from a file descriptor (``--seccomp FD``), so the
filter is built here from a small table of rules rather than through libseccomp:
no C library or binding to install, and the whole policy is readable below.

The program checks the architecture first (a foreign ABI such as i386 or x32
could otherwise reach the same kernel entry points under other numbers), then
walks :data:`RULES`. A rule denies a syscall outright, or only when an argument
matches; argument tests read the low 32 bits of the argument alone, because the
kernel ignores the high half of ``int``-sized arguments such as an ioctl request
(comparing all 64 bits lets ``TIOCSTI | 1 << 32`` slip through, a known bug class).
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass
from typing import Literal

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# Offsets into struct seccomp_data: nr (int), arch (u32), instruction_pointer (u64), args[6] (u64).
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (little-endian machines only)."""
    return 16 + 8 * index


TIOCSTI = 0x5412
TIOCLINUX = 0x541C
CLONE_NEWUSER = 0x10000000
X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Rule:
    """Deny ``syscall``, always or when the low 32 bits of an argument match.

    ``test`` is ``"eq"`` (argument equals one of ``values``) or ``"bits"`` (argument has
    any bit of ``values[0]`` set); ``None`` denies every call.
    """

    syscall: str
    why: str
    arg: int = 0
    test: Literal["eq", "bits"] | None = None
    values: tuple[int, ...] = ()
    errno: int = errno.EPERM


#: What a sandbox may not do. Everything else is allowed: the namespaces and the
#: unprivileged user already take away most of what these calls could reach; the
#: filter closes what remains reachable from inside a user namespace.
RULES: tuple[Rule, ...] = (
    Rule("ioctl", "inject keystrokes into a terminal (TIOCSTI) or console (TIOCLINUX)",
         arg=1, test="eq", values=(TIOCSTI, TIOCLINUX)),
    Rule("clone", "create a nested user namespace", arg=0, test="bits", values=(CLONE_NEWUSER,)),
    # clone3 passes its flags in memory a filter cannot read; ENOSYS makes libc fall back to clone.
    Rule("clone3", "create namespaces through flags a filter cannot inspect", errno=errno.ENOSYS),
    Rule("unshare", "create a nested user namespace", arg=0, test="bits", values=(CLONE_NEWUSER,)),
    Rule("setns", "join another namespace"),
    Rule("mount", "mount filesystems"),
    Rule("umount2", "unmount the sandbox's view"),
    Rule("pivot_root", "change the root"),
    Rule("chroot", "change the root"),
    Rule("fsopen", "mount through the new mount API"),
    Rule("fsconfig", "mount through the new mount API"),
    Rule("fsmount", "mount through the new mount API"),
    Rule("move_mount", "mount through the new mount API"),
    Rule("open_tree", "clone mounts"),
    Rule("mount_setattr", "change mount flags"),
    Rule("ptrace", "trace or inspect other processes"),
    Rule("process_vm_readv", "read another process's memory"),
    Rule("process_vm_writev", "write another process's memory"),
    Rule("keyctl", "use the kernel keyrings, which are not namespaced"),
    Rule("add_key", "use the kernel keyrings, which are not namespaced"),
    Rule("request_key", "use the kernel keyrings, which are not namespaced"),
    Rule("perf_event_open", "profile the host kernel and other processes"),
    Rule("bpf", "load BPF programs"),
    Rule("userfaultfd", "stall the kernel on page faults (a race-widening primitive)"),
    Rule("kexec_load", "replace the kernel"),
    Rule("kexec_file_load", "replace the kernel"),
    Rule("init_module", "load kernel modules"),
    Rule("finit_module", "load kernel modules"),
    Rule("delete_module", "unload kernel modules"),
    Rule("open_by_handle_at", "open host files by handle, bypassing the mount view"),
    Rule("syslog", "read the kernel log"),
    Rule("acct", "switch process accounting"),
    Rule("swapon", "change swap"),
    Rule("swapoff", "change swap"),
    Rule("reboot", "reboot the host"),
)


@dataclass(frozen=True)
class Arch:
    """One ABI: its audit architecture value and syscall numbers."""

    name: str
    audit_arch: int
    numbers: dict[str, int]
    deny_x32: bool = False


X86_64 = Arch(
    "x86_64",
    0xC000003E,
    {
        "ioctl": 16, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "open_by_handle_at": 304, "syslog": 103, "acct": 163, "swapon": 167, "swapoff": 168, "reboot": 169,
    },
    deny_x32=True,
)

AARCH64 = Arch(
    "aarch64",
    0xC00000B7,
    {
        "ioctl": 29, "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "mount_setattr": 442, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "syslog": 116, "acct": 89, "swapon": 224, "swapoff": 225, "reboot": 142,
    },
)

ARCHES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}


def native_arch() -> Arch | None:
    """The ABI of this machine, or None when the filter has no table for it."""
    return ARCHES.get(platform.machine().lower())


def _insn(code: int, jt: int, jf: int, k: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def assemble(arch: Arch, rules: tuple[Rule, ...] = RULES) -> list[tuple[int, int, int, int]]:
    """The filter as a list of ``(code, jt, jf, k)`` instructions."""
    prog = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ_K, 1, 0, arch.audit_arch),
        _insn(_RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if arch.deny_x32:
        prog += [_insn(_JGE_K, 0, 1, X32_SYSCALL_BIT), _insn(_RET_K, 0, 0, RET_ERRNO | errno.EPERM)]
    for rule in rules:
        nr = arch.numbers[rule.syscall]
        deny = _insn(_RET_K, 0, 0, RET_ERRNO | rule.errno)
        if rule.test is None:
            prog += [_insn(_JEQ_K, 0, 1, nr), deny]
            continue
        # Block: load the argument's low word, test it, deny or reload nr and go on.
        tests: list[tuple[int, int, int, int]] = []
        if rule.test == "eq":
            n = len(rule.values)
            for i, value in enumerate(rule.values):
                # On a match jump to `deny` (after the remaining tests and one fall-through jump).
                to_deny = (n - 1 - i) + 1
                tests.append(_insn(_JEQ_K, to_deny, 0, value))
        else:
            tests.append(_insn(_JSET_K, 1, 0, rule.values[0]))
        block = [_insn(_LD_W_ABS, 0, 0, _arg_low(rule.arg)), *tests, _insn(0x05, 0, 0, 1), deny,
                 _insn(_LD_W_ABS, 0, 0, _OFF_NR)]
        # 0x05 is BPF_JMP|BPF_JA: on no match skip over `deny` to the reload of nr.
        prog += [_insn(_JEQ_K, 0, len(block), nr), *block]
    prog.append(_insn(_RET_K, 0, 0, RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return prog


def compile_filter(arch: Arch | None = None) -> bytes:
    """The filter as the bytes of a ``struct sock_filter`` array, ready for ``bwrap --seccomp``."""
    target = arch or native_arch()
    if target is None:
        raise RuntimeError(f"no seccomp syscall table for {platform.machine()}")
    return b"".join(struct.pack("=HBBI", *insn) for insn in assemble(target))


__all__ = ["ARCHES", "RULES", "Arch", "Rule", "assemble", "compile_filter", "native_arch"]
