"""A guest's log lines are bounded per request, in its response and in the node's log alike."""

from __future__ import annotations

import logging
import time

import pytest

from edgenode.isolates.capabilities import MAX_LOG_LINES, Grants, Invocation


def test_a_log_loop_cannot_flood_the_node_log(caplog: pytest.LogCaptureFixture) -> None:
    invocation = Invocation(Grants("alice", None), "chatty", time.monotonic() + 60)
    with caplog.at_level(logging.INFO, logger="edgenode.workers.guest"):
        for i in range(20 * MAX_LOG_LINES):
            invocation.add_log("info", f"line {i} " + "x" * 100)
    assert len(invocation.logs) == MAX_LOG_LINES
    assert invocation.dropped_logs == 19 * MAX_LOG_LINES
    records = [r for r in caplog.records if r.name == "edgenode.workers.guest"]
    assert len(records) == MAX_LOG_LINES + 1  # the kept lines and one saying the rest is dropped
    assert records[-1].levelno == logging.WARNING
