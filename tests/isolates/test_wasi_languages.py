"""Rust and Go programs, built by their ordinary toolchains for WASI preview 1, through /v1/wasi/run.

data/rust-tool.wasm (rustc, target wasm32-wasi) and data/go-tool.wasm.gz (go, GOOS=wasip1
GOARCH=wasm) implement the same small command set (see data/rust-tool.rs), so every test
runs against both. data/flate2-compress-file.wasm is a third-party Rust program, the flate2
crate's compress_file example, unchanged. data/build-wasi-tools.sh rebuilds all three; the C
side is brotli in test_wasi.py.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.isolates.conftest import DATA, b64, error_code

TOOLS = {
    "rust-tool": b64((DATA / "rust-tool.wasm").read_bytes()),
    "go-tool": b64(gzip.decompress((DATA / "go-tool.wasm.gz").read_bytes())),
}


@pytest.fixture(params=sorted(TOOLS))
def tool(request: pytest.FixtureRequest) -> str:
    """The name of one of the two programs; every test runs once per language."""
    return str(request.param)


def run(admin: httpx.Client, tool: str, *args: str, **body: Any) -> dict[str, Any]:
    r = admin.post("/v1/wasi/run", json={"module_b64": TOOLS[tool], "args": [tool, *args], **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def text(result: dict[str, Any], stream: str) -> str:
    return base64.b64decode(result[f"{stream}_b64"]).decode()


def test_arguments_arrive_unchanged(admin: httpx.Client, tool: str) -> None:
    args = ["args", "plain", "with space", "ünïcödé", "--flag=x", ""]
    result = run(admin, tool, *args)
    assert result["exit_code"] == 0, text(result, "stderr")
    assert text(result, "stdout") == "".join(f"{a}\n" for a in [tool, *args])


def test_environment_is_exactly_what_was_sent(admin: httpx.Client, tool: str) -> None:
    result = run(admin, tool, "env", "GREETING", "EMPTY", env={"GREETING": "hello=world", "EMPTY": ""})
    assert result["exit_code"] == 0, text(result, "stderr")
    assert text(result, "stdout") == "GREETING=hello=world\nEMPTY=\n"
    # Nothing of the node's own environment leaks in.
    result = run(admin, tool, "env", "PATH", env={"GREETING": "x"})
    assert result["exit_code"] == 3
    assert text(result, "stdout") == ""
    assert "unset" in text(result, "stderr")


def test_stdin_to_stdout(admin: httpx.Client, tool: str) -> None:
    data = b"the quick brown fox\n" * 5000  # larger than one pipe buffer or read call
    result = run(admin, tool, "upper", stdin_b64=b64(data))
    assert result["exit_code"] == 0, text(result, "stderr")
    assert base64.b64decode(result["stdout_b64"]) == data.upper()


def test_a_file_written_in_the_scratch_dir_comes_back(admin: httpx.Client, tool: str) -> None:
    result = run(admin, tool, "upper", "in/notes.txt", "out/deep/NOTES.txt",
                 files={"in/notes.txt": b64(b"remember the milk\n")})
    assert result["exit_code"] == 0, text(result, "stderr")
    assert base64.b64decode(result["files"]["out/deep/NOTES.txt"]) == b"REMEMBER THE MILK\n"
    assert base64.b64decode(result["files"]["in/notes.txt"]) == b"remember the milk\n"


def test_the_program_lists_and_removes_scratch_files(admin: httpx.Client, tool: str) -> None:
    files = {"a.txt": b64(b"a"), "b.txt": b64(b"b"), "sub/c.txt": b64(b"c")}
    result = run(admin, tool, "ls", files=files)
    assert text(result, "stdout") == "a.txt\nb.txt\nsub\n"
    result = run(admin, tool, "rm", "a.txt", files=files)
    assert result["exit_code"] == 0, text(result, "stderr")
    assert sorted(result["files"]) == ["b.txt", "sub/c.txt"]


def test_a_non_zero_exit_code_is_a_result_not_an_error(admin: httpx.Client, tool: str) -> None:
    result = run(admin, tool, "exit", "42", "giving up")
    assert result["exit_code"] == 42
    assert text(result, "stderr") == "giving up\n"
    result = run(admin, tool, "cat", "missing.txt")
    assert result["exit_code"] == 1
    assert "missing.txt" in text(result, "stderr")
    result = run(admin, tool, "no-such-command")
    assert result["exit_code"] == 2
    assert "usage" in text(result, "stderr")


def test_nothing_outside_the_scratch_dir_is_reachable(admin: httpx.Client, tool: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    up = "../" * 16
    for path in [str(secret), up + str(secret).lstrip("/"), "/etc/passwd", up + "etc/passwd", "/proc/self/environ"]:
        result = run(admin, tool, "cat", path)
        assert (result["exit_code"], text(result, "stdout")) == (1, ""), path
    # The root and the parent of the scratch dir are the scratch dir itself, or nothing.
    for path in ["/", "..", up]:
        result = run(admin, tool, "ls", path, files={"only.txt": b64(b"x")})
        assert (result["exit_code"], text(result, "stdout")) in [(0, "only.txt\n"), (1, "")], path
    # Writes that aim outside land inside the scratch dir or fail; never on the host.
    for target in [str(tmp_path / "escaped.txt"), up + str(tmp_path / "escaped.txt").lstrip("/")]:
        result = run(admin, tool, "upper", "x", target, files={"x": b64(b"x")})
        assert set(result["files"]) <= {"x", target.replace("../", "").lstrip("/")}, target
        assert not (tmp_path / "escaped.txt").exists()


def test_a_third_party_rust_program_gzips_a_file(admin: httpx.Client) -> None:
    data = b"".join(b"line %d of a log file\n" % i for i in range(3000))
    module = b64((DATA / "flate2-compress-file.wasm").read_bytes())
    r = admin.post("/v1/wasi/run", json={"module_b64": module, "args": ["compress_file", "app.log", "app.log.gz"],
                                         "files": {"app.log": b64(data)}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_code"] == 0
    compressed = base64.b64decode(body["files"]["app.log.gz"])
    assert gzip.decompress(compressed) == data
    assert f"Source len: {len(data)}\nTarget len: {len(compressed)}\n" in text(body, "stdout")
    # It unwraps a missing file: a Rust panic is a trap, and the panic message comes back with it.
    r = admin.post("/v1/wasi/run", json={"module_b64": module, "args": ["compress_file", "missing.log", "x.gz"]})
    assert (r.status_code, error_code(r)) == (422, "trap")
    assert "panicked" in r.json()["error"]["output"] and "No such file" in r.json()["error"]["output"]
    r = admin.post("/v1/wasi/run", json={"module_b64": module, "args": ["compress_file"]})
    assert r.status_code == 200 and "Usage" in text(r.json(), "stderr")
