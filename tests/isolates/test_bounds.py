"""Every bound, broken by a guest; the node answers clearly and keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.isolates.conftest import error_code, hello_component
from tests.support import NodeProcess


def still_serving(admin: httpx.Client) -> None:
    r = admin.get("/w/kitchen/text")
    assert (r.status_code, r.text) == (200, "HELLO!")


@pytest.mark.parametrize(
    ("route", "status", "code"),
    [
        ("loop", 422, "cpu_limit"),
        ("alloc", 422, "memory_limit"),
        ("recurse", 422, "trap"),
        ("fail", 422, "guest_exception"),
        ("exit", 422, "trap"),
        ("bad-status", 422, "invalid_response"),
    ],
)
def test_guest_failures_are_clear_errors(admin: httpx.Client, kitchen: str, route: str, status: int,
                                         code: str) -> None:
    r = admin.get(f"/w/kitchen/{route}")
    assert (r.status_code, error_code(r)) == (status, code), r.text
    still_serving(admin)


def test_cpu_limit_reports_the_limit_and_usage(admin: httpx.Client, kitchen: str) -> None:
    error = admin.get("/w/kitchen/loop").json()["error"]
    assert error["limit_ms"] == 300
    assert error["usage"]["cpu_ms"] >= 300


def test_memory_limit_reports_the_limit(admin: httpx.Client, kitchen: str) -> None:
    assert admin.get("/w/kitchen/alloc").json()["error"]["limit_mb"] == 48


def test_unbounded_recursion_is_a_stack_overflow_trap(admin: httpx.Client, kitchen: str) -> None:
    assert admin.get("/w/kitchen/recurse").json()["error"]["reason"] == "stack_overflow"


def test_exceptions_name_the_exception_with_a_traceback(admin: httpx.Client, kitchen: str) -> None:
    error = admin.get("/w/kitchen/fail").json()["error"]
    assert error["message"] == "ZeroDivisionError: division by zero"
    assert "main.py" in error["traceback"]


def test_a_raw_component_that_traps_or_spins(admin: httpx.Client) -> None:
    r = admin.put("/v1/workers/wat?cpu_ms=100", content=hello_component(),
                  headers={"content-type": "application/wasm"})
    assert r.status_code == 201
    trap = admin.get("/w/wat/trap")
    assert (trap.status_code, error_code(trap)) == (422, "trap")
    assert "unreachable" in trap.json()["error"]["reason"]
    spin = admin.get("/w/wat/spin")
    assert (spin.status_code, error_code(spin)) == (422, "cpu_limit")
    assert admin.get("/w/wat/fine").text == "hello from wat"


def test_wall_time_bounds_a_guest_stuck_off_cpu(admin: httpx.Client, kitchen_files: dict[str, str]) -> None:
    # CPU 2000 ms but wall 100 ms: the wall clock runs out first.
    r = admin.put("/v1/workers/walled", json={"files": kitchen_files, "limits": {"cpu_ms": 2000, "wall_ms": 100}})
    assert r.status_code == 201
    r = admin.get("/w/walled/loop")
    assert (r.status_code, error_code(r)) == (422, "wall_limit")


def test_oversized_request_is_refused(admin: httpx.Client, kitchen: str) -> None:
    big = b"x" * (8 * 1024 * 1024 + 1)
    r = admin.post("/w/kitchen/echo", content=big)
    assert (r.status_code, error_code(r)) == (413, "payload_too_large")
    still_serving(admin)


def test_oversized_response_is_refused(admin: httpx.Client, kitchen: str) -> None:
    ok = admin.get("/w/kitchen/big?n=1000000")
    assert ok.status_code == 200 and len(ok.content) == 1_000_000
    r = admin.get(f"/w/kitchen/big?n={16 * 1024 * 1024 + 1}")
    # The guest may run out of its 48 MiB building the body, or return it and be refused.
    assert r.status_code == 422 and error_code(r) in ("response_too_large", "memory_limit"), r.text
    still_serving(admin)


def test_response_too_large_with_room_to_build_it(admin: httpx.Client, kitchen_files: dict[str, str]) -> None:
    r = admin.put("/v1/workers/roomy", json={"files": kitchen_files, "limits": {"memory_mb": 128}})
    assert r.status_code == 201
    r = admin.get(f"/w/roomy/big?n={16 * 1024 * 1024 + 1}")
    assert (r.status_code, error_code(r)) == (422, "response_too_large")
    assert r.json()["error"]["limit"] == 16 * 1024 * 1024


def test_no_filesystem_and_no_sockets(admin: httpx.Client, kitchen: str, wnode: NodeProcess) -> None:
    port = wnode.url.rsplit(":", 1)[1]
    tried = admin.get(f"/w/kitchen/escape?port={port}").json()
    assert tried["file"].startswith("denied"), tried
    assert tried["socket"].startswith("denied"), tried
