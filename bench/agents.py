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

Fleet runs (``--fleet``, on by default): three node processes clustered on loopback.
Per-step cost of a run with the replicated journal (``placement: fleet``) against the
same node's local journal (``placement: local``) and DBOS, in the same run; takeover time
after ``kill -9`` of a run's owner, from the kill to the first step journaled by the new
owner (the lease TTL is ``--lease-ttl``); and parked runs per GB: ``--bulk-parked`` parked
runs put on the fleet's journal stream in the real record format (the records of one real
parked run, cloned per run id, published in bulk), applied by every node into its copy;
each node's and its nats-server's memory and disk measured before and after, and
extrapolated to 1,000,000 parked runs.

    python bench/agents.py [--steps 300] [--runs 50] [--parked 1000] [--runner inprocess] [--ttft-rounds 20]
                           [--no-fleet] [--takeovers 5] [--bulk-parked 100000] [--lease-ttl 2]
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


FLEET_STEPS_AGENT = """
import time


def run(ctx, input):
    for i in range(input["steps"]):
        ctx.step("s%d" % i, lambda: time.sleep(input.get("pause", 0)))
    return input["steps"]
"""


def proc_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def tree_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def quantile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fleet_figures(data: Path, *, steps: int, takeovers: int, bulk: int, ttl_s: float) -> dict[str, Any]:
    """Replicated vs local journal per step, takeover after kill -9, parked runs per GB, on three nodes."""
    from tests.cluster.helpers import start_fleet, wait_members
    from tests.support import wait_for

    env = {"EDGENODE_AGENTS_RUNNER": "inprocess", "EDGENODE_AGENTS_SCHEDULER_INTERVAL_S": "0.05",
           "EDGENODE_AGENTS_LEASE_TTL_S": str(ttl_s), "EDGENODE_STORE_SYNCHRONOUS": "FULL"}
    nodes = start_fleet(data / "fleet", 3, env=env)
    out: dict[str, Any] = {}
    try:
        wait_members(nodes)
        n1, n2, n3 = nodes
        with n1.client() as c:
            assert c.put("/v1/agents/steps", json={"files": {"main.py": FLEET_STEPS_AGENT}}).status_code in (200, 201)
            assert c.put("/v1/agents/parked", json={"files": {"main.py": PARKED_AGENT}}).status_code in (200, 201)
        for n in nodes:
            wait_for(lambda n=n: _get(n, "/v1/agents/steps").status_code == 200, timeout=60, message="deploy")
            wait_for(lambda n=n: _get(n, "/v1/agents/parked").status_code == 200, timeout=60, message="deploy")
        wait_for(lambda: _fleet_joined(nodes), timeout=60, message="the fleet journal on three servers")
        # Per step: the same node, the same agent, placed local then fleet, interleaved.
        per: dict[str, list[float]] = {"local": [], "fleet": []}
        for i in range(ROUNDS):
            for placement in ("local", "fleet"):
                run_id = f"steps-{placement}-{i}"
                _post(n1, "/v1/agents/steps/runs", {"id": run_id, "placement": placement, "input": {"steps": steps}})
                run = wait_for(lambda r=run_id: _done(n1, r), timeout=300, message=run_id)
                per[placement].append((run["finished_at"] - run["created_at"]) / steps * 1000)
        out["local_step_ms"] = statistics.median(per["local"])
        out["fleet_step_ms"] = statistics.median(per["fleet"])
        # Takeover: a run stepping every 20 ms on n3, n3 killed; the first step journaled after the kill.
        samples: list[float] = []
        for i in range(takeovers):
            run_id = f"takeover-{i}"
            _post(n3, "/v1/agents/steps/runs", {"id": run_id, "input": {"steps": 100_000, "pause": 0.02}})
            wait_for(lambda r=run_id: len(_journal(n1, r)) >= 5, timeout=60, message="steps on the owner")
            killed = time.time()
            n3.kill()
            first = wait_for(lambda r=run_id, k=killed: [e["created_at"] for e in _journal(n1, r)
                                                         if e["created_at"] > k],
                             timeout=120, message="a step on the new owner")
            samples.append(min(first) - killed)
            _post(n1, f"/v1/agents/runs/{run_id}/cancel", None)
            n3.start()
            wait_members(nodes)
        out["takeover_p50_s"] = quantile(samples, 0.5)
        out["takeover_p99_s"] = quantile(samples, 0.99)
        out["takeovers"] = len(samples)
        if bulk:
            out.update(parked_per_gb(nodes, bulk))
    finally:
        for n in nodes:
            n.stop()
    return out


def _get(node: Any, path: str) -> Any:
    with node.client(timeout=60) as c:
        return c.get(path)


def _post(node: Any, path: str, body: Any) -> Any:
    with node.client(timeout=60) as c:
        r = c.post(path, json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()


def _done(node: Any, run_id: str) -> dict[str, Any] | None:
    r = _get(node, f"/v1/agents/runs/{run_id}")
    run: dict[str, Any] | None = r.json() if r.status_code == 200 else None
    return run if run is not None and run["status"] == "completed" else None


def _journal(node: Any, run_id: str) -> list[dict[str, Any]]:
    r = _get(node, f"/v1/agents/runs/{run_id}/history")
    journal: list[dict[str, Any]] = r.json()["journal"] if r.status_code == 200 else []
    return journal


def _nats(node: Any) -> Any:
    import json

    from tests.cluster.helpers import KEYS

    port = json.loads((node.data_dir / "nats" / "ports.json").read_text())["client"]
    return f"nats://127.0.0.1:{port}", KEYS


def _fleet_joined(nodes: list[Any]) -> bool:
    async def replicas() -> dict[str, int]:
        import nats

        url, keys = _nats(nodes[0])
        nc = await nats.connect(url, user=keys.client_user, password=keys.client_password)
        try:
            return {s.config.name or "": int(s.config.num_replicas or 1) for s in await nc.jetstream().streams_info()}
        finally:
            await nc.close()

    streams = asyncio.run(replicas())
    return all(n >= 3 for name, n in streams.items() if name.endswith(("_AGENTS", "_KV_LEASES"))) and bool(streams)


def parked_per_gb(nodes: list[Any], bulk: int) -> dict[str, Any]:
    """Memory and disk per parked fleet run, per node and per nats-server, from ``bulk`` cloned parked runs."""
    import json

    from edgenode.agents.lease import token
    from tests.cluster.helpers import child_pid
    from tests.support import wait_for

    n1 = nodes[0]
    _post(n1, "/v1/agents/parked/runs", {"id": "model-parked"})
    wait_for(lambda: _status_of(n1, "model-parked") == "waiting", timeout=60, message="a real parked run")
    wait_for(lambda: all(_counts(n).get("waiting", 0) >= 1 for n in nodes), timeout=60, message="its copies")

    def measure() -> dict[str, float]:
        figures: dict[str, float] = {}
        for i, n in enumerate(nodes):
            assert n.proc is not None
            figures[f"node{i}_rss"] = proc_kib(n.proc.pid) * 1024
            figures[f"nats{i}_rss"] = proc_kib(child_pid(n) or 0) * 1024
            figures[f"node{i}_disk"] = sum(p.stat().st_size for p in n.data_dir.glob("agents.db*"))
            figures[f"nats{i}_disk"] = tree_bytes(n.data_dir / "nats")
        return figures

    async def publish() -> None:
        import nats

        url, keys = _nats(n1)
        nc = await nats.connect(url, user=keys.client_user, password=keys.client_password)
        try:
            js = nc.jetstream()
            stream = next(s.config for s in await js.streams_info() if (s.config.name or "").endswith("_AGENTS"))
            base = (stream.subjects or [""])[0][:-1]
            model_key = "default/model-parked"
            records, seq = [], 1
            while True:
                try:
                    msg = await js.get_msg(stream.name or "", seq, subject=base + token(model_key), next=True)
                except Exception:
                    break
                records.append((msg.data or b"").decode())
                seq = int(msg.seq or 0) + 1
            cloned[0] = len(records)
            writer = json.loads(records[-1])["node"]
            for i in range(bulk):
                key = f"default/bulk-{i}"
                subject = base + token(key)
                for text in records:
                    # Written by a node that is not here, so every node applies it (its own it skips).
                    raw = (text.replace(model_key, key).replace('"model-parked"', f'"bulk-{i}"')
                           .replace(f'"node":"{writer}"', '"node":"nbulk"'))
                    await nc.publish(subject, raw.encode())
                if i % 2000 == 0:
                    await nc.flush()
            await nc.flush()
        finally:
            await nc.close()

    cloned = [0]
    before = measure()
    t0 = time.perf_counter()
    asyncio.run(publish())
    for n in nodes:
        wait_for(lambda n=n: _counts(n).get("waiting", 0) >= bulk + 1, timeout=1800, interval=1.0,
                 message="every node to apply the parked runs")
    applied_s = time.perf_counter() - t0
    time.sleep(2.0)
    after = measure()
    per = {k: (after[k] - before[k]) / bulk for k in before}
    node_mem = statistics.mean(per[f"node{i}_rss"] + per[f"nats{i}_rss"] for i in range(len(nodes)))
    node_disk = statistics.mean(per[f"node{i}_disk"] + per[f"nats{i}_disk"] for i in range(len(nodes)))
    gib = 1024 ** 3
    return {"bulk": bulk, "bulk_applied_s": applied_s, "mem_per_run": node_mem, "disk_per_run": node_disk,
            "node_rss_per_run": statistics.mean(per[f"node{i}_rss"] for i in range(len(nodes))),
            "nats_rss_per_run": statistics.mean(per[f"nats{i}_rss"] for i in range(len(nodes))),
            "node_disk_per_run": statistics.mean(per[f"node{i}_disk"] for i in range(len(nodes))),
            "nats_disk_per_run": statistics.mean(per[f"nats{i}_disk"] for i in range(len(nodes))),
            "runs_per_gb_mem": gib / node_mem if node_mem > 0 else float("inf"),
            "million_mem_gib": node_mem * 1_000_000 / gib, "million_disk_gib": node_disk * 1_000_000 / gib,
            "records_per_run": cloned[0]}


def _counts(node: Any) -> dict[str, int]:
    counts: dict[str, int] = _get(node, "/v1/status").json()["capabilities"]["agents"]["runs"]
    return counts


def _status_of(node: Any, run_id: str) -> str | None:
    r = _get(node, f"/v1/agents/runs/{run_id}")
    return str(r.json()["status"]) if r.status_code == 200 else None


def print_fleet(figures: dict[str, Any], dbos: float | None, ttl_s: float) -> None:
    """The fleet table."""
    rows = [
        ("step, local journal (placement local, node in a fleet)", f"{figures['local_step_ms']:.3f} ms"),
        ("step, replicated journal (placement fleet, R3)", f"{figures['fleet_step_ms']:.3f} ms"),
        ("empty step (DBOS, SQLite WAL), same run", "not installed" if dbos is None else f"{dbos:.3f} ms"),
        (f"takeover after kill -9, p50 ({figures['takeovers']} runs, lease TTL {ttl_s:g} s)",
         f"{figures['takeover_p50_s']:.2f} s"),
        ("takeover after kill -9, p99", f"{figures['takeover_p99_s']:.2f} s"),
    ]
    if "bulk" in figures:
        kib = 1024
        rows += [
            (f"parked runs applied on 3 nodes ({figures['bulk']:,}, {figures['records_per_run']} records each)",
             f"{figures['bulk_applied_s']:.1f} s"),
            ("memory per parked run, node process", f"{figures['node_rss_per_run'] / kib:.3f} KiB"),
            ("memory per parked run, its nats-server", f"{figures['nats_rss_per_run'] / kib:.3f} KiB"),
            ("disk per parked run, agents.db", f"{figures['node_disk_per_run'] / kib:.3f} KiB"),
            ("disk per parked run, JetStream store", f"{figures['nats_disk_per_run'] / kib:.3f} KiB"),
            ("parked runs per GB of memory (node + nats-server)", f"{figures['runs_per_gb_mem']:,.0f}"),
            ("1,000,000 parked runs: memory / disk per node",
             f"{figures['million_mem_gib']:.2f} GiB / {figures['million_disk_gib']:.2f} GiB (box: 24 GB)"),
        ]
    width = max(len(r[0]) for r in rows)
    print("fleet runs (3 nodes on loopback, inprocess runner)")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--parked", type=int, default=1000)
    parser.add_argument("--runner", default="inprocess", choices=["inprocess", "process"])
    parser.add_argument("--ttft-rounds", type=int, default=20)
    parser.add_argument("--no-fleet", dest="fleet", action="store_false", help="skip the fleet runs section")
    parser.add_argument("--only-fleet", action="store_true", help="only the fleet runs section (and DBOS)")
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--bulk-parked", type=int, default=100_000)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-agents-") as tmp:
        data = Path(tmp)
        dbos = dbos_baseline(data, args.steps)
        if args.fleet:
            fleet = fleet_figures(data, steps=args.steps, takeovers=args.takeovers, bulk=args.bulk_parked,
                                  ttl_s=args.lease_ttl)
            print_fleet(fleet, dbos, args.lease_ttl)
        if args.only_fleet:
            return
        figures = asyncio.run(engine_figures(data, args.runner, args.steps, args.runs, args.parked))
        plain = figures["plain_ms"]
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
