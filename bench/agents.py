"""Durable agents: journaled step cost, runs per second, parked runs, resume after restart, time to first token.

Baselines measured in the same run: a plain SQLite insert-and-commit per step with the
same pragmas (WAL, synchronous=FULL: the floor of any durable step), and DBOS Transact
on SQLite with WAL doing the same empty steps, when the ``dbos`` package is installed.
The engine runs agents with the in-process runner here, so the figures are the
journal's own cost; ``--runner process`` adds a fresh interpreter per activation.

Time to first token: an OpenAI-compatible stand-in model server on loopback streams a
reply; measured straight from it (an HTTP client reading the stream) and through a node
process (an agent's model call, from sending the event that wakes the run to the first
token delta on the run's event stream), median of ``--ttft-rounds`` each, in the same run.

    python bench/agents.py [--steps 300] [--runs 50] [--parked 1000] [--runner inprocess] [--ttft-rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgenode.config import Config
from edgenode.node import Node

ROUNDS = 3
#: Commits that warm the baseline's file: past SQLite's 1000-page auto-checkpoint, so its WAL is
#: reused in place like the engine's long-lived one, not grown (a metadata flush per commit).
WARMUP_COMMITS = 1200

STEPS_AGENT = """
def run(ctx, input):
    for i in range(input):
        ctx.step("s%d" % i, lambda: None)
    return input
"""

PARKED_AGENT = """
def run(ctx, input):
    decision = ctx.approval("go?")
    return decision.approved
"""


def rss_kib() -> int:
    """Resident memory of this process, in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def make_node(data: Path, runner: str) -> Node:
    config = Config.load(env={}, overrides={
        "data_dir": data, "agents.runner": runner, "agents.scheduler_interval_s": 0.01,
        "agents.prune_interval_s": 3600.0})
    node = Node(config)
    node.started_at = time.time()  # only the agents capability runs here
    return node


async def wait_all(agents: Any, status: str, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = await agents.db.read(lambda c: c.execute("SELECT COUNT(*) FROM runs WHERE status = ?",
                                                     (status,)).fetchone()[0])
        if n >= count:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"runs did not reach {status}")


async def engine_figures(data: Path, runner: str, steps: int, runs: int, parked: int) -> dict[str, float]:
    out: dict[str, float] = {}
    node = make_node(data / "node", runner)
    agents = node.agents
    await agents.start()
    await agents.deploy("default", "steps", {"main.py": STEPS_AGENT})
    await agents.deploy("default", "parked", {"main.py": PARKED_AGENT})
    # Runs of N empty steps, one at a time; engine timestamps, so polling does not count. The disk
    # of a shared machine is noisy: each figure is the median of ROUNDS, interleaved with the baseline.
    per_step, plain = [], []
    for i in range(ROUNDS):
        await agents.start_run("default", "steps", steps, run_id=f"one-{i}")
        await wait_all(agents, "completed", i + 1)
        row = await agents.db.read(lambda c, run_id=f"one-{i}": c.execute(
            "SELECT created_at, finished_at FROM runs WHERE id = ?", (run_id,)).fetchone())
        per_step.append((row[1] - row[0]) / steps * 1000)
        plain.append(sqlite_baseline(data, steps))
    out["step_ms"] = statistics.median(per_step)
    out["plain_ms"] = statistics.median(plain)
    # Many runs of 10 steps at once.
    t0 = time.perf_counter()
    for i in range(runs):
        await agents.start_run("default", "steps", 10, run_id=f"many-{i}")
    await wait_all(agents, "completed", runs + ROUNDS)
    out["runs_per_s"] = runs / (time.perf_counter() - t0)
    # Parked runs: each waits for an approval and holds nothing but rows.
    base_threads = threading.active_count()
    base_rss = rss_kib()
    size_before = db_bytes(agents.db.path)
    for i in range(parked):
        await agents.start_run("default", "parked", None, run_id=f"park-{i}")
    await wait_all(agents, "waiting", parked)
    await asyncio.sleep(0.2)
    out["parked_threads_added"] = threading.active_count() - base_threads
    out["parked_rss_kib_per_run"] = max(0, rss_kib() - base_rss) / max(parked, 1)
    await agents.stop()
    out["parked_db_bytes_per_run"] = (db_bytes(agents.db.path) - size_before) / max(parked, 1)
    # Approve all while the node is down, then time the restart until every run has finished.
    con = sqlite3.connect(agents.db.path)
    with con:
        now = time.time()
        con.execute("INSERT INTO events (run_id, type, payload, sender, created_at) SELECT key, 'edgenode.approval', "
                    "'{\"approved\": true}', 'bench', ? FROM runs WHERE status = 'waiting'", (now,))
        con.execute("UPDATE runs SET status = 'pending', wake_at = ? WHERE status = 'waiting'", (now,))
    con.close()
    node2 = make_node(data / "node", runner)
    t0 = time.perf_counter()
    await node2.agents.start()
    await wait_all(node2.agents, "completed", runs + ROUNDS + parked)
    out["resume_all_s"] = time.perf_counter() - t0
    await node2.agents.stop()
    return out


TALKER_AGENT = """
def run(ctx, input):
    ctx.wait_for_event("go")
    return ctx.model("local:bench").chat([{"role": "user", "content": "say something"}]).text
"""


def ttft_figures(runner: str, rounds: int) -> dict[str, float]:
    """Median seconds to the first token: straight from the stand-in, and through a node's run event stream."""
    import httpx

    from edgenode.client import Client
    from tests.agents.model_servers import ModelServer
    from tests.support import NodeProcess

    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "say something"}]}
    direct, through = [], []
    with ModelServer() as models, tempfile.TemporaryDirectory(prefix="edgenode-bench-ttft-") as tmp:
        for _ in range(rounds):
            with httpx.Client() as http:
                t0 = time.perf_counter()
                with http.stream("POST", f"{models.url}/compat/v1/chat/completions", json=body) as response:
                    for line in response.iter_lines():
                        if '"content": "' in line and '"content": ""' not in line:
                            direct.append(time.perf_counter() - t0)
                            break
        env = {"EDGENODE_AGENTS_RUNNER": runner, "EDGENODE_AGENTS_SCHEDULER_INTERVAL_S": "0.05",
               "EDGENODE_AGENTS_MODEL_ENDPOINTS": f"local={models.url}/compat/v1"}
        node = NodeProcess(Path(tmp), env=env).start()
        try:
            with Client(node.url, node.admin_token) as sdk:
                sdk.agents.deploy("talker", {"main.py": TALKER_AGENT})
                for i in range(rounds + 1):  # the first round warms the model client's import
                    run = sdk.agents.start("talker")
                    sent: float | None = None
                    first: float | None = None
                    for event in run.events(timeout=120):
                        if event.kind == "status" and event.data["status"] == "waiting" and sent is None:
                            sent = time.perf_counter()
                            run.send_event("go")
                        elif event.kind == "delta" and sent is not None and first is None:
                            first = time.perf_counter()
                    if i and sent is not None and first is not None:
                        through.append(first - sent)
        finally:
            node.stop()
    return {"direct_s": statistics.median(direct), "node_s": statistics.median(through)}


def db_bytes(path: Path) -> int:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "-wal"))


def sqlite_baseline(data: Path, steps: int) -> float:
    """ms per plain durable insert: WAL, synchronous=FULL, one commit per row.

    The file is reused across rounds and warmed first, as the engine's database is: a WAL
    that must grow on every commit costs a metadata flush each time and would flatter the engine.
    """
    path = data / "baseline.db"
    fresh = not path.exists()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    if fresh:
        con.execute("CREATE TABLE t (run TEXT, position INTEGER, result TEXT, PRIMARY KEY (run, position))")
    run = f"r{time.perf_counter_ns()}"

    def insert(i: int) -> None:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?, ?, 'null')", (run, i))
        con.execute("COMMIT")

    if fresh:
        for i in range(WARMUP_COMMITS):
            insert(-1 - i)
    t0 = time.perf_counter()
    for i in range(steps):
        insert(i)
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed / steps * 1000


def dbos_baseline(data: Path, steps: int) -> float | None:
    """ms per empty DBOS step on SQLite with WAL, or None without the dbos package."""
    try:
        import logging

        from dbos import DBOS
    except ImportError:
        return None
    db = data / "dbos.sqlite"
    sqlite3.connect(db).execute("PRAGMA journal_mode = WAL").fetchone()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{db}", "run_admin_server": False})

    @DBOS.step()
    def empty(i: int) -> int:
        return i

    @DBOS.workflow()
    def workflow(n: int) -> int:
        for i in range(n):
            empty(i)
        return n

    DBOS.launch()
    try:
        workflow(5)
        rounds = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            workflow(steps)
            rounds.append((time.perf_counter() - t0) / steps * 1000)
        return statistics.median(rounds)
    finally:
        DBOS.destroy()


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--parked", type=int, default=1000)
    parser.add_argument("--runner", default="inprocess", choices=["inprocess", "process"])
    parser.add_argument("--ttft-rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-agents-") as tmp:
        data = Path(tmp)
        figures = asyncio.run(engine_figures(data, args.runner, args.steps, args.runs, args.parked))
        plain = figures["plain_ms"]
        dbos = dbos_baseline(data, args.steps)
    ttft = ttft_figures(args.runner, args.ttft_rounds)
    rows = [
        ("journaled step (edgenode)", f"{figures['step_ms']:.3f} ms"),
        ("plain SQLite insert+commit (WAL, FULL)", f"{plain:.3f} ms"),
        ("empty step (DBOS, SQLite WAL)", "not installed" if dbos is None else f"{dbos:.3f} ms"),
        ("edgenode / DBOS per step", "-" if dbos is None else f"{figures['step_ms'] / dbos:.2f}x"),
        (f"runs of 10 steps per second ({args.runs} runs)", f"{figures['runs_per_s']:.1f}"),
        (f"threads added by {args.parked} parked runs", f"{figures['parked_threads_added']:.0f}"),
        ("RSS per parked run", f"{figures['parked_rss_kib_per_run']:.2f} KiB"),
        ("database per parked run", f"{figures['parked_db_bytes_per_run'] / 1024:.2f} KiB"),
        (f"restart and finish all {args.parked} approved runs", f"{figures['resume_all_s']:.2f} s"),
        ("time to first token, straight from the stand-in (p50)", f"{ttft['direct_s'] * 1000:.1f} ms"),
        ("time to first token through the node (p50, event sent -> delta)", f"{ttft['node_s'] * 1000:.1f} ms"),
        ("node's added time to first token", f"{(ttft['node_s'] - ttft['direct_s']) * 1000:.1f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"agents benchmark (runner: {args.runner})")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
