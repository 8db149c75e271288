"""Sets of version numbers kept as sorted, disjoint, inclusive ranges (per-origin bookkeeping)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class RangeSet:
    """Which versions of one origin a node has seen; gaps are the holes between ranges."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._ranges: list[tuple[int, int]] = []
        for lo, hi in ranges:
            self.add(lo, hi)

    def add(self, lo: int, hi: int | None = None) -> None:
        """Mark versions ``lo..hi`` (inclusive) as seen, merging touching ranges."""
        hi = lo if hi is None else hi
        if lo > hi:
            raise ValueError(f"empty range {lo}..{hi}")
        merged: list[tuple[int, int]] = []
        placed = False
        for a, b in self._ranges:
            if b + 1 < lo:
                merged.append((a, b))
            elif hi + 1 < a:
                if not placed:
                    merged.append((lo, hi))
                    placed = True
                merged.append((a, b))
            else:
                lo, hi = min(lo, a), max(hi, b)
        if not placed:
            merged.append((lo, hi))
        merged.sort()
        self._ranges = merged

    def update(self, other: RangeSet) -> None:
        """Add every range of ``other``."""
        for lo, hi in other:
            self.add(lo, hi)

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and any(a <= version <= b for a, b in self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self._ranges))

    def __len__(self) -> int:
        return len(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and other._ranges == self._ranges

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"

    def count(self) -> int:
        """How many versions the set holds."""
        return sum(b - a + 1 for a, b in self._ranges)

    def head(self) -> int:
        """The highest version seen (0 when none)."""
        return self._ranges[-1][1] if self._ranges else 0

    def minus(self, other: RangeSet) -> RangeSet:
        """Versions in this set that ``other`` lacks."""
        out = RangeSet()
        theirs = list(other)
        for lo, hi in self._ranges:
            cur = lo
            for a, b in theirs:
                if b < cur or a > hi:
                    continue
                if a > cur:
                    out._ranges.append((cur, a - 1))
                cur = max(cur, b + 1)
                if cur > hi:
                    break
            if cur <= hi:
                out._ranges.append((cur, hi))
        return out

    def intersect(self, other: RangeSet) -> RangeSet:
        """Versions in both sets."""
        return self.minus(self.minus(other))

    def gaps(self) -> RangeSet:
        """The holes below the head: versions known to exist but not yet seen."""
        return RangeSet([(1, self.head())]).minus(self) if self._ranges else RangeSet()

    def to_json(self) -> list[list[int]]:
        """``[[lo, hi], ...]`` for the wire."""
        return [[a, b] for a, b in self._ranges]

    @classmethod
    def from_json(cls, data: object, *, limit: int = 1 << 62) -> RangeSet:
        """Parse ``[[lo, hi], ...]``; ValueError on anything malformed."""
        if not isinstance(data, list):
            raise ValueError("ranges must be a list")
        out = cls()
        for item in data:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(type(x) is int for x in item)
                or not 1 <= item[0] <= item[1] <= limit
            ):
                raise ValueError(f"bad range {item!r}")
            out.add(item[0], item[1])
        return out
