"""Run components: compiled-code cache, one fresh instance per request, outcomes classified.

Compiled native code is cached twice: in memory (a small LRU of live
``Component`` objects) and on disk (``Component.serialize``), keyed by the
component's content hash and the engine's fingerprint, so a restarted node
maps the code back in milliseconds instead of recompiling for seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import ExitTrap, WasmtimeError
from wasmtime.component import Component, Linker, Record, Variant

from edgenode.egress import FIELD_NAME, FIELD_VALUE
from edgenode.errors import (
    BuildFailed,
    CpuLimitExceeded,
    EdgenodeError,
    GuestException,
    InvalidComponent,
    InvalidGuestResponse,
    IsolateTrap,
    MemoryLimitExceeded,
    ResponseTooLarge,
    ShuttingDown,
    WallLimitExceeded,
)
from edgenode.isolates.capabilities import HostFunctions, Invocation, bound
from edgenode.isolates.engine import Budget, IsolateEngine, running
from edgenode.isolates.limits import Limits
from edgenode.isolates.python import Program, binding
from edgenode.isolates.python import define as define_runtime_imports
from edgenode.store.faults import write_atomic

log = logging.getLogger(__name__)

#: Bytes of guest stdout/stderr kept per invocation (for logs and for explaining traps).
MAX_OUTPUT = 64 * 1024
_MEMORY_SIGNS = ("MemoryError", "out of memory", "memory allocation of", "Cannot allocate memory")


@dataclass
class GuestRequest:
    """An HTTP request handed to a guest."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    body: bytes

    def to_record(self) -> Any:
        """The request as a WIT ``http-request`` value."""
        record: Any = Record()
        record.method = self.method
        record.path = self.path
        record.query = list(self.query)
        record.headers = list(self.headers)
        record.body = self.body
        return record


@dataclass
class GuestResponse:
    """A guest's HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Usage:
    """What one invocation cost."""

    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    instantiate_ms: float = 0.0
    subrequests: int = 0
    memory_limit_mb: int = 0
    outcome: str = "ok"


@dataclass
class Outcome:
    """A response or an error, plus usage and what the guest logged or printed."""

    response: GuestResponse | None
    error: EdgenodeError | None
    usage: Usage
    logs: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""


class _Capture:
    """A bounded sink for guest stdout/stderr."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size < MAX_OUTPUT:
            self.chunks.append(data[: MAX_OUTPUT - self.size])
        self.size += len(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


class CompiledCache:
    """Compiled components by content hash: a memory LRU over a disk cache."""

    def __init__(self, engine: IsolateEngine, directory: Path, *, capacity: int = 32) -> None:
        self.engine = engine
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self._live: OrderedDict[str, Component] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.compiles = 0  # components compiled by this process (disk-cache misses)
        self.loads = 0  # components mapped from the disk cache

    def path(self, key: str) -> Path:
        """The serialized code's file for a component key."""
        return self.directory / f"{key}-{self.engine.fingerprint}.cwasm"

    def get(self, key: str, wasm: Path) -> Component:
        """The compiled component for ``key``, whose bytes are in ``wasm``."""
        with self._lock:
            found = self._live.get(key)
            if found is not None:
                self._live.move_to_end(key)
                return found
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one compile per key, however many requests arrive at once
            with self._lock:
                found = self._live.get(key)
            if found is None:
                found = self._load_or_compile(key, wasm)
            with self._lock:
                self._live[key] = found
                self._live.move_to_end(key)
                while len(self._live) > self.capacity:
                    self._live.popitem(last=False)
            return found

    def _load_or_compile(self, key: str, wasm: Path) -> Component:
        cached = self.path(key)
        if cached.exists():
            try:
                component = Component.deserialize_file(self.engine.engine, str(cached))
                self.loads += 1
                return component
            except WasmtimeError as exc:  # a different wasmtime wrote it, or it is damaged
                log.warning("discarding unusable compiled component", extra={"key": key, "error": str(exc)})
                cached.unlink(missing_ok=True)
        try:
            component = Component.from_file(self.engine.engine, str(wasm))
        except WasmtimeError as exc:
            raise InvalidComponent(f"not a valid WebAssembly component: {_first_line(str(exc))}") from None
        self.compiles += 1
        try:
            write_atomic(cached, component.serialize(), "compiled-code cache")
        except EdgenodeError as exc:  # a full disk costs a compile later, not this request
            log.warning("could not keep compiled code", extra={"key": key, "error": exc.message})
        return component

    def forget(self, key: str) -> None:
        """Drop a component from memory (its files stay, content-addressed)."""
        with self._lock:
            self._live.pop(key, None)


class Runtime:
    """Instantiates components with the host functions and runs ``handle`` under limits."""

    def __init__(self, engine: IsolateEngine, host: HostFunctions, cache: CompiledCache,
                 *, max_response_bytes: int) -> None:
        self.engine = engine
        self.host = host
        self.cache = cache
        self.max_response_bytes = max_response_bytes
        self._local = threading.local()

    def linker(self) -> Linker:
        """This thread's linker: WASI preview 2 (no preopens, no network) plus every edgenode import."""
        linker: Linker | None = getattr(self._local, "linker", None)
        if linker is None:
            linker = Linker(self.engine.engine)
            linker.add_wasip2()
            with linker.root() as root:
                self.host.define(root)
                define_runtime_imports(root)
            self._local.linker = linker
        return linker

    def check_world(self, component: Component, limits: Limits) -> None:
        """Raise InvalidComponent unless ``component`` exports ``handle`` and instantiates against the worker world.

        Instantiating runs the component's start code, so it gets the deployment's own limits.
        """
        exports = component.type.exports(self.engine.engine)
        if "handle" not in exports:
            raise InvalidComponent("the component does not export handle (the edgenode:guest/worker world)")
        budget = Budget(cpu_s=limits.cpu_ms / 1000, wall_s=limits.wall_ms / 1000)
        store = self.engine.store(budget, memory_bytes=limits.memory_mb << 20)
        store.set_wasi(wasmtime.WasiConfig())
        try:
            with running(budget):
                self.linker().instantiate(store, component)
        except WasmtimeError as exc:
            raise InvalidComponent(f"the component does not fit the worker world: {_first_line(str(exc))}") from None

    def invoke(self, component: Component, request: GuestRequest, invocation: Invocation,
               limits: Limits, program: Program | None = None) -> Outcome:
        """Run one request in a fresh instance of ``component`` (call on an isolate thread).

        ``program`` is what a shared-runtime instance runs (None for a component of its own).
        """
        usage = Usage(memory_limit_mb=limits.memory_mb)
        budget = Budget(cpu_s=limits.cpu_ms / 1000, wall_s=limits.wall_ms / 1000)
        capture = _Capture()
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = capture.write
        wasi.stderr_custom = capture.write
        store = self.engine.store(budget, memory_bytes=limits.memory_mb << 20)
        store.set_wasi(wasi)
        response: GuestResponse | None = None
        error: EdgenodeError | None = None
        with running(budget), bound(invocation), binding(program):
            try:
                instance = self.linker().instantiate(store, component)
                usage.instantiate_ms = budget.wall_used() * 1000
                handle = instance.get_func(store, "handle")
                if handle is None:
                    raise InvalidComponent("the component does not export handle")
                result = handle(store, request.to_record())
                handle.post_return(store)
                response = self._response(result, limits)
            except EdgenodeError as exc:
                error = exc
            except WasmtimeError as exc:
                error = self._classify(exc, budget, limits, capture.text(), shared_runtime=program is not None)
            except (TypeError, ValueError, AttributeError) as exc:  # a raw component returned a misshapen value
                error = InvalidGuestResponse(f"the guest returned a value of the wrong shape: {exc}")
            usage.cpu_ms = budget.cpu_used() * 1000
            usage.wall_ms = budget.wall_used() * 1000
        del store  # free the instance's memory now, not at the next GC
        usage.subrequests = invocation.subrequests
        usage.outcome = "ok" if error is None else error.code
        return Outcome(response, error, usage, invocation.logs, capture.text())

    def _response(self, result: Any, limits: Limits) -> GuestResponse:
        if not isinstance(result, Variant):
            raise InvalidGuestResponse("handle must return result<http-response, guest-error>")
        if result.tag == "err":
            code = getattr(result.payload, "code", "exception")
            message = str(getattr(result.payload, "message", ""))
            if code == "syntax_error":  # one-off code that does not compile: the caller's input, not a crash
                raise BuildFailed(f"the code does not compile: {message}", output=message)
            if code == "out_of_memory":
                raise MemoryLimitExceeded(f"the guest ran out of memory (limit {limits.memory_mb} MiB)",
                                          limit_mb=limits.memory_mb)
            head, _, trace = message.partition("\n")
            raise GuestException(head or "the guest failed", traceback=trace.strip() or None)
        out: Any = result.payload
        status = out.status
        if not 100 <= status <= 599:
            raise InvalidGuestResponse(f"the guest returned HTTP status {status}")
        body = bytes(out.body)
        if len(body) > self.max_response_bytes:
            raise ResponseTooLarge(
                f"the guest's response of {len(body)} bytes exceeds {self.max_response_bytes} bytes",
                limit=self.max_response_bytes,
            )
        headers = [(str(k), str(v)) for k, v in out.headers]
        for name, value in headers:
            if not FIELD_NAME.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
                raise InvalidGuestResponse(f"the guest returned an invalid header {name!r}")
        return GuestResponse(status, headers, body)

    def _classify(self, exc: WasmtimeError, budget: Budget, limits: Limits, output: str, *,
                  shared_runtime: bool = False) -> EdgenodeError:
        if isinstance(exc, ExitTrap):
            return IsolateTrap(f"the guest exited with status {exc.code} instead of returning a response",
                               reason="exit", exit_code=exc.code)
        text = str(exc)
        if budget.exceeded == "shutting_down":
            return ShuttingDown("the node is stopping; the request was interrupted", retry_after=1)
        if budget.exceeded == "cpu_limit" or "edgenode: cpu_limit" in text:
            return CpuLimitExceeded(f"the guest used more than {limits.cpu_ms} ms of CPU time",
                                    limit_ms=limits.cpu_ms)
        if budget.exceeded == "wall_limit" or "edgenode: wall_limit" in text:
            return WallLimitExceeded(f"the request ran longer than {limits.wall_ms} ms", limit_ms=limits.wall_ms)
        lowered = text.lower()
        # Pure Python cannot touch memory out of bounds; in the shared runtime such a fault is
        # componentize-py's glue using an allocation the store's memory limit refused.
        oob = shared_runtime and "out of bounds memory access" in lowered
        if oob or ("memory" in lowered and ("limit" in lowered or "exceeds" in lowered)) or any(
            sign in output for sign in _MEMORY_SIGNS
        ):
            return MemoryLimitExceeded(f"the guest needed more than {limits.memory_mb} MiB of memory",
                                       limit_mb=limits.memory_mb)
        if "too much data is being copied" in lowered:  # wasmtime's own cap on one host/guest copy
            return ResponseTooLarge(
                "the guest moved more data across the host boundary than allowed (a response or host call "
                f"argument is too large; responses may be at most {self.max_response_bytes} bytes)",
                limit=self.max_response_bytes,
            )
        if "call stack exhausted" in lowered or "stack overflow" in lowered:
            return IsolateTrap("the guest overflowed its stack (unbounded recursion?)", reason="stack_overflow")
        reason = _trap_reason(text)
        tail = output.strip().splitlines()[-5:]
        return IsolateTrap(f"the guest trapped: {reason}", reason=reason, output="\n".join(tail) or None)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _trap_reason(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("wasm trap:") or line.startswith("edgenode:"):
            return line.split(":", 1)[1].strip()
    return _first_line(text)[:200]


def now_ms() -> float:
    """Monotonic milliseconds (for callers timing around the runtime)."""
    return time.monotonic() * 1000
