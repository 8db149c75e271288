"""WASI preview 1 commands through /v1/wasi/run: a real third-party program and a hand-written one."""

from __future__ import annotations

import base64

import httpx
import wasmtime

from tests.isolates.conftest import DATA, b64, error_code


def brotli() -> str:
    # Google's brotli CLI compiled unchanged for wasm32-wasip1 (see data/build-brotli.sh).
    return b64((DATA / "brotli.wasm").read_bytes())


def echo_args() -> str:
    return b64(bytes(wasmtime.wat2wasm((DATA / "echo-args.wat").read_text())))


def test_brotli_compresses_a_file_in_the_scratch_dir_and_back(admin: httpx.Client) -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 200
    r = admin.post("/v1/wasi/run", json={
        "module_b64": brotli(), "args": ["brotli", "-q", "9", "notes.txt", "-o", "out/notes.txt.br"],
        "files": {"notes.txt": b64(text), "out/.keep": ""},
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_code"] == 0
    compressed = base64.b64decode(body["files"]["out/notes.txt.br"])
    assert 0 < len(compressed) < len(text) // 10
    assert base64.b64decode(body["files"]["notes.txt"]) == text  # inputs come back too
    r = admin.post("/v1/wasi/run", json={"module_b64": brotli(), "args": ["brotli", "-d", "-c"],
                                         "stdin_b64": b64(compressed)})
    assert r.json()["exit_code"] == 0
    assert base64.b64decode(r.json()["stdout_b64"]) == text


def test_brotli_failure_is_an_exit_code_not_an_error(admin: httpx.Client) -> None:
    r = admin.post("/v1/wasi/run", json={"module_b64": brotli(), "args": ["brotli", "-d", "missing.br"]})
    assert r.status_code == 200
    assert r.json()["exit_code"] == 1
    assert b"missing.br" in base64.b64decode(r.json()["stderr_b64"])


def test_the_scratch_dir_is_all_the_module_sees(admin: httpx.Client) -> None:
    r = admin.post("/v1/wasi/run", json={"module_b64": brotli(), "args": ["brotli", "-c", "/etc/passwd"]})
    assert r.json()["exit_code"] != 0 and r.json()["stdout_b64"] == ""
    r = admin.post("/v1/wasi/run", json={"module_b64": brotli(), "args": ["brotli", "-c", "../../etc/hostname"]})
    assert r.json()["exit_code"] != 0 and r.json()["stdout_b64"] == ""


def test_args_stdin_stdout_stderr_and_exit_code(admin: httpx.Client) -> None:
    r = admin.post("/v1/wasi/run", json={"module_b64": echo_args(), "args": ["echo", "hello-wasi"],
                                         "stdin_b64": b64(b"from stdin")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_code"] == 7
    assert base64.b64decode(body["stdout_b64"]) == b"hello-wasi"
    assert base64.b64decode(body["stderr_b64"]) == b"from stdin"


def test_a_deployed_module_runs_by_name(admin: httpx.Client) -> None:
    r = admin.put("/v1/workers/brotli", content=(DATA / "brotli.wasm").read_bytes(),
                  headers={"content-type": "application/wasm"})
    assert r.status_code == 201 and r.json()["kind"] == "wasi"
    r = admin.post("/v1/wasi/run", json={"name": "brotli", "args": ["brotli", "--version"]})
    assert r.json()["exit_code"] == 0 and b"brotli" in base64.b64decode(r.json()["stdout_b64"])
    invoked = admin.get("/w/brotli/x")
    assert (invoked.status_code, error_code(invoked)) == (400, "bad_request")


def test_cpu_limit_stops_a_spinning_module(admin: httpx.Client) -> None:
    r = admin.post("/v1/wasi/run", json={"module_b64": echo_args(), "args": ["echo", "spin"],
                                         "limits": {"cpu_ms": 100}})
    assert (r.status_code, error_code(r)) == (422, "cpu_limit")


def fill() -> str:
    return b64(bytes(wasmtime.wat2wasm((DATA / "fill.wat").read_text())))


def test_a_module_that_writes_without_end_is_stopped_at_its_disk_limit(admin: httpx.Client) -> None:
    # 64 KiB a write, for as long as it may run: the node's 64 MiB scratch limit stops it long
    # before its CPU limit would (which alone would let it write gigabytes to the host's disk).
    r = admin.post("/v1/wasi/run", json={"module_b64": fill(), "args": ["fill", "bytes"],
                                         "limits": {"cpu_ms": 10_000, "wall_ms": 60_000}})
    assert (r.status_code, error_code(r)) == (422, "disk_limit"), r.text
    assert r.json()["error"]["limit_mb"] == 64
    assert admin.get("/healthz").status_code == 200


def test_a_module_that_creates_files_without_end_is_stopped_at_its_file_limit(admin: httpx.Client) -> None:
    r = admin.post("/v1/wasi/run", json={"module_b64": fill(), "args": ["fill", "files"],
                                         "limits": {"cpu_ms": 10_000, "wall_ms": 60_000}})
    assert (r.status_code, error_code(r)) == (422, "disk_limit"), r.text
    assert "10000 files" in r.json()["error"]["message"]


def test_bad_wasi_requests(admin: httpx.Client) -> None:
    component = b64(b"\0asm\x0d\x00\x01\x00")
    cases = [
        ({"module_b64": b64(b"garbage")}, 400, "invalid_component"),
        ({"module_b64": component}, 400, "invalid_component"),
        ({"module_b64": "%%%"}, 400, "validation_failed"),
        ({"module_b64": echo_args(), "files": {"../x": ""}}, 400, "validation_failed"),
        ({"module_b64": echo_args(), "args": "echo"}, 400, "validation_failed"),
        ({}, 400, "validation_failed"),
        ({"name": "no-such-module"}, 404, "worker_not_found"),
    ]
    for body, status, code in cases:
        r = admin.post("/v1/wasi/run", json=body)
        assert (r.status_code, error_code(r)) == (status, code), (body, r.text)
    no_start = b64(bytes(wasmtime.wat2wasm("(module (memory (export \"memory\") 1))")))
    r = admin.post("/v1/wasi/run", json={"module_b64": no_start})
    assert (r.status_code, error_code(r)) == (400, "invalid_component")
