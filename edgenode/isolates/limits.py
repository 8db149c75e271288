"""Per-deployment bounds, checked against the node's ceilings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgenode.config import WorkerSettings
from edgenode.errors import ValidationFailed

#: The smallest memory limit that still holds the shared Python runtime's snapshot, in MiB.
MIN_MEMORY_MB = 24


@dataclass(frozen=True)
class Limits:
    """Bounds on one invocation."""

    cpu_ms: int
    memory_mb: int
    wall_ms: int
    subrequests: int

    @classmethod
    def resolve(cls, requested: Any, settings: WorkerSettings) -> Limits:
        """Limits from a request's ``limits`` object: defaults filled in, each within the node's ceiling."""
        if requested is None:
            requested = {}
        if not isinstance(requested, dict):
            raise ValidationFailed("limits must be an object", field="limits")
        unknown = set(requested) - {"cpu_ms", "memory_mb", "wall_ms", "subrequests"}
        if unknown:
            raise ValidationFailed(f"unknown limit {sorted(unknown)[0]!r}", field="limits")

        def pick(name: str, default: int, ceiling: int, floor: int = 1) -> int:
            value = requested.get(name, default)
            if value is None:
                value = default
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationFailed(f"limits.{name} must be an integer", field=f"limits.{name}")
            if value < floor or value > ceiling:
                raise ValidationFailed(f"limits.{name} must be between {floor} and {ceiling} on this node",
                                       field=f"limits.{name}", max=ceiling)
            return value

        return cls(
            cpu_ms=pick("cpu_ms", min(settings.default_cpu_ms, settings.max_cpu_ms), settings.max_cpu_ms),
            memory_mb=pick("memory_mb", min(settings.default_memory_mb, settings.max_memory_mb),
                           settings.max_memory_mb, MIN_MEMORY_MB),
            wall_ms=pick("wall_ms", min(settings.default_wall_ms, settings.max_wall_ms), settings.max_wall_ms),
            subrequests=pick("subrequests", settings.max_subrequests, settings.max_subrequests, 0),
        )

    def as_dict(self) -> dict[str, int]:
        """Plain data for storage and replies."""
        return asdict(self)
