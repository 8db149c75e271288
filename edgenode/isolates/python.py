"""The shared Python runtime: one pre-initialized CPython component for every Python guest.

Every worker, one-off run and agent of every tenant runs in a fresh instance of
the same component (``edgenode/wit/runtime.wit``, world ``python``), built once
per edgenode version by componentize-py with the guest package, the agent SDK
and much of the standard library imported before the snapshot. Its native code
is compiled once and mapped from disk, so it is shared by every instance.

A deployment's files are data: at deploy time a fresh instance compiles them
(``compile`` export: syntax errors come back with file, line and column) and
the node keeps the bytecode, in memory and on disk, keyed by the files' digest
and the runtime's key. A request's instance asks for its program through the
``program.load`` import and executes it. One-off runs skip the deploy step and
hand over the source, which the instance compiles itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import WasmtimeError
from wasmtime.component import Component, Linker, Record, Variant

from edgenode import __version__
from edgenode.errors import BuildFailed, EdgenodeError, InvalidComponent, Unavailable
from edgenode.isolates.builder import GUEST_DIR, WIT_DIR, componentize, componentize_py_version, tree_digest
from edgenode.isolates.engine import Budget, IsolateEngine, running
from edgenode.store.faults import write_atomic

log = logging.getLogger(__name__)

#: The world the runtime implements and the module componentize-py snapshots.
WORLD = "python"
ENTRY_MODULE = "edgenode_runtime"
PACKAGE = "edgenode:guest"
VERSION = "0.1.0"
#: Bytecode kept in memory, in bytes (a typical deployment's is a few KiB); the rest is read from disk.
PROGRAMS_IN_MEMORY_BYTES = 64 << 20

HostCall = Callable[[str, str, Any], dict[str, Any]]


def runtime_key() -> str:
    """What names a runtime build: edgenode's version, the WIT and guest sources, componentize-py's version."""
    parts = f"{__version__}:{tree_digest(WIT_DIR)}:{tree_digest(GUEST_DIR)}:{componentize_py_version()}:{WORLD}"
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


def default_runtime_dir() -> Path:
    """``$XDG_CACHE_HOME/edgenode/runtime``, else ``~/.cache/edgenode/runtime``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgenode" / "runtime"


#: Where a packaged edgenode (zipapp, .deb) carries its prebuilt runtime.
BUNDLED_DIR = Path(__file__).resolve().parent / "prebuilt"


@dataclass(frozen=True)
class ProgramFile:
    """One file of a program: Python bytecode (base64 of the runtime's marshal), or text."""

    path: str
    compiled: bool
    content: str


@dataclass(frozen=True)
class Program:
    """What one instance runs: an entry file and every file of the deployment."""

    entry: str
    files: tuple[ProgramFile, ...]

    @classmethod
    def from_source(cls, files: dict[str, str], entry: str = "main.py") -> Program:
        """A program the instance compiles itself (one-off runs)."""
        return cls(entry, tuple(ProgramFile(p, False, t) for p, t in sorted(files.items())))

    @cached_property
    def wire(self) -> str:
        """The program as ``program.load`` hands it over, and as the bytecode cache stores it (JSON)."""
        return json.dumps({"entry": self.entry, "files": [[f.path, f.compiled, f.content] for f in self.files]})

    @classmethod
    def from_json(cls, text: str) -> Program:
        """A program read back from the bytecode cache."""
        data = json.loads(text)
        return cls(str(data["entry"]), tuple(ProgramFile(str(p), bool(c), str(t)) for p, c, t in data["files"]))

    def size(self) -> int:
        """Bytes of content (what the memory cache accounts)."""
        return sum(len(f.content) for f in self.files)


def _file_record(f: ProgramFile) -> Any:
    record: Any = Record()
    record.path = f.path
    record.compiled = f.compiled
    record.content = f.content
    return record


_local = threading.local()


class binding:
    """Context manager making ``program`` (and, for agents, ``call``) this thread's current ones."""

    def __init__(self, program: Program | None, call: HostCall | None = None) -> None:
        self.program = program
        self.call = call

    def __enter__(self) -> None:
        _local.program = self.program
        _local.call = self.call

    def __exit__(self, *exc: object) -> None:
        _local.program = None
        _local.call = None


def _program_load(store: Any) -> Any:
    program: Program | None = getattr(_local, "program", None)
    if program is None:
        raise WasmtimeError("edgenode: no program is bound to this instance")
    return program.wire


def _agent_call(store: Any, kind: str, name: str, request: str) -> str:
    call: HostCall | None = getattr(_local, "call", None)
    if call is None:  # a worker's code reaching for the agent host: there is no run to act for
        return json.dumps({"stop": "no_activation"})
    try:
        parsed = json.loads(request)
    except ValueError:
        return json.dumps({"error": {"code": "invalid_json", "message": "request is not JSON"}})
    return json.dumps(call(kind, name, parsed))


def define(root: Any) -> None:
    """Add the runtime's own imports (``program``, ``agent-host``) to a linker's root instance."""
    with root.add_instance(f"{PACKAGE}/program@{VERSION}") as program:
        program.add_func("load", _program_load)
    with root.add_instance(f"{PACKAGE}/agent-host@{VERSION}") as host:
        host.add_func("call", _agent_call)


class PythonRuntime:
    """Finds or builds the runtime component once, compiles it once, and keeps deployments' bytecode."""

    def __init__(self, engine: IsolateEngine, linker: Callable[[], Linker], *, runtime_dir: Path | None,
                 fallback_dir: Path, cache_dir: Path, timeout_s: float = 600.0) -> None:
        self.engine = engine
        self.linker = linker
        self.key = runtime_key()
        self.directory = runtime_dir or _writable(default_runtime_dir()) or fallback_dir
        self.programs_dir = cache_dir / "programs"
        self.timeout_s = timeout_s
        self._component: Component | None = None
        self._lock = threading.Lock()
        self._programs: OrderedDict[str, Program] = OrderedDict()
        self._programs_bytes = 0
        self._programs_lock = threading.Lock()
        self.state = "cold"  # cold, building, compiling, ready, failed
        self.error: EdgenodeError | None = None
        self._build: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.built = 0  # runtime builds run by this process
        self.compiled_programs = 0  # deployments compiled by this process
        self.program_loads = 0  # deployments' bytecode read back from disk

    @property
    def wasm(self) -> Path:
        """The runtime component's file in the runtime directory."""
        return self.directory / f"python-{self.key}.wasm"

    def _native(self, directory: Path) -> Path:
        return directory / f"python-{self.key}-{self.engine.fingerprint}.cwasm"

    def status(self) -> dict[str, Any]:
        """The runtime's state for ``/v1/status``."""
        return {"state": self.state, "key": self.key, "dir": str(self.directory), "builds": self.built,
                "programs_compiled": self.compiled_programs, "program_loads": self.program_loads,
                "programs_in_memory": len(self._programs), "program_bytes_in_memory": self._programs_bytes,
                **({"error": self.error.message} if self.error is not None else {})}

    # -- the component ----------------------------------------------------------

    def component(self) -> Component:
        """The compiled runtime, built and compiled first if need be (blocking; call off the event loop)."""
        found = self._component
        if found is not None:
            return found
        with self._lock:
            if self._component is None:
                try:
                    self._component = self._prepare()
                    self.state = "ready"
                    self.error = None
                except EdgenodeError as exc:
                    self.state = "failed"
                    self.error = exc
                    raise
            return self._component

    def _prepare(self) -> Component:
        for directory in (BUNDLED_DIR, self.directory):
            native = self._native(directory)
            if native.exists():
                try:
                    component = Component.deserialize_file(self.engine.engine, str(native))
                    if directory == self.directory:
                        _touch(native)  # in use: not an old version to prune
                    return component
                except WasmtimeError as exc:  # damaged, or written by another wasmtime
                    log.warning("discarding unusable compiled runtime", extra={"file": str(native), "error": str(exc)})
                    if directory == self.directory:
                        native.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Several nodes on one host may start at once: one builds, the others wait and then load.
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                native = self._native(self.directory)
                if native.exists():
                    return Component.deserialize_file(self.engine.engine, str(native))
                source = BUNDLED_DIR / self.wasm.name
                if not source.exists():
                    source = self.wasm
                if not source.exists():
                    self.state = "building"
                    log.info("building the Python runtime (once per edgenode version)", extra={"file": str(source)})
                    if self._closed:
                        raise Unavailable("the node is stopping")
                    componentize([GUEST_DIR], ENTRY_MODULE, WORLD, source, timeout_s=self.timeout_s,
                                 started=self._started)
                    self.built += 1
                self.state = "compiling"
                try:
                    component = Component.from_file(self.engine.engine, str(source))
                except WasmtimeError as exc:
                    raise InvalidComponent(f"the Python runtime {source} is not a valid component: {exc}") from None
                staged = native.with_suffix(f".tmp{os.getpid()}")
                staged.write_bytes(component.serialize())
                os.replace(staged, native)
                log.info("the Python runtime is ready", extra={"file": str(native)})
                self._prune_other_versions()
                return component
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        self._build = proc
        if self._closed:
            proc.kill()

    def close(self) -> None:
        """Stop a build in progress (the node is stopping); the next start builds again."""
        self._closed = True
        build = self._build
        if build is not None and build.poll() is None:
            build.kill()

    def _prune_other_versions(self, *, min_age_s: float = 86400.0) -> None:
        """Remove other versions' runtimes not used for a day (a host may run two versions during an upgrade)."""
        now = time.time()
        for path in self.directory.glob("python-*"):
            if path.name.startswith(f"python-{self.key}") or path.suffix not in (".wasm", ".cwasm"):
                continue
            try:
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink()
                    log.info("removed an old Python runtime", extra={"file": str(path)})
            except OSError:
                continue

    # -- programs ---------------------------------------------------------------

    def program_key(self, files: dict[str, str], entry: str, kind: str, *, owner: str = "") -> str:
        """The bytecode cache's name for a deployment's files under this runtime.

        ``owner`` (a tenant) keeps one tenant's entries from answering another's: a deploy that found
        another tenant's bytecode would be quick, and tell that someone had deployed the same code.
        """
        digest = hashlib.sha256(f"{self.key}\0{kind}\0{entry}\0{owner}\0".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
        return digest.hexdigest()

    def program(self, files: dict[str, str], entry: str, kind: str, *, budget: Budget,
                memory_bytes: int, key: str | None = None, owner: str = "") -> Program:
        """The compiled program for ``files``: from memory, from disk, or compiled now in a fresh instance.

        ``key`` is ``program_key(files, entry, kind)`` when the caller keeps it (hashing a deployment's
        files on every request would cost more than finding its bytecode). Raises BuildFailed (400)
        with the file, line and column of the first syntax error.
        """
        key = key or self.program_key(files, entry, kind, owner=owner)
        with self._programs_lock:
            found = self._programs.get(key)
            if found is not None:
                self._programs.move_to_end(key)
                return found
        path = self.programs_dir / f"{key}.json"
        program: Program | None = None
        try:
            program = Program.from_json(path.read_text())
            self.program_loads += 1
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("discarding an unreadable bytecode cache file", extra={"file": str(path), "error": str(exc)})
        if program is None:
            program = self._compile(files, entry, kind, budget=budget, memory_bytes=memory_bytes)
            self.compiled_programs += 1
            try:
                self.programs_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(path, program.wire, "bytecode cache")
            except (OSError, EdgenodeError) as exc:  # a full disk costs a recompile later, not this request
                log.warning("could not keep a deployment's bytecode", extra={"file": str(path), "error": str(exc)})
        with self._programs_lock:
            if key not in self._programs:
                self._programs[key] = program
                self._programs_bytes += program.size()
            while self._programs_bytes > PROGRAMS_IN_MEMORY_BYTES and len(self._programs) > 1:
                _, evicted = self._programs.popitem(last=False)
                self._programs_bytes -= evicted.size()
        return program

    def _compile(self, files: dict[str, str], entry: str, kind: str, *, budget: Budget,
                 memory_bytes: int) -> Program:
        component = self.component()
        output: list[bytes] = []
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = output.append
        wasi.stderr_custom = output.append
        store = self.engine.store(budget, memory_bytes=memory_bytes)
        store.set_wasi(wasi)
        source = Program.from_source(files, entry)
        try:
            with running(budget), binding(None):
                instance = self.linker().instantiate(store, component)
                fn = instance.get_func(store, "compile")
                if fn is None:
                    raise Unavailable("the Python runtime does not export compile")
                result = fn(store, [_file_record(f) for f in source.files], entry, kind)
                fn.post_return(store)
        except WasmtimeError as exc:
            if budget.exceeded is not None:
                raise BuildFailed(f"compiling the program ran out of time ({budget.exceeded})", output="") from None
            tail = b"".join(output).decode(errors="replace")[-2000:]
            if "MemoryError" in tail or "memory" in str(exc).lower():
                raise BuildFailed("compiling the program ran out of memory", output=tail) from None
            raise BuildFailed(f"compiling the program failed: {str(exc).strip().splitlines()[0][:300]}",
                              output=tail) from None
        finally:
            del store
        # wasmtime-py gives a result whose two cases have different Python types untagged: a list is ok.
        if isinstance(result, Variant):
            result = result.payload if result.tag == "ok" else _CompileErr(result.payload)
        elif not isinstance(result, list):
            result = _CompileErr(result)
        if isinstance(result, _CompileErr):
            err: Any = result.error
            where = f"{err.path}:{err.line}:{err.column}" if err.line else str(err.path)
            raise BuildFailed(f"{where}: {err.message}", output=f"{where}: {err.message}", file=str(err.path),
                              line=int(err.line), column=int(err.column))
        return Program(entry, tuple(ProgramFile(str(f.path), bool(f.compiled), str(f.content)) for f in result))


@dataclass(frozen=True)
class _CompileErr:
    error: Any


def prepare_runtime(directory: Path, *, timeout_s: float = 600.0) -> PythonRuntime:
    """Build (once per version) and compile the runtime in ``directory``, outside any node."""
    engine = IsolateEngine()
    # Building and compiling instantiate nothing, so no host function is ever linked.
    python = PythonRuntime(engine, lambda: Linker(engine.engine), runtime_dir=directory, fallback_dir=directory,
                           cache_dir=directory, timeout_s=timeout_s)
    python.component()
    return python


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache is fine
        pass


def _writable(directory: Path) -> Path | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory if os.access(directory, os.W_OK) else None
