"""What the client's calls return: small typed views over the node's JSON replies.

Each keeps the full reply as ``raw`` for fields the view does not name.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

#: Run statuses after which nothing more happens.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "terminated"})


@dataclass(frozen=True)
class RunResult:
    """The reply of a one-off run (``client.run``): the guest's response, its logs and usage."""

    status: int
    headers: dict[str, str]
    body: str | None
    json: Any
    logs: list[Any]
    output: str
    usage: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def content(self) -> bytes:
        """The response body as bytes (also when it was not text)."""
        if self.body is not None:
            return self.body.encode()
        return base64.b64decode(self.raw.get("body_b64") or "")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """The view of a ``POST /v1/run`` reply."""
        return cls(status=data["status"], headers=data.get("headers") or {}, body=data.get("body"),
                   json=data.get("json"), logs=data.get("logs") or [], output=data.get("output") or "",
                   usage=data.get("usage") or {}, raw=data)


@dataclass(frozen=True)
class ExecResult:
    """A finished command in a sandbox."""

    exit_code: int | None
    stdout: str
    stderr: str
    signal: int | None
    duration_ms: float
    timed_out: bool
    raw: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the command exited with status 0."""
        return self.exit_code == 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        """The view of an exec reply (or of a streamed ``exit`` event)."""
        return cls(exit_code=data.get("exit_code"), stdout=data.get("stdout", ""), stderr=data.get("stderr", ""),
                   signal=data.get("signal"), duration_ms=float(data.get("duration_ms") or 0.0),
                   timed_out=bool(data.get("timed_out")), raw=data)


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed exec: a ``stdout`` or ``stderr`` line, or the final ``exit`` with the result."""

    kind: str
    line: str = ""
    partial: bool = False
    result: ExecResult | None = None


@dataclass(frozen=True)
class SqlResult:
    """The outcome of one SQL statement."""

    columns: list[str]
    rows: list[list[Any]]
    rows_affected: int
    raw: dict[str, Any] = field(repr=False)

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dictionaries."""
        return [dict(zip(self.columns, row, strict=False)) for row in self.rows]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SqlResult:
        """The view of a ``POST /v1/sql/{ns}`` reply."""
        return cls(columns=data.get("columns") or [], rows=data.get("rows") or [],
                   rows_affected=int(data.get("rows_affected") or 0), raw=data)


@dataclass(frozen=True)
class RunEvent:
    """Something that happened in an agent run: a journal entry appearing or changing, or a new status."""

    kind: str  # "journal", "status", "delta" (model reply text as it streams) or "end"
    data: dict[str, Any]
    #: The stream's event id (resume after it with ``Run.events(after=...)``).
    id: str = ""
