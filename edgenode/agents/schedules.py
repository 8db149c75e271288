"""Cron schedules that start agent runs.

A schedule is a row with its next firing time. Each firing starts a run whose id
is derived from the schedule and the slot, in the same transaction that advances
``next_at``, so a slot starts exactly one run even across crashes. Slots missed
while the node was down fire once, late, then the schedule moves to the next
future slot.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from croniter import croniter

from edgenode.agents.store import dumps, loads
from edgenode.errors import AgentNotFound, NotFound, PayloadTooLarge, ValidationFailed

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

log = logging.getLogger(__name__)


def next_slot(cron: str, after: float) -> float:
    """The first time strictly after ``after`` that ``cron`` (UTC) names."""
    base = datetime.fromtimestamp(after, UTC)
    return float(croniter(cron, base).get_next(float))


def validate_cron(cron: Any) -> str:
    """A five-field cron expression, else ValidationFailed."""
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValidationFailed("cron must be a five-field cron expression such as '*/5 * * * *'", field="cron")
    return cron


class Schedules:
    """Create, list, delete and fire cron schedules."""

    def __init__(self, engine: Agents) -> None:
        self.engine = engine

    async def create(self, tenant: str, name: str, agent: str, cron: Any, input: Any = None) -> dict[str, Any]:
        """Create or replace the schedule ``name``."""
        from edgenode.agents.engine import validate_name

        validate_name(name)
        validate_name(agent, "agent")
        validate_cron(cron)
        text = dumps(input)
        if len(text) > self.engine.settings.max_event_bytes:
            raise PayloadTooLarge("schedule input is too large", limit=self.engine.settings.max_event_bytes)
        now = self.engine.now()
        next_at = next_slot(cron, now)

        def txn(conn: sqlite3.Connection) -> dict[str, Any]:
            if conn.execute("SELECT 1 FROM agents WHERE tenant = ? AND name = ?", (tenant, agent)).fetchone() is None:
                raise AgentNotFound(f"no agent named {agent!r}")
            conn.execute(
                "INSERT INTO schedules (tenant, name, agent, cron, input, next_at, created_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, name) DO UPDATE SET agent = excluded.agent, "
                "cron = excluded.cron, input = excluded.input, next_at = excluded.next_at",
                (tenant, name, agent, cron, text, next_at, now))
            return {"name": name, "agent": agent, "cron": cron, "input": input, "next_at": next_at}

        return await self.engine.db.write(txn)

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's schedules."""
        return await self.engine.db.read(lambda c: [
            {"name": r["name"], "agent": r["agent"], "cron": r["cron"], "input": loads(r["input"]),
             "next_at": r["next_at"], "last_run_id": r["last_run_id"]}
            for r in c.execute("SELECT * FROM schedules WHERE tenant = ? ORDER BY name", (tenant,))])

    async def delete(self, tenant: str, name: str) -> None:
        """Remove a schedule; runs it started go on."""
        deleted = await self.engine.db.write(lambda c: c.execute(
            "DELETE FROM schedules WHERE tenant = ? AND name = ?", (tenant, name)).rowcount)
        if not deleted:
            raise NotFound(f"no schedule named {name!r}")

    async def fire_due(self, now: float) -> int:
        """Start one run for each schedule whose slot has come; how many started."""
        engine = self.engine

        def txn(conn: sqlite3.Connection) -> int:
            fired = 0
            for row in conn.execute("SELECT * FROM schedules WHERE next_at <= ? LIMIT 100", (now,)).fetchall():
                run_id = f"{row['tenant']}.{row['name']}.{int(row['next_at'])}"
                try:
                    engine.create_run_txn(conn, tenant=row["tenant"], agent=row["agent"], input=loads(row["input"]),
                                          run_id=run_id, schedule=row["name"])
                except AgentNotFound:
                    log.warning("schedule's agent is gone", extra={"schedule": row["name"]})
                conn.execute("UPDATE schedules SET next_at = ?, last_run_id = ? WHERE tenant = ? AND name = ?",
                             (next_slot(row["cron"], now), run_id, row["tenant"], row["name"]))
                fired += 1
            return fired

        fired: int = await engine.db.write(txn)
        return fired
