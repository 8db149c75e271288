"""The shared runtime's own files: found, compiled once, damaged copies replaced, bytecode cached."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from edgenode.errors import BuildFailed
from edgenode.isolates.capabilities import HostFunctions
from edgenode.isolates.engine import Budget, IsolateEngine
from edgenode.isolates.python import PythonRuntime, default_runtime_dir, runtime_key
from edgenode.isolates.runtime import CompiledCache, Runtime

HELLO = {"main.py": "def handle(request):\n    return 'hi'\n"}


def runtime_in(directory: Path, cache: Path) -> PythonRuntime:
    engine = IsolateEngine()
    runtime = Runtime(engine, HostFunctions(lambda: None), CompiledCache(engine, cache / "compiled"),
                      max_response_bytes=1 << 20)
    return PythonRuntime(engine, runtime.linker, runtime_dir=directory, fallback_dir=directory, cache_dir=cache)


def budget() -> Budget:
    return Budget(cpu_s=30, wall_s=60)


@pytest.fixture(scope="module")
def runtime_wasm() -> Path:
    """The session's runtime component (built before the session by the test harness)."""
    path = default_runtime_dir() / f"python-{runtime_key()}.wasm"
    assert path.exists()
    return path


def test_a_damaged_compiled_runtime_is_replaced_and_old_versions_pruned(tmp_path: Path, runtime_wasm: Path) -> None:
    directory = tmp_path / "runtime"
    directory.mkdir()
    shutil.copy(runtime_wasm, directory)
    old = directory / "python-0123456789abcdef01234567.wasm"
    old.write_bytes(b"an old version's runtime")
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    recent = directory / "python-fedcba9876543210fedcba98.wasm"
    recent.write_bytes(b"a version another node on this host still runs")
    python = runtime_in(directory, tmp_path / "cache")
    python.component()  # compiles the WebAssembly once and keeps the native code beside it
    native = python._native(directory)
    assert native.exists() and python.status()["state"] == "ready" and python.built == 0
    assert not old.exists() and recent.exists()
    native.write_bytes(b"\0not native code")
    again = runtime_in(directory, tmp_path / "cache")
    assert again.component() is not None  # the damaged file was discarded and compiled again
    assert native.stat().st_size > 1 << 20


def test_bytecode_is_cached_on_disk_and_a_damaged_entry_is_compiled_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    python = runtime_in(default_runtime_dir(), cache)
    program = python.program(HELLO, "main.py", "worker", budget=budget(), memory_bytes=64 << 20)
    assert program.files[0].compiled and python.compiled_programs == 1
    files = list((cache / "programs").glob("*.json"))
    assert len(files) == 1
    # A second node process finds the bytecode on disk.
    second = runtime_in(default_runtime_dir(), cache)
    assert second.program(HELLO, "main.py", "worker", budget=budget(), memory_bytes=64 << 20) == program
    assert (second.program_loads, second.compiled_programs) == (1, 0)
    files[0].write_text("{ not json")
    third = runtime_in(default_runtime_dir(), cache)
    assert third.program(HELLO, "main.py", "worker", budget=budget(), memory_bytes=64 << 20) == program
    assert (third.program_loads, third.compiled_programs) == (0, 1)


def test_compile_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    python = runtime_in(default_runtime_dir(), tmp_path / "cache")
    with pytest.raises(BuildFailed) as caught:
        python.program({"main.py": "def handle(r):\n    return 1\n", "lib/util.py": "x = [\n"}, "main.py", "worker",
                       budget=budget(), memory_bytes=64 << 20)
    assert caught.value.details["file"] == "lib/util.py" and caught.value.details["line"] == 1
    assert "SyntaxError" in caught.value.message
    assert not (tmp_path / "cache" / "programs").exists()  # nothing is kept for code that does not compile
