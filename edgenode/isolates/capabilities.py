"""Host functions an isolate may call: kv, sql, fetch, env and log.

A guest sees only what its deployment grants (``Grants``). Each function runs
on the invocation's thread and finds its invocation in a thread-local, so one
linker serves every deployment. Host functions never let a Python exception
escape into wasmtime: expected failures come back to the guest as WIT
``result`` errors, and only a broken host (kv unavailable on ``get``) traps.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wasmtime import WasmtimeError
from wasmtime.component import Record, Variant

from edgenode.egress import AllowList, Egress
from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from wasmtime.component import LinkerInstance

log = logging.getLogger("edgenode.workers.guest")

#: Log lines kept per invocation, and the longest line.
MAX_LOG_LINES = 200
MAX_LOG_LINE = 4096
#: The WIT package version the host implements.
PACKAGE = "edgenode:guest"
VERSION = "0.1.0"


@dataclass(frozen=True)
class Grants:
    """What one deployment's isolates may reach."""

    tenant: str
    #: The state namespace for kv and sql ("worker.NAME"), or None: no kv or sql (one-off runs).
    namespace: str | None
    allowed_hosts: AllowList = AllowList()
    env: dict[str, str] = field(default_factory=dict)
    max_subrequests: int = 50
    max_fetch_bytes: int = 16 * 1024 * 1024


@dataclass
class Invocation:
    """Mutable per-request bookkeeping shared by the host functions."""

    grants: Grants
    worker: str
    deadline: float  # time.monotonic() by which the whole request must finish
    subrequests: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    dropped_logs: int = 0

    def remaining_s(self) -> float:
        """Wall time left for this request."""
        return max(0.0, self.deadline - time.monotonic())

    def add_log(self, level: str, message: str) -> None:
        """Keep one log line and pass it to the node's log, both bounded per request."""
        if len(self.logs) < MAX_LOG_LINES:
            self.logs.append({"level": level[:16], "message": message[:MAX_LOG_LINE]})
            log.info("guest log", extra={"worker": self.worker, "tenant": self.grants.tenant, "level": level[:16],
                                         "guest_message": message[:MAX_LOG_LINE]})
        else:
            self.dropped_logs += 1
            if self.dropped_logs == 1:  # one line says the rest is dropped, not one per line
                log.warning("guest log lines past the limit are dropped",
                            extra={"worker": self.worker, "tenant": self.grants.tenant, "limit": MAX_LOG_LINES})


_current = threading.local()


def current() -> Invocation:
    """The invocation running on this thread (a host function is only ever called inside one)."""
    invocation: Invocation | None = getattr(_current, "invocation", None)
    if invocation is None:
        raise WasmtimeError("edgenode: host function called outside an invocation")
    return invocation


class bound:
    """Context manager making ``invocation`` current on this thread."""

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation

    def __enter__(self) -> Invocation:
        _current.invocation = self.invocation
        return self.invocation

    def __exit__(self, *exc: object) -> None:
        _current.invocation = None


def _message(exc: BaseException) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, EdgenodeError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class HostFunctions:
    """The implementations behind the ``edgenode:guest`` imports.

    ``state`` returns the node's state capability (``node.state``), or None when
    this node has none; kv and sql then fail with a clear error.
    """

    def __init__(self, state: Callable[[], Any], *, fetch_timeout_s: float = 30.0,
                 egress: Egress | None = None) -> None:
        self.state = state
        self.fetch_timeout_s = fetch_timeout_s
        # Each tenant's fetches go through its own cookie-less client; redirects are the
        # guest's to follow, so each hop is checked against the allow-list like the first.
        self.egress = egress if egress is not None else Egress()

    def close(self) -> None:
        """Close the outbound HTTP clients."""
        self.egress.close()

    def define(self, root: LinkerInstance) -> None:
        """Add every import of the worker world to a linker's root instance."""
        with root.add_instance(f"{PACKAGE}/kv@{VERSION}") as kv:
            kv.add_func("get", self.kv_get)
            kv.add_func("put", self.kv_put)
            kv.add_func("delete", self.kv_delete)
            kv.add_func("list", self.kv_list)
        with root.add_instance(f"{PACKAGE}/sql@{VERSION}") as sql:
            sql.add_func("query", self.sql_query)
        with root.add_instance(f"{PACKAGE}/http@{VERSION}") as http:
            http.add_func("fetch", self.fetch)
        with root.add_instance(f"{PACKAGE}/env@{VERSION}") as env:
            env.add_func("vars", self.env_vars)
        with root.add_instance(f"{PACKAGE}/log@{VERSION}") as lg:
            lg.add_func("log", self.log)

    # -- kv and sql ----------------------------------------------------------

    def _namespace(self, what: str) -> tuple[Any, str, str]:
        invocation = current()
        ns = invocation.grants.namespace
        if ns is None:
            raise _Refused(f"{what} is not available to one-off runs (nothing is kept)")
        state = self.state()
        if state is None:
            raise _Refused(f"{what} is not available: this node has no state capability")
        return state, invocation.grants.tenant, ns

    def kv_get(self, store: Any, key: str) -> bytes | None:
        try:
            state, tenant, ns = self._namespace("kv")
            value = state.kv_get(tenant, ns, key)
            return None if value is None else bytes(value)
        except Exception as exc:  # a read that cannot answer must not pass for "missing"
            raise WasmtimeError(f"edgenode: kv.get failed: {_message(exc)}") from None

    def kv_put(self, store: Any, key: str, value: bytes) -> str | None:
        try:
            state, tenant, ns = self._namespace("kv")
            state.kv_put(tenant, ns, key, bytes(value))
            return None
        except Exception as exc:
            return _message(exc)

    def kv_delete(self, store: Any, key: str) -> str | None:
        try:
            state, tenant, ns = self._namespace("kv")
            state.kv_delete(tenant, ns, key)
            return None
        except Exception as exc:
            return _message(exc)

    def kv_list(self, store: Any, prefix: str) -> list[str] | str:
        try:
            state, tenant, ns = self._namespace("kv")
            return [str(k) for k in state.kv_list(tenant, ns, prefix)]
        except Exception as exc:
            return _message(exc)

    def sql_query(self, store: Any, statement: str, params: str) -> Variant:
        try:
            state, tenant, ns = self._namespace("sql")
            try:
                decoded = json.loads(params) if params else None
            except ValueError as exc:
                raise _Refused(f"params is not JSON: {exc}") from None
            if decoded is not None and not isinstance(decoded, (list, dict)):
                raise _Refused("params must be a JSON array or object")
            result = state.sql(tenant, ns, statement, decoded)
            return Variant("ok", json.dumps(result, separators=(",", ":"), default=_json_default))
        except Exception as exc:
            return Variant("err", _message(exc))

    # -- fetch ---------------------------------------------------------------

    def fetch(self, store: Any, req: Any) -> Any:
        try:
            return self._fetch(current(), req)
        except Exception as exc:
            return _message(exc)

    def _fetch(self, invocation: Invocation, req: Any) -> Any:
        grants = invocation.grants
        reason = grants.allowed_hosts.check(req.url)
        if reason is not None:
            raise _Refused(f"fetch denied: {reason}", code="fetch_denied")
        if invocation.subrequests >= grants.max_subrequests:
            raise _Refused(f"fetch denied: the limit of {grants.max_subrequests} subrequests per request is reached",
                           code="subrequest_limit")
        invocation.subrequests += 1
        until = min(time.monotonic() + self.fetch_timeout_s, invocation.deadline)
        if until <= time.monotonic():
            raise _Refused("fetch denied: the request's wall time is used up", code="wall_limit")
        reply = self.egress.exchange(grants.tenant, req.method, req.url, allow=grants.allowed_hosts, until=until,
                                     max_bytes=grants.max_fetch_bytes, headers=list(req.headers),
                                     body=bytes(req.body) or None)
        out: Any = Record()
        out.status = reply.status
        out.headers = reply.headers
        out.body = reply.body
        return out

    # -- env and log ---------------------------------------------------------

    def env_vars(self, store: Any) -> list[tuple[str, str]]:
        return list(current().grants.env.items())

    def log(self, store: Any, level: str, message: str) -> None:
        invocation: Invocation | None = getattr(_current, "invocation", None)
        if invocation is not None:
            invocation.add_log(level, message)


class _Refused(Exception):
    """A host function declines; the guest gets ``code: message`` as its error."""

    def __init__(self, message: str, *, code: str = "not_allowed") -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


def _json_default(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)
