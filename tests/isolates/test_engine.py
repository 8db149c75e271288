from __future__ import annotations

import threading

from wasmtime.component import _types as component_types

from edgenode.isolates import Budget


def spin_cpu(seconds: float) -> None:
    import time

    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_budget_names_the_budget_that_ran_out() -> None:
    fresh = Budget(cpu_s=10, wall_s=10)
    assert fresh.check() is None
    cpu = Budget(cpu_s=0.01, wall_s=10)
    spin_cpu(0.02)
    assert cpu.check() == "cpu_limit"
    wall = Budget(cpu_s=10, wall_s=0.0)
    assert wall.check() == "wall_limit"
    cancelled = Budget(cpu_s=10, wall_s=10)
    cancelled.cancelled = True
    assert cancelled.check() == "shutting_down"


def test_variant_lowering_scratch_set_is_per_thread() -> None:
    shared = component_types.case_test_cache
    shared.clear()
    shared.add(int)
    seen: list[list[type]] = []

    def other() -> None:
        seen.append(list(shared))
        shared.add(str)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [[]]
    assert list(shared) == [int]
