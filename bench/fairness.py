"""Tenant fairness of the isolate pool: bob's latency alone and while alice floods it.

Work is a blocking call that releases the GIL, as a guest in wasmtime does. Alice keeps
``--flood`` long requests in flight; bob sends short ones one after another. The same run
measures bob alone, bob under the flood with no tenant shares (every request arrives as
the same tenant: the pool before shares, one FIFO queue), and bob under the flood with
per-tenant shares.

    python bench/fairness.py [--size 2] [--flood 8] [--alice-ms 200] [--bob-ms 5] [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from edgenode.isolates.pool import IsolatePool


def _work(ms: float) -> None:
    time.sleep(ms / 1000)


async def _bob(pool: IsolatePool, tenant: str | None, requests: int, ms: float) -> list[float]:
    out = []
    for _ in range(requests):
        began = time.perf_counter()
        await pool.run(lambda: _work(ms), tenant=tenant)
        out.append((time.perf_counter() - began) * 1000)
    return out


async def _flood(pool: IsolatePool, tenant: str | None, inflight: int, ms: float, stop: asyncio.Event) -> None:
    async def one() -> None:
        while not stop.is_set():
            await pool.run(lambda: _work(ms), tenant=tenant)

    await asyncio.gather(*(one() for _ in range(inflight)))


async def scenario(args: argparse.Namespace, *, flood: bool, shares: bool) -> list[float]:
    pool = IsolatePool(args.size, queue_depth=4 * args.flood, tenant_queue_depth=4 * args.flood)
    stop = asyncio.Event()
    flooding = asyncio.ensure_future(
        _flood(pool, "alice" if shares else None, args.flood, args.alice_ms, stop)) if flood else None
    await asyncio.sleep(args.alice_ms / 1000)  # the flood is in full swing
    try:
        return await _bob(pool, "bob" if shares else None, args.requests, args.bob_ms)
    finally:
        stop.set()
        if flooding is not None:
            await flooding
        pool.shutdown()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2)
    parser.add_argument("--flood", type=int, default=8)
    parser.add_argument("--alice-ms", type=float, default=200)
    parser.add_argument("--bob-ms", type=float, default=5)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    rows = [("bob alone", False, True), ("bob under flood, one FIFO (no shares)", True, False),
            ("bob under flood, tenant shares", True, True)]
    print(f"pool of {args.size} threads; alice keeps {args.flood} x {args.alice_ms:g} ms in flight; "
          f"bob sends {args.requests} x {args.bob_ms:g} ms")
    print(f"{'scenario':42} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, flood, shares in rows:
        values = asyncio.run(scenario(args, flood=flood, shares=shares))
        print(f"{label:42} {statistics.median(values):8.1f} {_p(values, 0.99):8.1f} {statistics.mean(values):8.1f}")


if __name__ == "__main__":
    main()
