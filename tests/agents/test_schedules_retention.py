"""Cron schedules fire once per slot (clock injected); finished runs' journals are pruned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edgenode.auth import Principal
from edgenode.config import Config
from edgenode.node import Node
from tests.agents.helpers import FAST, deploy, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for


def test_schedule_fires_once_per_slot(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = Config.load(env={}, overrides={"data_dir": tmp_path / "data", "agents.runner": "process"})
        node = Node(config)
        agents = node.agents
        clock = [1_800_000_000.0]  # 2027-01-15 08:00:00 UTC
        agents.now = lambda: clock[0]
        await agents.start()
        try:
            await agents.deploy("t1", "nightly", {"main.py": "def run(ctx, input):\n    return input\n"})
            made = await agents.schedules.create("t1", "every-hour", "nightly", "0 * * * *", {"n": 1})
            assert made["next_at"] == 1_800_003_600.0
            assert await agents.schedules.fire_due(clock[0]) == 0
            clock[0] = 1_800_003_600.0 + 5
            assert await agents.schedules.fire_due(clock[0]) == 1
            # The same slot never starts a second run, even if the scheduler ticks again.
            assert await agents.schedules.fire_due(clock[0]) == 0
            runs = await agents.list_runs("t1")
            assert [(r["id"], r["schedule"], r["input"]) for r in runs] == [
                ("t1.every-hour.1800003600", "every-hour", {"n": 1})]
            # Down for three hours: the missed slots fire once, late, then the next future slot.
            clock[0] = 1_800_003_600.0 + 3 * 3600 + 60
            assert await agents.schedules.fire_due(clock[0]) == 1
            [schedule] = await agents.schedules.list("t1")
            assert schedule["next_at"] == 1_800_003_600.0 + 4 * 3600
            assert len(await agents.list_runs("t1")) == 2
        finally:
            await agents.stop()

    asyncio.run(scenario())


def test_prune_keeps_unfinished_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = Config.load(env={}, overrides={"data_dir": tmp_path / "data", "agents.runner": "process"})
        node = Node(config)
        agents = node.agents
        clock = [1_800_000_000.0]
        agents.now = lambda: clock[0]
        await agents.start()
        try:
            await agents.deploy("t1", "a", {"main.py": "def run(ctx, input):\n    return 1\n"})
            done, _ = await agents.start_run("t1", "a", run_id="done")
            live, _ = await agents.start_run("t1", "a", run_id="live")
            await agents.db.write(lambda c: [c.execute(
                "INSERT INTO journal (run_id, position, kind, name, request, result, status, created_at, "
                "updated_at) VALUES (?, 0, 'now', 'now', '{}', '1', 'ok', 0, 0)", (key,))
                for key in ("t1/done", "t1/live")])
            await agents.db.write(lambda c: c.execute(
                "UPDATE runs SET status = 'completed', finished_at = ? WHERE key = 't1/done'", (clock[0],)))
            assert await agents.prune(clock[0] + 86_400) == 0  # within the 7-day retention
            assert await agents.prune(clock[0] + 8 * 86_400) == 1
            who = Principal("t1")
            assert (await agents.history(who, "done"))["journal"] == []
            assert (await agents.get_run(who, "done"))["journal_pruned"] is True
            assert len((await agents.history(who, "live"))["journal"]) == 1
        finally:
            await agents.stop()

    asyncio.run(scenario())


def test_retention_prunes_finished_runs_on_a_node(make_node: Callable[..., NodeProcess]) -> None:
    node = make_node(env={**FAST, "EDGENODE_AGENTS_RETENTION_DAYS": "0.00001",
                          "EDGENODE_AGENTS_PRUNE_INTERVAL_S": "0.2"})
    with node.client() as c:
        deploy(c, "brief", """
            def run(ctx, input):
                ctx.now()
                if input == "wait":
                    ctx.wait_for_event("never")
                return "ok"
        """)
        waiting = start(c, "brief", "wait")
        finished = start(c, "brief", "go")
        wait_status(c, finished["id"], "completed")
        wait_for(lambda: run_of(c, finished["id"])["journal_pruned"], message="journal pruned")
        assert journal(c, finished["id"]) == []
        assert run_of(c, finished["id"])["output"] == "ok"  # the outcome outlives the journal
        wait_status(c, waiting["id"], "waiting")
        assert [e["kind"] for e in journal(c, waiting["id"])] == ["now", "event"]
