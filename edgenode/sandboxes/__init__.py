"""Sandboxes: persistent Linux workspaces under bubblewrap, with exec, files, processes and egress."""

from __future__ import annotations

from edgenode.sandboxes.egress import EgressPolicy, parse_policy
from edgenode.sandboxes.execution import ExecResult, ExecSpec, Execution, LineSplitter, parse_exec
from edgenode.sandboxes.limits import Limits, resolve_limits
from edgenode.sandboxes.manager import Sandboxes
from edgenode.sandboxes.store import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "EgressPolicy",
    "ExecResult",
    "ExecSpec",
    "Execution",
    "LineSplitter",
    "Limits",
    "Sandboxes",
    "parse_exec",
    "parse_policy",
    "resolve_limits",
]
