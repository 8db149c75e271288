"""The node's one wasmtime Engine, its epoch ticker, and CPU/wall deadlines per store.

Guest code is interrupted by epochs: a ticker thread bumps the engine's epoch
every ``TICK_S``; each store asks to be called back at every tick, and the
callback (which runs on the guest's own thread) compares the thread's CPU time
and the wall clock with the invocation's budget. So a deadline costs one
cheap check per tick, and CPU time spent waiting on host calls (a slow fetch)
is not charged as guest CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime.component import _types as component_types

WASMTIME_VERSION = importlib.metadata.version("wasmtime")
#: Seconds between epoch ticks: the granularity of CPU and wall deadlines.
TICK_S = 0.005
#: Largest native stack a guest may use, in bytes (beyond it: a stack-overflow trap).
MAX_WASM_STACK = 1 << 20


class _PerThreadSet:
    """A set whose contents belong to the calling thread.

    wasmtime-py lowers untagged variants (option, result) through one module-level
    set that it clears and fills per call; isolates lower values on several threads
    at once, so each thread gets its own.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _set(self) -> set[type]:
        s: set[type] | None = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = set()
        return s

    def clear(self) -> None:
        self._set().clear()

    def add(self, item: type) -> None:
        self._set().add(item)

    def __iter__(self) -> Any:
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())

    def __and__(self, other: Any) -> set[type]:
        return self._set() & set(other)


component_types.case_test_cache = _PerThreadSet()  # type: ignore[assignment]

# wasmtime-py moves a list<u8> (every request and response body, kv value and fetch body) one
# element at a time through Python: about 2 s for a 1 MB response. The C API's list is an array
# of fixed-size values, so a byte string goes in and out with two strided copies instead.
_VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
_KIND_AT: int = ffi.wasmtime_component_val_t.kind.offset
_U8_AT: int = ffi.wasmtime_component_val_t.of.offset + ffi.wasmtime_component_valunion_t.u8.offset  # type: ignore[attr-defined]
_U8_KIND = bytes([ffi.WASMTIME_COMPONENT_U8.value])
_list_to_c = component_types.ListType.convert_to_c
_list_from_c = component_types.ListType.convert_from_c


def _values(data: Any, count: int) -> memoryview:
    return memoryview((ctypes.c_uint8 * (count * _VAL_SIZE)).from_address(ctypes.addressof(data.contents))).cast("B")


def _bytes_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
    if not self._is_bytes():
        _list_to_c(self, store, val, ptr)
        return
    if not isinstance(val, bytes):
        raise TypeError("expected bytes value")
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, len(val))
    if val:
        view = _values(raw.data, len(val))
        view[_KIND_AT::_VAL_SIZE] = _U8_KIND * len(val)
        view[_U8_AT::_VAL_SIZE] = val
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
    ptr.contents.of.list = raw


def _bytes_from_c(self: Any, c: Any) -> Any:
    if not self._is_bytes():
        return _list_from_c(self, c)
    assert c.kind == ffi.WASMTIME_COMPONENT_LIST.value
    try:
        count = c.of.list.size
        return bytes(_values(c.of.list.data, count)[_U8_AT::_VAL_SIZE]) if count else b""
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))


component_types.ListType.convert_to_c = _bytes_to_c  # type: ignore[method-assign]
component_types.ListType.convert_from_c = _bytes_from_c  # type: ignore[method-assign]


@dataclass(eq=False)
class Budget:
    """The CPU and wall budget of one invocation, checked at every epoch tick."""

    cpu_s: float
    wall_s: float
    started_wall: float = field(default_factory=time.monotonic)
    started_cpu: float = field(default_factory=time.thread_time)
    #: Which budget ran out, once one has: "cpu_limit", "wall_limit", "disk_limit" or "shutting_down".
    exceeded: str | None = None
    #: Set when the node stops: the guest is interrupted at the next tick.
    cancelled: bool = False
    #: Checked at ticks too, if set: true once the guest has written more than it may keep on disk.
    over_disk: Callable[[], bool] | None = None

    def cpu_used(self) -> float:
        """Thread CPU seconds since the budget started (call on the invocation's thread)."""
        return time.thread_time() - self.started_cpu

    def wall_used(self) -> float:
        """Wall seconds since the budget started."""
        return time.monotonic() - self.started_wall

    def check(self) -> str | None:
        """The name of the budget that ran out, if any."""
        if self.cancelled:
            self.exceeded = "shutting_down"
        elif self.cpu_used() > self.cpu_s:
            self.exceeded = "cpu_limit"
        elif self.wall_used() > self.wall_s:
            self.exceeded = "wall_limit"
        elif self.over_disk is not None and self.over_disk():
            self.exceeded = "disk_limit"
        return self.exceeded


_current = threading.local()


def current_budget() -> Budget | None:
    """The budget of the invocation running on this thread, if any."""
    return getattr(_current, "budget", None)


#: WASMTIME_UPDATE_DEADLINE_CONTINUE in wasmtime's C API: keep running, next check after ``delta`` ticks.
_CONTINUE = 0

_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_FINALIZER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _on_deadline(context: Any, data: Any, delta: Any, kind: Any) -> int:
    budget = current_budget()
    if budget is not None and budget.check() is not None:
        error = ffi.wasmtime_error_new(f"edgenode: {budget.exceeded}".encode())
        return ctypes.cast(error, ctypes.c_void_p).value or 0
    delta[0] = 1
    kind[0] = _CONTINUE
    return 0


def _no_finalizer(data: Any) -> None:
    return None


# Kept at module level: ctypes callbacks must outlive every store that uses them.
_CALLBACK = _CALLBACK_TYPE(_on_deadline)
_FINALIZER = _FINALIZER_TYPE(_no_finalizer)


class IsolateEngine:
    """One wasmtime Engine with epoch interruption and the thread that ticks it."""

    def __init__(self, *, tick_s: float = TICK_S) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = MAX_WASM_STACK
        config.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(config)
        self.tick_s = tick_s
        # Compiled code is only valid for the same wasmtime and the same settings.
        self.fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;stack={MAX_WASM_STACK};opt=speed".encode()
        ).hexdigest()[:12]
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._budgets: weakref.WeakSet[Budget] = weakref.WeakSet()

    def start(self) -> None:
        """Start the epoch ticker (idempotent)."""
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="isolate-epoch", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        """Interrupt every running guest, then stop the ticker (which is what interrupts them)."""
        for budget in list(self._budgets):
            budget.cancelled = True
        # A couple of ticks lets every interrupted guest see its cancelled budget.
        time.sleep(self.tick_s * 3)
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.engine.increment_epoch()

    def store(self, budget: Budget, *, memory_bytes: int) -> wasmtime.Store:
        """A store for one invocation: memory limit, and the budget checked at every tick."""
        self._budgets.add(budget)
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=memory_bytes)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _CALLBACK, None, _FINALIZER)
        store.set_epoch_deadline(1)
        return store


class running:
    """Context manager binding ``budget`` to this thread while guest code runs."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    def __enter__(self) -> Budget:
        _current.budget = self.budget
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _current.budget = None
