"""The shared Python runtime: one pre-initialized interpreter for every worker, run and agent.

componentize-py imports this module at build time and snapshots the interpreter
after it, so everything imported here (the guest package, the agent SDK and a
broad part of the standard library) is already loaded in every instance. A
deployment's files are not part of the build: each fresh instance asks the host
for its program (``program.load``), installs it behind an import hook of its
own, and runs it. Nothing survives the instance, so module globals,
monkeypatched bindings and ``sys.modules`` tampering never reach the next
request or another tenant.
"""

from __future__ import annotations

import ast
import base64
import gc
import importlib.abc
import importlib.machinery
import json
import marshal
import os
import random
import sys
import types
from typing import Any

import edgenode_guest
import edgenode_guest.agent as agent_sdk
import wit_world
from componentize_py_types import Err
from edgenode_guest._worker import handle_with
from wit_world.imports import agent_host, program
from wit_world.imports.program import CompileError, ProgramFile
from wit_world.imports.types import GuestError

# Loaded once here, so user code finds them in the snapshot: an instance has no file system, so a
# standard-library module that is not imported before the snapshot cannot be imported at all.
_PRELOADED = (
    "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "collections.abc", "colorsys", "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "email", "email.message", "email.parser",
    "email.policy", "email.utils", "email.mime.text", "email.mime.multipart", "enum", "errno", "fnmatch",
    "fractions", "functools", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.entities", "html.parser", "http", "http.cookies", "inspect", "io", "ipaddress", "itertools", "json",
    "keyword", "locale", "logging", "math", "mimetypes", "numbers", "operator", "os", "pathlib", "pickle",
    "pkgutil", "importlib.util", "importlib.resources", "platform", "posixpath", "pprint", "quopri", "queue",
    "random", "re", "reprlib", "secrets", "shlex", "shutil",
    "stat", "statistics", "string", "stringprep", "struct", "tempfile", "textwrap", "time", "tokenize", "tomllib",
    "traceback", "types", "typing", "unicodedata", "urllib", "urllib.parse", "uuid", "warnings", "weakref",
    "xml", "xml.dom", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xml.sax.saxutils", "zipfile",
    "zlib", "zoneinfo",
    "encodings.ascii", "encodings.base64_codec", "encodings.cp1252", "encodings.cp437", "encodings.hex_codec",
    "encodings.idna", "encodings.latin_1", "encodings.punycode", "encodings.raw_unicode_escape",
    "encodings.unicode_escape", "encodings.utf_16", "encodings.utf_16_be", "encodings.utf_16_le",
    "encodings.utf_32", "encodings.utf_8", "encodings.utf_8_sig",
)
for _name in _PRELOADED:
    try:
        __import__(_name)
    except ImportError:  # a module this CPython build lacks is simply not preloaded
        pass

#: Module names a program may not define: the runtime's own and the bindings'.
RESERVED = frozenset({"wit_world", "edgenode_guest", "edgenode_runtime", "componentize_py_runtime",
                      "componentize_py_types", "componentize_py_async_support", "poll_loop"})


def _module_name(path: str) -> tuple[str, bool] | None:
    """The module a ``.py`` path defines and whether it is a package; None for other files."""
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


class _Program(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The deployment's modules, importable by name, and its other files through ``get_data``."""

    def __init__(self, files: list[list[Any]]) -> None:
        # name -> (path, is a package, (compiled, content) or None for a namespace package)
        self.modules: dict[str, tuple[str, bool, tuple[bool, str] | None]] = {}
        self.data: dict[str, str] = {}
        packages: set[str] = set()
        for path, compiled, content in files:
            found = _module_name(path)
            if found is None:
                self.data[path] = content
                continue
            name, is_package = found
            self.modules[name] = (path, is_package, (compiled, content))
            parts = name.split(".")
            packages.update(".".join(parts[:i]) for i in range(1, len(parts)))
        # Folders without __init__.py are namespace packages, as on disk.
        for name in packages - set(self.modules):
            self.modules[name] = (name.replace(".", "/"), True, None)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        found = self.modules.get(fullname)
        if found is None:
            return None
        origin, is_package, _ = found
        spec = importlib.machinery.ModuleSpec(fullname, self, origin="/app/" + origin, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = ["/app/" + origin.rsplit("/", 1)[0] if origin.endswith(".py")
                                               else "/app/" + origin]
        spec.has_location = True
        return spec

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        path, _, found = self.modules[module.__name__]
        if found is None:
            return
        compiled, content = found
        code = marshal.loads(base64.b64decode(content)) if compiled else compile(
            content, "/app/" + path, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_data(self, path: str) -> bytes:
        """A file of the program by its ``/app/...`` path (for ``pkgutil.get_data``)."""
        relative = path.removeprefix("/app/")
        if relative in self.data:
            return self.data[relative].encode("utf-8")
        module = _module_name(relative)
        found = self.modules.get(module[0]) if module is not None else None
        if found is not None and found[2] is not None and not found[2][0]:
            return found[2][1].encode("utf-8")
        raise FileNotFoundError(path)


def _boot() -> types.ModuleType:
    """Install this instance's program and run its entry module."""
    # The snapshot fixed the generator's state: every instance must draw differently. (An int
    # seed is used as is; a bytes seed would be hashed first, which costs each request more.)
    random.seed(int.from_bytes(os.urandom(16), "little"))
    info = json.loads(program.load())
    finder = _Program(info["files"])
    sys.meta_path.insert(0, finder)
    entry = _module_name(info["entry"])
    if entry is None:
        raise ImportError(f"the entry file {info['entry']!r} is not a Python file")
    name = entry[0]
    if "." in name or finder.modules[name][1]:  # an entry inside a package: let the import system do it
        return __import__(name, fromlist=["_"])
    # A top-level entry module is made directly: the import machinery's bookkeeping is what a
    # fresh instance pays for most, page by page.
    module = types.ModuleType(name)
    module.__spec__ = finder.find_spec(name)
    module.__file__ = module.__spec__.origin
    module.__loader__ = finder
    sys.modules[name] = module
    try:
        finder.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _syntax_error(exc: SyntaxError, path: str) -> CompileError:
    return CompileError(path, max(0, exc.lineno or 0), max(0, exc.offset or 0), f"{type(exc).__name__}: {exc.msg}")


def _defines(tree: ast.Module, names: tuple[str, ...]) -> bool:
    """Whether a module's top level may bind one of ``names`` (any star import counts)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name).split(".")[0] in names:
                    return True
        targets: list[Any] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        if any(isinstance(n, ast.Name) and n.id in names for t in targets for n in ast.walk(t)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
                                 ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)):
            return True  # an if/try/with/for at top level may bind anything: trust it
    return False


def _missing_import(tree: ast.Module, local: set[str]) -> tuple[int, int, str] | None:
    """The first unconditional top-level import that neither the program nor the runtime provides."""
    import importlib.util

    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in local or name in local:
                continue
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return node.lineno, node.col_offset + 1, name
    return None


_ENTRY_NAMES = {"worker": ("handle", "main"), "agent": ("run", "Agent")}


class WitWorld(wit_world.WitWorld):  # type: ignore[misc]
    """The exports of the python world: compile, handle (workers, runs) and run (agents)."""

    """The exports of the python world: compile, handle (workers, runs) and run (agents)."""

    def compile(self, files: list[Any], entry: str, kind: str) -> list[Any]:
        out = []
        local = {found[0] for f in files if (found := _module_name(f.path)) is not None}
        local |= {name.split(".")[0] for name in local}
        for f in files:
            found = _module_name(f.path)
            if found is None:
                out.append(f)
                continue
            if found[0].split(".")[0] in RESERVED:
                raise Err(CompileError(f.path, 0, 0, f"{found[0].split('.')[0]!r} is reserved by the runtime"))
            try:
                tree = ast.parse(f.content, "/app/" + f.path)
                code = compile(tree, "/app/" + f.path, "exec", dont_inherit=True)
            except SyntaxError as exc:
                raise Err(_syntax_error(exc, f.path)) from None
            except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
                raise Err(CompileError(f.path, 0, 0, f"{type(exc).__name__}: {exc}")) from None
            missing = _missing_import(tree, local)
            if missing is not None:
                line, column, name = missing
                raise Err(CompileError(f.path, line, column, f"ModuleNotFoundError: no module named {name!r} in the "
                                       "program or the runtime (ship pure-Python packages with your files)"))
            names = _ENTRY_NAMES.get(kind)
            if f.path == entry and names is not None and not _defines(tree, names):
                raise Err(CompileError(f.path, 0, 0, f"{entry} must define {' or '.join(n + '(...)' for n in names)}"))
            out.append(ProgramFile(f.path, True, base64.b64encode(marshal.dumps(code)).decode("ascii")))
        return out

    def handle(self, req: Any) -> Any:
        try:
            main = _boot()
        except SyntaxError as exc:
            where = f"{(exc.filename or '').removeprefix('/app/')}:{exc.lineno or 0}:{exc.offset or 0}"
            raise Err(GuestError("syntax_error", f"{where}: {type(exc).__name__}: {exc.msg}")) from None
        except MemoryError:
            raise Err(GuestError("out_of_memory", "MemoryError: the isolate ran out of memory")) from None
        except BaseException as exc:
            import traceback
            raise Err(GuestError("exception", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=20)}")) \
                from None
        handler = getattr(main, "handle", None)
        if not callable(handler):
            entry = getattr(main, "main", None)
            if not callable(entry):
                raise Err(GuestError("exception", "TypeError: main.py must define handle(request) "
                                                  "(or main(input) for one-off runs)"))

            def handler(request: Any) -> Any:
                result = entry(request.json() if request.body else None)
                # A one-off run's answer is any JSON value; a Response, text or bytes pass through.
                if isinstance(result, (edgenode_guest.Response, str, bytes, bytearray)):
                    return result
                return edgenode_guest.Response.json(result)

        return handle_with(handler, req)

    def run(self, input: str) -> str:
        def call(kind: str, name: str, request: Any) -> Any:
            return json.loads(agent_host.call(kind, name, json.dumps(request)))

        try:
            main = _boot()
            entry = agent_sdk.entry_point(main)
        except Exception as exc:
            import traceback
            return json.dumps({"status": "failed", "error": {"type": type(exc).__name__, "message": str(exc),
                                                             "traceback": traceback.format_exc(limit=12)}})
        return json.dumps(agent_sdk.execute(entry, call, json.loads(input)))


# A collection now, so the first one does not fall inside a request, and everything made so far is
# left out of every later one (an instance never frees the snapshot's objects anyway).
gc.collect()
gc.freeze()

__all__ = ["WitWorld", "edgenode_guest"]
