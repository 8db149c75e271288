"""Pure units: the seccomp program, egress policy parsing and matching, path checks, limits."""

from __future__ import annotations

import asyncio
import struct

import pytest

from edgenode.api.common import json as json_response
from edgenode.api.sandboxes import _result_json
from edgenode.config import SandboxSettings
from edgenode.errors import SandboxPathRefused, ValidationFailed
from edgenode.sandboxes.egress import parse_entry, parse_policy
from edgenode.sandboxes.execution import LineSplitter
from edgenode.sandboxes.limits import resolve_limits
from edgenode.sandboxes.paths import check_path
from edgenode.sandboxes.seccomp import AARCH64, RULES, X86_64, assemble, compile_filter


def test_filter_checks_arch_first_and_ends_allowing() -> None:
    prog = assemble(X86_64)
    assert prog[0] == (0x20, 0, 0, 4)  # load arch
    assert prog[1][3] == X86_64.audit_arch
    assert prog[2] == (0x06, 0, 0, 0x80000000)  # foreign ABI: kill
    assert prog[-1] == (0x06, 0, 0, 0x7FFF0000)


def test_filter_jumps_stay_inside_the_program() -> None:
    for arch in (X86_64, AARCH64):
        prog = assemble(arch)
        for i, (code, jt, jf, k) in enumerate(prog):
            if code & 0x07 == 0x05:  # BPF_JMP
                target = i + 1 + (k if code == 0x05 else max(jt, jf))
                assert target < len(prog)


def test_every_rule_has_a_number_on_every_arch() -> None:
    for arch in (X86_64, AARCH64):
        for rule in RULES:
            assert rule.syscall in arch.numbers


def test_ioctl_rule_compares_only_the_low_word() -> None:
    prog = assemble(X86_64)
    ioctl_at = next(i for i, insn in enumerate(prog) if insn[0] == 0x15 and insn[3] == 16)
    # The block loads args[1] at offset 16 + 8: the low 32 bits on little-endian, never the high word.
    assert prog[ioctl_at + 1] == (0x20, 0, 0, 24)


def test_compiled_filter_is_sock_filter_array() -> None:
    data = compile_filter(X86_64)
    assert len(data) % 8 == 0
    assert struct.unpack_from("=HBBI", data, 0) == (0x20, 0, 0, 4)


@pytest.mark.parametrize(
    ("entry", "host", "port", "allowed"),
    [
        ("example.org", "example.org", 443, True),
        ("example.org", "example.org", 80, True),
        ("example.org", "example.org", 8080, False),
        ("example.org", "sub.example.org", 443, False),
        ("*.example.org", "sub.example.org", 443, True),
        ("*.example.org", "a.b.example.org", 443, True),
        ("*.example.org", "example.org", 443, False),
        ("*.example.org", "badexample.org", 443, False),
        ("example.org:8443", "example.org", 8443, True),
        ("example.org:8443", "example.org", 443, False),
        ("127.0.0.1:9000", "127.0.0.1", 9000, True),
        ("[::1]:9000", "::1", 9000, True),
        # The one grammar of edgenode.egress: a scheme narrows a tunnel to its default port.
        ("https://example.org", "example.org", 443, True),
        ("https://example.org", "example.org", 80, False),
        ("*", "anything.example", 443, True),
    ],
)
def test_allow_entry_matching(entry: str, host: str, port: int, allowed: bool) -> None:
    policy = parse_policy({"allow": [entry]})
    assert (policy.allows(host, port) is not None) is allowed


def test_policy_none_and_node() -> None:
    assert not parse_policy("none").enabled
    assert not parse_policy(None).enabled
    policy = parse_policy({"allow": ["node"]})
    assert policy.enabled and policy.node and not policy.entries
    assert policy.as_json() == {"allow": ["node"]}


@pytest.mark.parametrize("bad", ["", "ftp://example.org", "exa mple.org", "*.org", "host:0", "host:99999",
                                 "user@host", "*.127.0.0.1", "a/b", "host\n", "[::1", "[example.org]"])
def test_bad_allow_entries_are_refused(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_entry(bad)


@pytest.mark.parametrize("bad", [{"allow": "example.org"}, {"allow": [1]}, {"deny": []}, "all", 3])
def test_bad_policies_are_refused(bad: object) -> None:
    with pytest.raises(ValidationFailed):
        parse_policy(bad)


@pytest.mark.parametrize(("path", "reason"), [("/etc/passwd", "absolute"), ("../x", "traversal"),
                                              ("a/../../x", "traversal"), ("a/\x00", "invalid")])
def test_path_checks(path: str, reason: str) -> None:
    with pytest.raises(SandboxPathRefused) as info:
        check_path(path)
    assert info.value.reason == reason


def test_path_parts_drop_dots_and_slashes() -> None:
    assert check_path("a//b/./c/") == ["a", "b", "c"]
    assert check_path("") == []


def test_limits_default_and_maxima() -> None:
    settings = SandboxSettings()
    limits = resolve_limits(None, settings)
    assert limits.pids == settings.default_pids
    assert resolve_limits({"pids": 10}, settings).pids == 10
    with pytest.raises(ValidationFailed) as info:
        resolve_limits({"pids": settings.max_pids + 1}, settings)
    assert info.value.details["maximum"] == settings.max_pids
    for bad in ({"pids": "10"}, {"pids": True}, {"nope": 1}, {"memory_mb": 1}, []):
        with pytest.raises(ValidationFailed):
            resolve_limits(bad, settings)


def test_line_splitter_keeps_lines_whole_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed("stdout", b"one\ntw") == ["one"]
    # A UTF-8 character cut between two chunks, and an invalid byte.
    assert splitter.feed("stdout", b"o \xc3") == []
    assert splitter.feed("stdout", b"\xa9\n\xff\nrest") == ["two é", "\ufffd"]
    assert splitter.feed("stderr", b"e\n") == ["e"]
    assert splitter.flush() == [("stdout", "rest")]
    long = b"x" * (LineSplitter.MAX_LINE * 2 + 5)
    assert splitter.feed("stdout", long) == ["x" * LineSplitter.MAX_LINE] * 2
    assert splitter.flush() == [("stdout", "xxxxx")]


def test_exec_result_json_in_pieces_is_what_the_json_helper_writes() -> None:
    fields = {"exit_code": 0, "signal": None, "duration_ms": 1.5, "truncated": {"stdout": False}}
    text = 'é "quoted" \\ back\x00\n\ttab \u2028 end'.encode()
    # Chunks cut inside a UTF-8 character, plus a byte that is not UTF-8.
    chunks = {"stdout": [text[:1], text[1:9], text[9:], b"\xff"], "stderr": []}
    pieces = asyncio.run(_result_json(fields, chunks))
    expected = json_response({**fields, "stdout": (text + b"\xff").decode(errors="replace"), "stderr": ""}).body
    assert b"".join(pieces) == expected
