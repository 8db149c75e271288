"""Tenant fairness of the isolate pool: bob's latency alone and while alice floods it.

Work is a blocking call that releases the GIL, as a guest in wasmtime does. Alice keeps
``--flood`` long requests in flight; bob sends short ones one after another. The same run
measures bob alone, bob under the flood with no tenant shares (every request arrives as
the same tenant: the pool before shares, one FIFO queue), and bob under the flood with
per-tenant shares.

A second part burns CPU instead (hashing, which releases the GIL like a guest): alice holds
all but one of a pool of ``--size + 1`` threads with CPU-bound work, so with bob's thread
there are more busy threads than cores. It measures bob alone, bob with every guest at one OS
priority (``over_share_nice`` 0), and bob with the guests of the tenant over its CPU share on
lowered threads (the default).

    python bench/fairness.py [--size 2] [--flood 8] [--alice-ms 200] [--bob-ms 5] [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import time

from edgenode.isolates.pool import IsolatePool


def _work(ms: float) -> None:
    time.sleep(ms / 1000)


_BLOCK = os.urandom(256 * 1024)


def _burn(ms: float) -> None:
    """Use ``ms`` of this thread's CPU, mostly with the GIL released."""
    began = time.thread_time()
    while (time.thread_time() - began) * 1000 < ms:
        hashlib.sha256(_BLOCK).digest()


async def cpu_scenario(args: argparse.Namespace, *, flood: bool, nice: int) -> list[float]:
    size = args.size + 1
    pool = IsolatePool(size, queue_depth=4 * args.flood, tenant_threads=size - 1,
                       tenant_queue_depth=4 * args.flood, over_share_nice=nice)
    stop = asyncio.Event()

    async def alice() -> None:
        while not stop.is_set():
            await pool.run(lambda: _burn(args.alice_ms), tenant="alice")

    flooding = [asyncio.ensure_future(alice()) for _ in range(size - 1)] if flood else []
    await asyncio.sleep(2 * args.alice_ms / 1000)
    try:
        await pool.run(lambda: _burn(args.bob_ms), tenant="bob")  # bob has used some CPU: alice is over her share
        out = []
        for _ in range(args.requests):
            began = time.perf_counter()
            await pool.run(lambda: _burn(args.bob_ms), tenant="bob")
            out.append((time.perf_counter() - began) * 1000)
        return out
    finally:
        stop.set()
        await asyncio.gather(*flooding)
        pool.shutdown()


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
    print(f"\nCPU-bound: pool of {args.size + 1} threads, alice keeps {args.size} x {args.alice_ms:g} ms of CPU "
          f"busy on {os.cpu_count()} cores; bob sends {args.requests} x {args.bob_ms:g} ms of CPU")
    print(f"{'scenario':42} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, flood, nice in (("bob alone", False, 10), ("bob under CPU flood, one OS priority", True, 0),
                               ("bob under CPU flood, over-share lowered", True, 10)):
        values = asyncio.run(cpu_scenario(args, flood=flood, nice=nice))
        print(f"{label:42} {statistics.median(values):8.1f} {_p(values, 0.99):8.1f} {statistics.mean(values):8.1f}")


if __name__ == "__main__":
    main()
