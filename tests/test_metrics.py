"""The node's own health figures: event-loop lag."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest

from edgenode.metrics import LoopLag


def test_a_call_that_blocks_the_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval_s=0.01)

    async def scenario() -> None:
        lag.start()
        while len(lag.samples) < 3:  # measuring: a few quiet samples first
            await asyncio.sleep(0.01)
        time.sleep(0.3)  # what a blocking call on the loop does to every other request
        count = len(lag.samples)
        while len(lag.samples) == count:
            await asyncio.sleep(0.01)
        await lag.stop()

    asyncio.run(scenario())
    summary = lag.summary()
    assert summary["max_ms"] >= 250
    assert summary["samples"] >= 4
    text = generate_latest(registry).decode()
    assert "edgenode_event_loop_lag_seconds_bucket" in text
    assert 'edgenode_event_loop_lag_seconds_bucket{le="0.25"}' in text


def test_no_samples_reads_as_zero() -> None:
    assert LoopLag(CollectorRegistry()).summary() == {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
