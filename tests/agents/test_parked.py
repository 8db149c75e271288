"""A thousand runs parked on approvals hold no threads, and all resume after a restart."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from edgenode.auth import Principal
from edgenode.config import Config
from edgenode.node import Node

PARKED = "def run(ctx, input):\n    return ctx.approval('go?', input).approved\n"
COUNT = 1000


def make(data: Path) -> Node:
    node = Node(Config.load(env={}, overrides={"data_dir": data, "agents.runner": "inprocess",
                                               "agents.scheduler_interval_s": 0.02}))
    node.started_at = time.time()  # only the agents capability is started here
    return node


async def until(agents: object, status: str, count: int) -> None:
    db = agents.db  # type: ignore[attr-defined]
    for _ in range(6000):
        n = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (status,)).fetchone()[0])
        if n == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} runs never reached {status}")


def test_thousand_parked_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = make(tmp_path / "data")
        agents = node.agents
        await agents.start()
        await agents.deploy("default", "parked", {"main.py": PARKED})
        threads = threading.active_count()
        for i in range(COUNT):
            await agents.start_run("default", "parked", i, run_id=f"p{i}")
        await until(agents, "waiting", COUNT)
        assert not agents.active
        # Threads are bounded by the activation pool (and the loop's helpers), not by parked runs.
        pool = [t for t in threading.enumerate() if t.name.startswith("agent")]
        assert len(pool) <= agents.settings.max_active_runs
        assert threading.active_count() - threads <= agents.settings.max_active_runs + 4
        await agents.stop()

        node = make(tmp_path / "data")
        agents = node.agents
        await agents.start()
        from edgenode.agents import controls

        for i in range(COUNT):
            await controls.decide(agents, Principal("default"), f"p{i}", i % 2 == 0)
        await until(agents, "completed", COUNT)
        outputs = await agents.db.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM runs WHERE output = 'true'").fetchone()[0])
        assert outputs == COUNT // 2
        await agents.stop()

    asyncio.run(scenario())
