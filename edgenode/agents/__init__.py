"""Durable agents: a journal in SQLite, deterministic replay, a scheduler, a model gateway."""

from __future__ import annotations

from edgenode.agents.engine import Agents
from edgenode.agents.models import ModelGateway, parse_spec
from edgenode.agents.store import MIGRATIONS, TERMINAL

__all__ = ["MIGRATIONS", "TERMINAL", "Agents", "ModelGateway", "parse_spec"]
