"""The isolate pool: bounded, and fair between tenants (real threads, no guests needed)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgenode.errors import Overloaded, TenantOverShare
from edgenode.isolates.pool import IsolatePool

BOUND_S = 30.0


def _blocker(gate: threading.Event, started: threading.Semaphore) -> object:
    def work() -> str:
        started.release()
        if not gate.wait(BOUND_S):
            raise TimeoutError("gate never opened")
        return "alice"
    return work


def test_a_tenant_cannot_hold_every_thread() -> None:
    async def main() -> None:
        pool = IsolatePool(size=2, queue_depth=8, tenant_threads=1, tenant_queue_depth=8)
        gate, started = threading.Event(), threading.Semaphore(0)
        try:
            alice = [asyncio.ensure_future(pool.run(_blocker(gate, started), tenant="alice")) for _ in range(4)]
            assert await asyncio.to_thread(started.acquire, True, BOUND_S)
            # Alice's four requests hold one thread and wait for it; bob's runs on the other at once.
            assert await asyncio.wait_for(pool.run(lambda: "bob", tenant="bob"), BOUND_S) == "bob"
            assert not any(task.done() for task in alice)
        finally:
            gate.set()
        assert await asyncio.gather(*alice) == ["alice"] * 4
        pool.shutdown()

    asyncio.run(main())


def test_a_tenant_over_its_share_gets_429_others_go_on() -> None:
    async def main() -> None:
        pool = IsolatePool(size=2, queue_depth=64, tenant_threads=1, tenant_queue_depth=2)
        gate, started = threading.Event(), threading.Semaphore(0)
        try:
            held = [asyncio.ensure_future(pool.run(_blocker(gate, started), tenant="alice")) for _ in range(3)]
            await asyncio.sleep(0)
            with pytest.raises(TenantOverShare) as info:
                await pool.run(lambda: None, tenant="alice")
            assert info.value.status == 429 and info.value.headers() == {"Retry-After": "1"}
            assert await asyncio.wait_for(pool.run(lambda: "bob", tenant="bob"), BOUND_S) == "bob"
        finally:
            gate.set()
        await asyncio.gather(*held)
        pool.shutdown()

    asyncio.run(main())


def test_waiting_tenants_are_served_in_turn() -> None:
    async def main() -> None:
        pool = IsolatePool(size=1, queue_depth=64, tenant_threads=1, tenant_queue_depth=16)
        gate, started = threading.Event(), threading.Semaphore(0)
        order: list[str] = []
        first = asyncio.ensure_future(pool.run(_blocker(gate, started), tenant="carol"))
        assert await asyncio.to_thread(started.acquire, True, BOUND_S)
        tasks = [asyncio.ensure_future(pool.run(lambda: order.append("alice"), tenant="alice")) for _ in range(3)]
        tasks.append(asyncio.ensure_future(pool.run(lambda: order.append("bob"), tenant="bob")))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *tasks)
        # Bob came last but does not wait behind all of alice's burst.
        assert order.index("bob") < 2, order
        pool.shutdown()

    asyncio.run(main())


def test_the_pool_bound_still_holds_without_tenants() -> None:
    async def main() -> None:
        pool = IsolatePool(size=1, queue_depth=1)
        gate, started = threading.Event(), threading.Semaphore(0)
        held = [asyncio.ensure_future(pool.run(_blocker(gate, started))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await pool.run(lambda: None)
        gate.set()
        await asyncio.gather(*held)
        pool.shutdown()

    asyncio.run(main())
