"""Host bindings: kv, sql, fetch, env and log, over the ``edgenode:guest`` imports.

componentize-py snapshots the interpreter after importing the app, so every
binding module must be imported here, at the top; a world that lacks one of
the imports (a future agent world, say) simply gets None for it and a
HostError if the guest calls it.
"""

from __future__ import annotations

import importlib
import json as _json
from types import ModuleType
from typing import Any

from componentize_py_types import Err

from edgenode_guest._http import Response


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_kv = _import("wit_world.imports.kv")
_sql = _import("wit_world.imports.sql")
_http = _import("wit_world.imports.http")
_env = _import("wit_world.imports.env")
_log = _import("wit_world.imports.log")
_types = _import("wit_world.imports.types")


def _require(module: ModuleType | None, name: str) -> Any:
    if module is None:
        raise HostError(f"{name} is not available in this world")
    return module


class HostError(Exception):
    """The host refused or failed an operation (not allowed, limit reached, storage error)."""


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Err as exc:
        raise HostError(str(exc.value)) from None


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"kv values are str or bytes, not {type(value).__name__}")


class _Kv:
    """Key-value storage of this deployment (values are bytes; str is stored as UTF-8)."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key`` as bytes, or None."""
        value: bytes | None = _require(_kv, "kv").get(key)
        return value

    def get_text(self, key: str, default: str | None = None) -> str | None:
        """The value of ``key`` decoded as UTF-8, or ``default``."""
        value = self.get(key)
        return default if value is None else value.decode("utf-8")

    def get_json(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` parsed as JSON, or ``default``."""
        value = self.get(key)
        return default if value is None else _json.loads(value)

    def put(self, key: str, value: bytes | str) -> None:
        """Store ``value`` (str or bytes) under ``key``."""
        _call(_require(_kv, "kv").put, key, _bytes(value))

    def put_json(self, key: str, value: Any) -> None:
        """Store ``value`` as JSON."""
        self.put(key, _json.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""
        _call(_require(_kv, "kv").delete, key)

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        return list(_call(_require(_kv, "kv").list, prefix))


kv = _Kv()


def sql(query: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
    """Run one SQL statement in this deployment's database: ``{"columns": [...], "rows": [[...]]}``."""
    return _json.loads(_call(_require(_sql, "sql").query, query, _json.dumps(params if params is not None else [])))


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: bytes | str | dict[str, Any] | list[Any] | None = None) -> Response:
    """An outbound HTTP request to an allowed host; returns a Response (any status)."""
    http = _require(_http, "fetch")
    if isinstance(body, (dict, list)):
        body = _json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json", **(headers or {})}
    data = b"" if body is None else _bytes(body)
    pairs = [(str(k).lower(), str(v)) for k, v in (headers or {}).items()]
    result = _call(http.fetch, _require(_types, "fetch").OutgoingRequest(method.upper(), url, pairs, data))
    return Response(result.body, result.status, dict(result.headers))


class _Env(dict[str, str]):
    """The deployment's variables and secrets, loaded from the host on first use."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self.update(_require(_env, "env").vars())
            self._loaded = True

    def __getitem__(self, key: str) -> str:
        self._load()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self) -> Any:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def keys(self) -> Any:
        self._load()
        return super().keys()

    def items(self) -> Any:
        self._load()
        return super().items()

    def values(self) -> Any:
        self._load()
        return super().values()


env = _Env()


def log(message: object, level: str = "info") -> None:
    """Write a log line (levels: debug, info, warning, error)."""
    _require(_log, "log").log(str(level), str(message))
