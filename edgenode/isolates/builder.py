"""Build Python workers into components with componentize-py, content-addressed.

A build's key is the SHA-256 of its files, the guest package, the WIT package
and the componentize-py version: the same source always maps to the same
component file, so redeploying unchanged code, restarting the node, or a second
node sharing the cache directory never builds twice. Builds run in a
subprocess (a crash or a runaway build cannot take the node down) and at most
``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgenode.errors import BuildFailed, Overloaded, PayloadTooLarge, ValidationFailed

log = logging.getLogger(__name__)

#: The WIT package every worker is built against.
WIT_DIR = Path(__file__).resolve().parent.parent / "wit"
#: The guest package bundled into every Python worker.
GUEST_DIR = Path(__file__).resolve().parent / "guest"
#: The world Python workers target.
WORLD = "worker"
#: Module names a worker may not use: the bindings, the guest package and the entry point.
RESERVED = ("wit_world", "edgenode_guest", "edgenode_entry", "componentize_py_runtime", "componentize_py_types",
            "componentize_py_async_support", "poll_loop")
ENTRY_MODULE = "edgenode_entry"
_ENTRY = '''\
import wit_world
from edgenode_guest._worker import handle_with
import main as _main

_handler = getattr(_main, "handle", None)
if not callable(_handler):
    if not callable(getattr(_main, "main", None)):
        raise TypeError("main.py must define handle(request) (or main(input) for one-off runs)")

    def _handler(request):
        return _main.main(request.json() if request.body else None)


class WitWorld(wit_world.WitWorld):
    def handle(self, req):
        return handle_with(_handler, req)
'''
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.@+-][A-Za-z0-9_.@+ -]*$")


def componentize_py_version() -> str:
    """The installed componentize-py version (part of every build key)."""
    try:
        return importlib.metadata.version("componentize-py")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Source:
    """A Python worker's files, validated: relative POSIX paths to UTF-8 text."""

    files: dict[str, str]

    @classmethod
    def parse(cls, files: object, *, max_bytes: int, max_files: int = 2000) -> Source:
        """Validate a ``{"path": "text"}`` mapping; raises ValidationFailed or PayloadTooLarge."""
        if not isinstance(files, dict) or not files:
            raise ValidationFailed("files must be a non-empty object of path -> text", field="files")
        if len(files) > max_files:
            raise ValidationFailed(f"at most {max_files} files", field="files")
        total = 0
        clean: dict[str, str] = {}
        for name, text in files.items():
            if not isinstance(name, str) or not isinstance(text, str):
                raise ValidationFailed("files maps paths to text", field="files")
            path = PurePosixPath(name)
            parts = path.parts
            if (not parts or path.is_absolute() or any(p in ("..", ".") for p in parts)
                    or not all(_SAFE_PART.match(p) for p in parts) or len(name) > 255):
                raise ValidationFailed(f"bad file path {name!r}", field="files")
            top = parts[0].removesuffix(".py")
            if top in RESERVED:
                raise ValidationFailed(f"{parts[0]!r} is reserved by the guest runtime", field="files")
            total += len(text.encode())
            if total > max_bytes:
                raise PayloadTooLarge(f"worker source exceeds {max_bytes} bytes", limit=max_bytes)
            clean[str(path)] = text
        if "main.py" not in clean:
            raise ValidationFailed("a Python worker needs main.py defining handle(request)", field="files")
        return cls(clean)

    def digest(self) -> str:
        """SHA-256 of the files alone."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name].encode() + b"\0")
        return h.hexdigest()


class Builder:
    """Turns Python sources into components under ``cache_dir/components``."""

    def __init__(self, cache_dir: Path, *, timeout_s: float = 300.0, concurrency: int = 1,
                 max_waiting: int = 16) -> None:
        self.components = cache_dir / "components"
        self.components.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self.max_waiting = max_waiting
        self._waiting = 0
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        # The toolchain's identity is fixed for the life of the process.
        toolchain = (f"{_tree_digest(WIT_DIR)}:{_tree_digest(GUEST_DIR)}:{componentize_py_version()}:{WORLD}:"
                     f"{hashlib.sha256(_ENTRY.encode()).hexdigest()}")
        self._toolchain = hashlib.sha256(toolchain.encode()).hexdigest()
        self.builds = 0  # builds actually run by this process (cache misses)

    def key(self, source: Source) -> str:
        """The content hash naming the component built from ``source``."""
        return hashlib.sha256(f"py:{self._toolchain}:{source.digest()}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        """Where the component with this key lives."""
        return self.components / f"{key}.wasm"

    async def build(self, source: Source) -> tuple[str, Path]:
        """The component for ``source``, built unless cached; raises BuildFailed with the compiler's message."""
        key = self.key(source)
        path = self.path(key)
        if path.exists():
            return key, path
        # Two deploys of the same source at once share one build.
        pending = self._inflight.get(key)
        if pending is not None:
            return key, await asyncio.shield(pending)
        if self._waiting >= self.max_waiting:
            raise Overloaded(f"{self._waiting} builds are already waiting; retry shortly", retry_after=5)
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        self._waiting += 1
        waiting = True
        try:
            async with self._slots:
                self._waiting -= 1
                waiting = False
                await self._run(source, path)
            future.set_result(path)
            return key, path
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            if waiting:
                self._waiting -= 1
            del self._inflight[key]

    async def _run(self, source: Source, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="edgenode-build-") as tmp:
            app = Path(tmp) / "app"
            for name, text in source.files.items():
                target = app / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            (app / f"{ENTRY_MODULE}.py").write_text(_ENTRY)
            partial = Path(tmp) / "out.wasm"
            exe = Path(sys.executable).parent / "componentize-py"
            # The console script may be missing (a zipapp); its entry point is importable everywhere.
            launcher = "import sys; from componentize_py import script; sys.exit(script())"
            argv = [str(exe)] if exe.exists() else [sys.executable, "-c", launcher]
            argv += ["-q", "-d", str(WIT_DIR), "-w", WORLD, "componentize", "-p", str(app), "-p", str(GUEST_DIR),
                     ENTRY_MODULE, "-o", str(partial)]
            # A VIRTUAL_ENV would add the node's own site-packages to the guest's path.
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "VIRTUAL_ENV": tmp}
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=tmp, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:
                output, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise BuildFailed(f"build took longer than {self.timeout_s:.0f} s", output="") from None
            except asyncio.CancelledError:  # the node is stopping: leave no build behind
                proc.kill()
                raise
            self.builds += 1
            if proc.returncode != 0 or not partial.exists():
                message = _clean(output.decode(errors="replace"), tmp)
                raise BuildFailed("the Python worker failed to build", output=message)
            # Publish atomically: a concurrent reader sees the whole file or none.
            staged = out.with_suffix(f".tmp{os.getpid()}")
            shutil.move(str(partial), staged)
            os.replace(staged, out)
            log.info("built worker component", extra={"key": out.stem, "bytes": out.stat().st_size})


def _clean(output: str, tmp: str) -> str:
    """The compiler's message without our temp paths and site-packages noise, at most 8 KiB."""
    lines = [line for line in output.splitlines() if "site-packages directory not found" not in line]
    text = "\n".join(lines).replace(tmp + "/app/", "").replace(tmp, "<build>")
    return text[-8192:]
