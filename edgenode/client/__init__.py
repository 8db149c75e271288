"""The Python SDK for an edgenode node, blocking (``Client``) and async (``AsyncClient``), on httpx.

::

    from edgenode.client import Client

    with Client("http://127.0.0.1:8787", token) as client:
        print(client.run("def main(input):\n    return input * 2", input=21).json)   # 42

Every failure the node reports raises the exception for its code (``edgenode.client.errors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgenode.client import errors
from edgenode.client._sync import KV, Client, Process, Run, Sandbox
from edgenode.client.errors import (
    BadRequest,
    BuildFailed,
    Conflict,
    CpuLimitExceeded,
    EdgenodeClientError,
    Forbidden,
    GuestException,
    NodeTimeout,
    NodeUnreachable,
    NotFound,
    Overloaded,
    Unauthorized,
    ValidationFailed,
)
from edgenode.client.results import ExecEvent, ExecResult, RunEvent, RunResult, SqlResult

if TYPE_CHECKING:
    from edgenode.client._async import AsyncClient, AsyncRun, AsyncSandbox

_ASYNC = ("AsyncClient", "AsyncRun", "AsyncSandbox")


def __getattr__(name: str) -> Any:
    # The async client is imported on first use: the command line (a short process) never needs it.
    if name in _ASYNC:
        from edgenode.client import _async

        return getattr(_async, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "KV",
    "AsyncClient",
    "AsyncRun",
    "AsyncSandbox",
    "BadRequest",
    "BuildFailed",
    "Client",
    "Conflict",
    "CpuLimitExceeded",
    "EdgenodeClientError",
    "ExecEvent",
    "ExecResult",
    "Forbidden",
    "GuestException",
    "NodeTimeout",
    "NodeUnreachable",
    "NotFound",
    "Overloaded",
    "Process",
    "Run",
    "RunEvent",
    "RunResult",
    "Sandbox",
    "SqlResult",
    "Unauthorized",
    "ValidationFailed",
    "errors",
]
