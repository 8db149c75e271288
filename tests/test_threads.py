"""The bridges from the event loop to threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from prometheus_client import CollectorRegistry, generate_latest

from edgenode.threads import FILES, Bridge, register_metrics

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_a_call_runs_on_the_bridges_threads_with_the_callers_context() -> None:
    bridge = Bridge("probe", 2)

    async def scenario() -> tuple[str, str]:
        WHO.set("request-7")
        return await bridge.run(lambda: (threading.current_thread().name, WHO.get()))

    name, who = asyncio.run(scenario())
    assert name.startswith("probe") and who == "request-7"


def test_a_bridge_runs_at_most_its_threads_at_once_and_counts_the_rest_as_waiting() -> None:
    bridge = Bridge("narrow", 2)
    release = threading.Event()
    running = threading.Semaphore(0)

    def hold() -> None:
        running.release()
        release.wait(60)

    async def scenario() -> tuple[int, int]:
        calls = [asyncio.ensure_future(bridge.run(hold)) for _ in range(5)]
        for _ in range(2):
            await asyncio.to_thread(running.acquire, True, 60)
        seen = (bridge.busy, bridge.waiting)
        release.set()
        await asyncio.gather(*calls)
        return seen

    assert asyncio.run(scenario()) == (2, 3)
    assert (bridge.busy, bridge.waiting) == (0, 0)


def test_bridges_report_themselves_as_metrics() -> None:
    registry = CollectorRegistry()
    register_metrics(registry)
    text = generate_latest(registry).decode()
    assert f'edgenode_thread_bridge_threads{{bridge="files"}} {float(FILES.max_workers)}' in text
    assert 'edgenode_thread_bridge_waiting{bridge="store"}' in text
