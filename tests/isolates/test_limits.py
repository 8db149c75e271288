from __future__ import annotations

import pytest

from edgenode.config import WorkerSettings
from edgenode.errors import ValidationFailed
from edgenode.isolates import Limits


def test_defaults_come_from_the_settings() -> None:
    s = WorkerSettings()
    limits = Limits.resolve(None, s)
    assert (limits.cpu_ms, limits.memory_mb, limits.wall_ms) == (s.default_cpu_ms, s.default_memory_mb,
                                                                  s.default_wall_ms)


def test_values_within_the_ceiling_are_kept() -> None:
    limits = Limits.resolve({"cpu_ms": 50, "memory_mb": 32, "wall_ms": 100, "subrequests": 0}, WorkerSettings())
    assert limits.as_dict() == {"cpu_ms": 50, "memory_mb": 32, "wall_ms": 100, "subrequests": 0}


@pytest.mark.parametrize("limits", [
    {"cpu_ms": 10**9}, {"memory_mb": 4}, {"memory_mb": 100_000}, {"wall_ms": 0}, {"cpu_ms": "5"},
    {"cpu_ms": True}, {"fuel": 1}, [1],
])
def test_out_of_range_or_unknown_limits_are_rejected(limits: object) -> None:
    with pytest.raises(ValidationFailed):
        Limits.resolve(limits, WorkerSettings())
