"""Fairness between tenants inside one node: the bridges' turns and shares, the isolate pool's priorities."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from edgenode.isolates.pool import GuestCpu, IsolatePool
from edgenode.threads import Bridge, FairQueue, current_tenant

T = TypeVar("T")
BOUND_S = 30.0


async def _as(tenant: str, bridge: Bridge, fn: Callable[[], T]) -> T:
    current_tenant.set(tenant)  # what the API middleware does for a request (the task's own context)
    return await bridge.run(fn)


async def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        await asyncio.sleep(0.001)


def test_a_tenants_queued_calls_do_not_stand_in_front_of_another_tenants_call() -> None:
    bridge = Bridge("turns", 1)
    gate, started = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        started.set()
        gate.wait(BOUND_S)
        order.append("alice-0")

    def note(name: str) -> Callable[[], None]:
        return lambda: order.append(name)

    async def scenario() -> None:
        first = asyncio.ensure_future(_as("alice", bridge, hold))
        assert await asyncio.to_thread(started.wait, BOUND_S)
        burst = [asyncio.ensure_future(_as("alice", bridge, note(f"alice-{i}"))) for i in range(1, 6)]
        await _until(lambda: bridge.waiting == 5)
        bob = asyncio.ensure_future(_as("bob", bridge, note("bob")))
        await _until(lambda: bridge.waiting == 6)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *burst, bob), BOUND_S)

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
    # Bob waits behind the call that runs and at most one queued call of alice's, not her whole burst.
    assert order.index("bob") <= 2, order
    assert [name for name in order if name != "bob"] == [f"alice-{i}" for i in range(6)]


def test_a_tenant_holds_at_most_its_share_of_a_bridges_threads() -> None:
    bridge = Bridge("shares", 3, tenant_share=2)
    gate = threading.Event()
    running = threading.Semaphore(0)

    def hold() -> str:
        running.release()
        gate.wait(BOUND_S)
        return "alice"

    async def scenario() -> tuple[str, int]:
        alice = [asyncio.ensure_future(_as("alice", bridge, hold)) for _ in range(4)]
        for _ in range(2):
            assert await asyncio.to_thread(running.acquire, True, BOUND_S)
        await _until(lambda: bridge.waiting == 2)
        # The third thread is free for bob although alice has calls waiting.
        got = await asyncio.wait_for(_as("bob", bridge, lambda: "bob"), BOUND_S)
        seen = (got, bridge.waiting)
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*alice), BOUND_S) == ["alice"] * 4
        return seen

    try:
        assert asyncio.run(scenario()) == ("bob", 2)
    finally:
        gate.set()
    assert (bridge.busy, bridge.waiting) == (0, 0)


def test_a_cancelled_call_that_has_not_started_never_runs() -> None:
    bridge = Bridge("cancel", 1)
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        gate.wait(BOUND_S)

    async def scenario() -> None:
        first = asyncio.ensure_future(_as("alice", bridge, hold))
        assert await asyncio.to_thread(started.wait, BOUND_S)
        queued = asyncio.ensure_future(_as("alice", bridge, lambda: ran.append("queued")))
        await _until(lambda: bridge.waiting == 1)
        queued.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queued  # its call is dropped from the queue once the task is cancelled
        gate.set()
        await first
        assert await asyncio.wait_for(_as("bob", bridge, lambda: "after"), BOUND_S) == "after"

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
    assert ran == [] and (bridge.busy, bridge.waiting) == (0, 0)


def test_the_node_s_own_work_has_no_share_and_a_share_must_be_positive() -> None:
    queue: FairQueue[str] = FairQueue(1)
    for work in ("a", "b"):
        queue.put("", work)
    assert queue.take() == ("", "a") and queue.take() == ("", "b")
    queue.put("alice", "c")
    queue.put("alice", "d")
    assert queue.take() == ("alice", "c") and queue.take() is None  # alice holds her share
    queue.finished("alice")
    assert queue.take() == ("alice", "d")
    with pytest.raises(ValueError):
        FairQueue(0)


def _burn(cpu_s: float) -> Callable[[], int]:
    """Work that uses ``cpu_s`` seconds of its thread's CPU and tells the thread's nice value."""
    def work() -> int:
        began = time.thread_time()
        while time.thread_time() - began < cpu_s:
            sum(range(1000))
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return work


def test_the_guests_of_a_tenant_over_its_cpu_share_run_at_a_lower_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pool = IsolatePool(size=2, tenant_threads=1, over_share_nice=3, cpu=GuestCpu(now=lambda: 0.0))

    async def scenario() -> list[int]:
        alone = await pool.run(_burn(0.05), tenant="alice")  # alone on the node: no one to yield to
        bob = await pool.run(_burn(0.005), tenant="bob")
        alice = await pool.run(_burn(0.001), tenant="alice")  # she used more than an equal share
        bob_again = await pool.run(_burn(0.001), tenant="bob")
        node = await pool.run(_burn(0.001))  # the node's own work is never lowered
        return [alone, bob, alice, bob_again, node]

    try:
        seen = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert pool.priority_status().startswith("guests of tenants over their CPU share")
    assert seen == [base, base, min(19, base + 3), base, base]
    assert pool.lowered == 1


def test_recent_guest_cpu_fades_and_a_lone_tenant_is_never_over_its_share() -> None:
    now = [0.0]
    cpu = GuestCpu(half_life_s=1.0, now=lambda: now[0])
    cpu.add("alice", 1.0)
    assert not cpu.over_share("alice")
    cpu.add("bob", 0.1)
    assert cpu.over_share("alice") and not cpu.over_share("bob")
    now[0] = 30.0  # both faded away: nobody is over a share
    assert cpu.recent() == {} and not cpu.over_share("alice")
    with pytest.raises(ValueError):
        IsolatePool(size=2, over_share_nice=20)
