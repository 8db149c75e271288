"""The HTTP layer: parse, call the capability, map errors to statuses. Nothing else."""

from __future__ import annotations

from edgenode.api.app import build_app

__all__ = ["build_app"]
