"""The Python SDK for an edgenode node, blocking (``Client``) and async (``AsyncClient``), on httpx.

::

    from edgenode.client import Client

    with Client("http://127.0.0.1:8787", token) as client:
        print(client.run("def main(input):\n    return input * 2", input=21).json)   # 42

Every failure the node reports raises the exception for its code (``edgenode.client.errors``).
"""

from __future__ import annotations

from edgenode.client import errors
from edgenode.client._async import AsyncClient, AsyncRun, AsyncSandbox
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
