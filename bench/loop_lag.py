"""Event-loop lag and one tenant's latency while another floods the node.

One real node process. Bob reads a KV key and invokes a small worker, one request after
another. The same run measures him alone (the baseline) and while alice floods the node with
a mix: worker requests that spin on the CPU, KV writes, SQL statements that open ever new
namespaces, and one-off ``/v1/run`` programs. The node's own event-loop lag (what a blocking
call on the loop costs every request) is read from ``/v1/status`` after each phase.

Alice floods from a process of her own, as another client would: in bob's process her eight
client threads would take his interpreter's lock, and his figures would measure his own
client (``--flood-in-process`` measures that way). The table ends with how many of alice's
guests ran at a lowered priority (the isolate pool's ``lowered``).

    python bench/loop_lag.py [--requests 200] [--flood 8] [--flood-in-process]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import NodeProcess  # noqa: E402

HELLO = 'def handle(request):\n    return {"hello": "bob"}\n'
SPIN = (
    "def handle(request):\n"
    "    n = 0\n"
    "    for i in range(300_000):\n"
    "        n += i\n"
    "    return {'n': n}\n"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tenant_client(node: NodeProcess, admin: httpx.Client, tenant: str) -> httpx.Client:
    token = admin.post("/v1/tokens", json={"tenant": tenant}).raise_for_status().json()["token"]
    return httpx.Client(base_url=node.url, headers={"authorization": f"Bearer {token}"}, timeout=120)


def bob_requests(bob: httpx.Client, n: int) -> list[float]:
    out = []
    for i in range(n):
        began = time.perf_counter()
        if i % 2:
            bob.get("/v1/kv/notes/greeting").raise_for_status()
        else:
            bob.post("/w/hello", json={}).raise_for_status()
        out.append((time.perf_counter() - began) * 1000)
    return out


def flood(alice: httpx.Client, kind: str, stop: threading.Event, counter: itertools.count[int]) -> None:
    while not stop.is_set():
        i = next(counter)
        if kind == "spin":
            alice.post("/w/spin", json={})
        elif kind == "kv":
            alice.put(f"/v1/kv/load/k{i % 500}", content=b"x" * 512)
        elif kind == "sql":
            alice.post(f"/v1/sql/ns{i}", json={"query": "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v)"})
        else:
            alice.post("/v1/run", json={"code": f"def handle(request):\n    return {{'i': {i}}}\n"})


def flood_process(url: str, token: str, inflight: int, ready: Any, stop: Any, sent: Any) -> None:
    """Alice's flood from a process of her own, until ``stop`` is set; ``sent`` gets her request count."""
    alice = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=120)
    done = threading.Event()
    counter = itertools.count()
    kinds = ["spin", "kv", "sql", "run"]
    threads = [threading.Thread(target=flood, args=(alice, kinds[i % len(kinds)], done, counter), daemon=True)
               for i in range(inflight)]
    for t in threads:
        t.start()
    ready.set()
    stop.wait()
    done.set()
    for t in threads:
        t.join(timeout=120)
    sent.value = next(counter)


def lag_buckets(admin: httpx.Client) -> dict[float, float]:
    """The node's event-loop lag histogram: cumulative count per upper bound (seconds)."""
    out = {}
    for line in admin.get("/metrics").raise_for_status().text.splitlines():
        if line.startswith("edgenode_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_between(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p99 of the lag samples taken between two readings, as the bucket bounds that hold them."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts[float("inf")]

    def at(q: float) -> str:
        for bound, count in counts.items():
            if count >= q * total:
                return "<= " + ("inf" if bound == float("inf") else f"{bound * 1000:g}")
        return "?"

    return {"samples": int(total), "p50": at(0.5), "p99": at(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--flood", type=int, default=8, help="alice's requests in flight")
    parser.add_argument("--flood-in-process", action="store_true",
                        help="alice's client threads in bob's process (sharing his interpreter lock)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "node").start()
        try:
            admin = httpx.Client(base_url=node.url, headers={"authorization": f"Bearer {node.admin_token}"},
                                 timeout=120)
            bob, alice = tenant_client(node, admin, "bob"), tenant_client(node, admin, "alice")
            alice_token = alice.headers["authorization"].removeprefix("Bearer ")
            bob.put("/v1/workers/hello", json={"files": {"main.py": HELLO}}).raise_for_status()
            bob.put("/v1/kv/notes/greeting", content=b"hi").raise_for_status()
            alice.put("/v1/workers/spin", json={"files": {"main.py": SPIN}}).raise_for_status()
            bob_requests(bob, 20)  # warm
            before = lag_buckets(admin)
            alone = bob_requests(bob, args.requests)
            quiet_lag = lag_between(before, lag_buckets(admin))

            if args.flood_in_process:
                stop = threading.Event()
                counter = itertools.count()
                kinds = ["spin", "kv", "sql", "run"]
                threads = [threading.Thread(target=flood, args=(alice, kinds[i % len(kinds)], stop, counter),
                                            daemon=True) for i in range(args.flood)]
                for t in threads:
                    t.start()
            else:
                ctx = multiprocessing.get_context("spawn")
                ready, stopping, sent = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
                child = ctx.Process(target=flood_process, args=(node.url, alice_token, args.flood, ready, stopping,
                                                                 sent), daemon=True)
                child.start()
                ready.wait(120)
            time.sleep(1.0)
            before = lag_buckets(admin)
            flooded = bob_requests(bob, args.requests)
            flood_lag = lag_between(before, lag_buckets(admin))
            status = admin.get("/v1/status").raise_for_status().json()
            status_lag = status["event_loop_lag"]
            if args.flood_in_process:
                stop.set()
                for t in threads:
                    t.join(timeout=120)
                opened = next(counter)
            else:
                stopping.set()
                child.join(timeout=180)
                opened = sent.value
        finally:
            node.stop()

    print(f"\nbob's requests (KV read and worker invoke, alternating), {args.requests} per phase; "
          f"alice: {args.flood} in flight (spinning workers, KV writes, new SQL namespaces, /v1/run) "
          f"from {'bob' if args.flood_in_process else 'her own'} process, "
          f"{opened} requests in the flood phase\n")
    print(f"{'phase':<26}{'bob p50 ms':>11}{'bob p99 ms':>11}{'lag samples':>12}{'lag p50 ms':>12}{'lag p99 ms':>12}")
    for name, samples, lagged in (("bob alone (baseline)", alone, quiet_lag),
                                  ("bob while alice floods", flooded, flood_lag)):
        print(f"{name:<26}{statistics.median(samples):>11.2f}{pct(samples, 0.99):>11.2f}"
              f"{lagged['samples']:>12}{lagged['p50']:>12}{lagged['p99']:>12}")
    print(f"\n/v1/status event_loop_lag at the end of the flood (last minute): {status_lag}")
    workers = status.get("capabilities", {}).get("workers", {})
    print(f"isolate pool: {workers.get('lowered', '?')} guests ran at a lowered priority "
          f"({workers.get('guest_priority', '?')})")
    ratio = statistics.median(flooded) / statistics.median(alone)
    print(f"\nbob's p50 under the flood: {ratio:.2f}x his p50 alone (goal: within 2x)")


if __name__ == "__main__":
    main()
