"""Python sources as deployments see them, and the one place componentize-py is called.

Python code is data for the shared runtime (``edgenode.isolates.python``), so a
deployment's files are only validated here. ``componentize`` builds a component
with componentize-py; the node uses it once per edgenode version, for the
runtime itself (and the benchmark for its per-program baseline).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgenode.errors import BuildFailed, PayloadTooLarge, ValidationFailed

log = logging.getLogger(__name__)

#: The WIT package every worker is built against.
WIT_DIR = Path(__file__).resolve().parent.parent / "wit"
#: The guest package bundled into every Python worker.
GUEST_DIR = Path(__file__).resolve().parent / "guest"
#: Module names a deployment may not define: the bindings, the guest package and the runtime.
RESERVED = ("wit_world", "edgenode_guest", "edgenode_runtime", "componentize_py_runtime", "componentize_py_types",
            "componentize_py_async_support", "poll_loop")
_SAFE_PART = re.compile(r"[A-Za-z0-9_.@+-][A-Za-z0-9_.@+ -]*")


def componentize_py_version() -> str:
    """The installed componentize-py version (part of every build key)."""
    try:
        return importlib.metadata.version("componentize-py")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def tree_digest(root: Path) -> str:
    """SHA-256 over every file under ``root`` (names and bytes), caches excluded."""
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
                    or not all(_SAFE_PART.fullmatch(p) for p in parts) or len(name) > 255):
                raise ValidationFailed(f"bad file path {name!r}", field="files")
            top = parts[0].removesuffix(".py")
            if top in RESERVED:
                raise ValidationFailed(f"{parts[0]!r} is reserved by the guest runtime", field="files")
            try:
                total += len(text.encode())
            except UnicodeEncodeError:
                raise ValidationFailed(f"{name!r} is not valid UTF-8 text (lone surrogate?)", field="files") from None
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


def componentize(app_dirs: list[Path], entry_module: str, world: str, out: Path, *, timeout_s: float,
                 started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> None:
    """Build ``entry_module`` (found in ``app_dirs``) into a component for ``world`` at ``out``.

    Runs componentize-py in a subprocess (a crash or a runaway build cannot take the caller down) with a
    clean environment, and publishes the file atomically. Raises BuildFailed with the compiler's message.
    ``started`` gets the build's process (so a stopping node can kill it).
    """
    with tempfile.TemporaryDirectory(prefix="edgenode-build-") as tmp:
        partial = Path(tmp) / "out.wasm"
        exe = Path(sys.executable).parent / "componentize-py"
        # The console script may be missing (a zipapp); its entry point is importable everywhere.
        launcher = "import sys; from componentize_py import script; sys.exit(script())"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-c", launcher]
        argv += ["-q", "-d", str(WIT_DIR), "-w", world, "componentize"]
        for directory in app_dirs:
            argv += ["-p", str(directory)]
        argv += [entry_module, "-o", str(partial)]
        # A VIRTUAL_ENV would add the node's own site-packages to the guest's path; PYTHONPATH
        # carries the node's own import path (a zipapp's bundled packages) to the launcher.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "VIRTUAL_ENV": tmp,
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BuildFailed(f"componentize-py could not be started: {exc}", output="") from None
        with proc:
            if started is not None:
                started(proc)
            try:
                output, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise BuildFailed(f"the build took longer than {timeout_s:.0f} s", output="") from None
        if proc.returncode < 0:
            raise BuildFailed(f"the build was stopped (signal {-proc.returncode})", output="")
        if proc.returncode != 0 or not partial.exists():
            message = _clean(output.decode(errors="replace"), tmp)
            raise BuildFailed("the component failed to build", output=message)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Publish atomically: a concurrent reader sees the whole file or none.
        staged = out.with_suffix(f".tmp{os.getpid()}")
        shutil.move(str(partial), staged)
        os.replace(staged, out)
        log.info("built a component", extra={"world": world, "file": out.name, "bytes": out.stat().st_size})


def _clean(output: str, tmp: str) -> str:
    """The compiler's message without our temp paths and site-packages noise, at most 8 KiB."""
    lines = [line for line in output.splitlines() if "site-packages directory not found" not in line]
    text = "\n".join(lines).replace(tmp + "/app/", "").replace(tmp, "<build>")
    return text[-8192:]
