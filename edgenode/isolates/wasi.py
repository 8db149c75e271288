"""Run WASI preview 1 command modules: args, env, stdin, files in a private scratch dir.

The module sees only a fresh scratch directory, preopened as both ``/`` and ``.``; every file
left there when it exits comes back to the caller. It gets no network and no
other part of the host's filesystem. CPU, wall time and memory are bounded as
for workers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import wasmtime
from wasmtime import ExitTrap, Linker, Module, WasmtimeError

from edgenode.errors import (
    CpuLimitExceeded,
    DiskLimitExceeded,
    EdgenodeError,
    InvalidComponent,
    IsolateTrap,
    MemoryLimitExceeded,
    PayloadTooLarge,
    ShuttingDown,
    ValidationFailed,
    WallLimitExceeded,
)
from edgenode.isolates.cache import owned_key
from edgenode.isolates.engine import TICK_S, Budget, IsolateEngine, running
from edgenode.isolates.limits import Limits
from edgenode.store.faults import write_atomic

log = logging.getLogger(__name__)

_COMPONENT_LAYER = b"\x0d\x00\x01\x00"
_MODULE_LAYER = b"\x01\x00\x00\x00"


def wasm_kind(data: bytes) -> str:
    """``"component"``, ``"module"`` or ``"unknown"`` from a binary's header."""
    if len(data) < 8 or data[:4] != b"\0asm":
        return "unknown"
    if data[4:8] == _COMPONENT_LAYER:
        return "component"
    if data[4:8] == _MODULE_LAYER:
        return "module"
    return "unknown"


@dataclass
class WasiResult:
    """What a command module left behind."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    files: dict[str, bytes]
    truncated: bool
    cpu_ms: float
    wall_ms: float


class _Sink:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self.parts.append(data)
            self.size += len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be base64 text", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(f"{field} is not valid base64: {exc}", field=field) from None


def scratch_path(name: str) -> PurePosixPath:
    """A file path inside the scratch directory; ValidationFailed if it would leave it."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(p in ("..", "") for p in path.parts) or len(name) > 1024:
        raise ValidationFailed(f"bad file path {name!r}: relative paths inside the scratch directory only",
                               field="files")
    return path


class ScratchMeter:
    """What a module keeps in its scratch directory: bytes on disk and entries, against limits.

    Called at the engine's ticks while the module runs (``Budget.over_disk``), so a module that
    writes without end is stopped within a tick or so of its limit, however it writes (one file,
    many, sparse ones count their allocated blocks). A walk that takes long (many entries) spaces
    the next one out, so the meter costs the guest at most a few percent of its time.
    """

    def __init__(self, root: Path, *, max_bytes: int, max_entries: int) -> None:
        self.root, self.max_bytes, self.max_entries = root, max_bytes, max_entries
        self.used_bytes = self.entries = 0
        #: Regular files found by the last walk that kept them: (path relative to the root, size).
        self.files: list[tuple[str, int]] = []
        self._skip = 0

    def measure(self, *, keep_files: bool = False) -> None:
        """Walk the directory now (does not follow symbolic links); ``keep_files`` lists its regular files."""
        used = entries = 0
        files: list[tuple[str, int]] = []
        stack = [str(self.root)]
        while stack and entries <= self.max_entries:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    st = entry.stat(follow_symlinks=False)
                    used += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif keep_files and stat.S_ISREG(st.st_mode):
                        files.append((os.path.relpath(entry.path, self.root), st.st_size))
        self.used_bytes, self.entries = used, entries
        self.files = sorted(files)

    def over(self, *, keep_files: bool = False) -> bool:
        """True if the module holds more than it may (measured now)."""
        self.measure(keep_files=keep_files)
        return self.used_bytes > self.max_bytes or self.entries > self.max_entries

    def __call__(self) -> bool:
        if self._skip > 0:
            self._skip -= 1
            return False
        began = time.perf_counter()
        over = self.over()
        self._skip = int((time.perf_counter() - began) * 20 / TICK_S)
        return over


class WasiRunner:
    """Compiles command modules (cached by hash) and runs them under limits."""

    def __init__(self, engine: IsolateEngine, cache_dir: Path, *, max_output_bytes: int, capacity: int = 16,
                 scratch_mb: int = 64, scratch_files: int = 10_000) -> None:
        self.engine = engine
        self.scratch_mb, self.scratch_files = scratch_mb, scratch_files
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_output_bytes = max_output_bytes
        self._modules: OrderedDict[str, Module] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity
        self._local = threading.local()

    def module(self, data: bytes, owner: str = "") -> tuple[str, Module]:
        """The compiled module for ``data``, from memory, disk, or compiled now (cached per ``owner``)."""
        key = owned_key(owner, hashlib.sha256(data).hexdigest())
        with self._lock:
            found = self._modules.get(key)
            if found is not None:
                self._modules.move_to_end(key)
                return key, found
        cached = self.cache_dir / f"{key}-{self.engine.fingerprint}.cwasm"
        module: Module | None = None
        if cached.exists():
            try:
                module = Module.deserialize_file(self.engine.engine, str(cached))
            except WasmtimeError:
                cached.unlink(missing_ok=True)
        if module is None:
            if wasm_kind(data) != "module":
                raise InvalidComponent("not a WebAssembly core module (a WASI preview 1 command is expected)")
            try:
                module = Module(self.engine.engine, data)
            except WasmtimeError as exc:
                raise InvalidComponent(f"not a valid WebAssembly module: {str(exc).strip().splitlines()[0]}") from None
            if not any(e.name == "_start" for e in module.exports):
                raise InvalidComponent("the module exports no _start: it is not a WASI command")
            try:
                write_atomic(cached, module.serialize(), "compiled-code cache")
            except EdgenodeError as exc:  # a full disk costs a compile later, not this request
                log.warning("could not keep compiled code", extra={"key": key, "error": exc.message})
        with self._lock:
            self._modules[key] = module
            while len(self._modules) > self.capacity:
                self._modules.popitem(last=False)
        return key, module

    def _linker(self) -> Linker:
        linker: Linker | None = getattr(self._local, "linker", None)
        if linker is None:
            linker = Linker(self.engine.engine)
            linker.define_wasi()
            self._local.linker = linker
        return linker

    def run(self, module: Module, *, args: list[str], env: dict[str, str], stdin: bytes,
            files: dict[str, bytes], limits: Limits) -> WasiResult:
        """Run ``module``'s ``_start`` once (call on an isolate thread)."""
        with tempfile.TemporaryDirectory(prefix="edgenode-wasi-") as tmp:
            scratch = Path(tmp) / "scratch"
            scratch.mkdir()
            for name, data in files.items():
                target = scratch / scratch_path(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            stdin_path = Path(tmp) / "stdin"
            stdin_path.write_bytes(stdin)
            stdout, stderr = _Sink(self.max_output_bytes), _Sink(self.max_output_bytes)
            config = wasmtime.WasiConfig()
            config.argv = args
            config.env = list(env.items())
            config.stdin_file = str(stdin_path)
            config.stdout_custom = stdout.write
            config.stderr_custom = stderr.write
            # Go's wasip1 runtime takes the first preopen as "/" and its working directory,
            # and finds no preopen for a relative path when that one is "."; wasi-libc
            # (C, Rust) resolves relative paths through either. Both name the same directory.
            config.preopen_dir(str(scratch), "/")
            config.preopen_dir(str(scratch), ".")
            meter = ScratchMeter(scratch, max_bytes=self.scratch_mb << 20, max_entries=self.scratch_files)
            budget = Budget(cpu_s=limits.cpu_ms / 1000, wall_s=limits.wall_ms / 1000, over_disk=meter)
            store = self.engine.store(budget, memory_bytes=limits.memory_mb << 20)
            store.set_wasi(config)
            exit_code = 0
            with running(budget):
                try:
                    instance = self._linker().instantiate(store, module)
                    start = instance.exports(store)["_start"]
                    assert isinstance(start, wasmtime.Func)
                    start(store)
                except ExitTrap as exc:
                    exit_code = exc.code
                except (WasmtimeError, wasmtime.Trap) as exc:  # a core module's trap is not a WasmtimeError
                    raise self._classify(exc, budget, limits, stderr.value(), meter) from None
                cpu_ms, wall_ms = budget.cpu_used() * 1000, budget.wall_used() * 1000
            del store
            if meter.over(keep_files=True):  # what it wrote after the last tick counts too
                raise self._disk_error(meter)
            out_files, truncated = self._collect(scratch, meter.files)
            return WasiResult(exit_code, stdout.value(), stderr.value(), out_files,
                              truncated or stdout.truncated or stderr.truncated, cpu_ms, wall_ms)

    def _collect(self, scratch: Path, files: list[tuple[str, int]]) -> tuple[dict[str, bytes], bool]:
        """The contents of ``files`` (the meter's last walk: the module has stopped), up to the output limit."""
        out: dict[str, bytes] = {}
        total = 0
        truncated = False
        for name, size in files:
            if total + size > self.max_output_bytes:
                truncated = True
                continue
            total += size
            out[Path(name).as_posix()] = (scratch / name).read_bytes()
        return out, truncated

    def _disk_error(self, meter: ScratchMeter) -> DiskLimitExceeded:
        if meter.entries > meter.max_entries:
            return DiskLimitExceeded(f"the module created more than {meter.max_entries} files and directories",
                                     limit_mb=self.scratch_mb, limit_files=meter.max_entries)
        return DiskLimitExceeded(f"the module wrote more than {self.scratch_mb} MiB to its scratch directory",
                                 limit_mb=self.scratch_mb, limit_files=meter.max_entries)

    def _classify(self, exc: WasmtimeError | wasmtime.Trap, budget: Budget, limits: Limits,
                  stderr: bytes, meter: ScratchMeter) -> EdgenodeError:
        text = str(exc)
        # A panicking Rust program or an aborting C one says why on stderr just before it traps.
        output = stderr[-2000:].decode(errors="replace") or None
        if budget.exceeded == "shutting_down":
            return ShuttingDown("the node is stopping; the run was interrupted", retry_after=1)
        if budget.exceeded == "cpu_limit":
            return CpuLimitExceeded(f"the module used more than {limits.cpu_ms} ms of CPU time",
                                    limit_ms=limits.cpu_ms)
        if budget.exceeded == "wall_limit":
            return WallLimitExceeded(f"the module ran longer than {limits.wall_ms} ms", limit_ms=limits.wall_ms)
        if budget.exceeded == "disk_limit":
            return self._disk_error(meter)
        lowered = text.lower()
        if "memory" in lowered and ("limit" in lowered or "exceeds" in lowered):
            return MemoryLimitExceeded(f"the module needs more than {limits.memory_mb} MiB of memory",
                                       limit_mb=limits.memory_mb)
        if "unknown import" in lowered or "incompatible import" in lowered:
            return InvalidComponent(f"the module imports something WASI preview 1 does not provide: "
                                    f"{text.strip().splitlines()[0]}")
        if "call stack exhausted" in lowered:
            return IsolateTrap("the module overflowed its stack", reason="stack_overflow", output=output)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # A host call's failure says why under "Caused by:" ("0: In func wasi_snapshot_preview1::...").
        causes = [ln.split(": ", 1)[1] for ln in lines[lines.index("Caused by:") + 1:] if ": " in ln] \
            if "Caused by:" in lines else []
        first = next((ln for ln in lines if ln.startswith("wasm trap:")),
                     causes[0] if causes else lines[0] if lines else "trap")
        return IsolateTrap(f"the module trapped: {first}", reason=first.removeprefix("wasm trap:").strip(),
                           output=output)


def parse_request(data: dict[str, Any], *, max_bytes: int) -> tuple[list[str], dict[str, str], bytes, dict[str, bytes]]:
    """Validate the args, env, stdin and files of a ``/v1/wasi/run`` body."""
    args = data.get("args", ["main"])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValidationFailed("args must be a list of strings (args[0] is the program name)", field="args")
    if not args:
        args = ["main"]
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValidationFailed("env must be an object of strings", field="env")
    stdin = _b64(data["stdin_b64"], "stdin_b64") if data.get("stdin_b64") else b""
    raw_files = data.get("files") or {}
    if not isinstance(raw_files, dict):
        raise ValidationFailed("files must be an object of path -> base64", field="files")
    files = {}
    total = len(stdin)
    paths: dict[PurePosixPath, str] = {}
    for name, value in raw_files.items():
        path = scratch_path(name)
        if path in paths:
            raise ValidationFailed(f"files {paths[path]!r} and {name!r} name the same file", field="files")
        paths[path] = name
        files[name] = _b64(value, f"files[{name}]")
        total += len(files[name])
    for path, name in paths.items():
        parent = next((p for p in path.parents if p in paths), None)
        if parent is not None:
            raise ValidationFailed(f"file {paths[parent]!r} cannot also be the directory of {name!r}",
                                   field="files")
    if total > max_bytes:
        raise PayloadTooLarge(f"stdin and files exceed {max_bytes} bytes", limit=max_bytes)
    return args, env, stdin, files
