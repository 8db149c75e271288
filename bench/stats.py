"""The one way the benchmarks summarise samples: nearest-rank quantiles."""

from __future__ import annotations

import math


def quantile(samples: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``samples`` by nearest rank; NaN for no samples.

    Nearest rank never interpolates: the figure is a sample that was measured (with fewer than
    100 samples, p99 is the largest).
    """
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
