"""The hybrid logical clock: the logical counter's carry, and the bound on how far ahead a peer may drag it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.cluster import Hlc, RangeSet
from edgenode.cluster.hlc import LOGICAL_BITS, pack, physical_ms
from edgenode.config import Config
from edgenode.errors import ClockOffsetExceeded, ValidationFailed
from edgenode.state import NamespaceDatabase, Replica

NOW = 1_800_000_000.0
HOUR_MS = 3_600_000


def test_a_full_logical_counter_carries_into_the_next_millisecond() -> None:
    clock = Hlc(now=lambda: NOW)  # the wall clock stands still: only the logical counter moves
    start = clock.tick()
    stamps = [clock.tick() for _ in range(3 * (1 << LOGICAL_BITS))]
    assert all(a < b for a, b in zip([start, *stamps], stamps, strict=False))
    assert len({physical_ms(s) for s in stamps}) == 4  # three carries
    assert physical_ms(stamps[-1]) == physical_ms(start) + 3
    clock.observe(pack(physical_ms(start) + 10, (1 << LOGICAL_BITS) - 1))  # a remote stamp at a full counter
    assert clock.tick() == pack(physical_ms(start) + 11, 0)


def test_a_peer_stamp_within_the_bound_is_followed() -> None:
    clock = Hlc(now=lambda: NOW, max_offset_ms=500)
    remote = Hlc(now=lambda: NOW, offset_ms=400).tick()
    assert clock.observe_remote(remote) == remote
    assert clock.tick() > remote


def test_a_peer_stamp_an_hour_ahead_is_refused_and_the_clock_stays() -> None:
    clock = Hlc(now=lambda: NOW, max_offset_ms=500)
    before = clock.tick()
    remote = Hlc(now=lambda: NOW, offset_ms=HOUR_MS).tick()
    with pytest.raises(ClockOffsetExceeded) as info:
        clock.observe_remote(remote)
    assert info.value.ahead_ms == HOUR_MS and info.value.max_offset_ms == 500
    assert clock.peek() == before
    assert physical_ms(clock.tick()) - int(NOW * 1000) < 500
    clock.observe(remote)  # what the node reads back from its own files is trusted, however far ahead
    assert clock.tick() > remote


def test_a_change_batch_stamped_an_hour_ahead_is_refused(tmp_path: Path) -> None:
    def replica(name: str, hlc: Hlc) -> Replica:
        return Replica(NamespaceDatabase(tmp_path / f"{name}.db", readers=1, synchronous="OFF").open(),
                       "default", "ns", name, hlc)

    fast = replica("n-fast", Hlc(offset_ms=HOUR_MS))
    here = replica("n-here", Hlc())
    try:
        fast.kv_put("k", b"from the fast clock")
        with pytest.raises(ClockOffsetExceeded):
            here.apply(fast.changes({"n-fast": RangeSet([(1, 10)])}))
        assert here.kv_get("k") is None and here.book() == {}
        _, commit = here.kv_put("mine", b"x")
        assert commit.hlc is not None and physical_ms(commit.hlc) < physical_ms(fast.hlc.peek()) - HOUR_MS // 2
    finally:
        fast.db.close()
        here.db.close()


def test_max_clock_offset_setting() -> None:
    assert Config.load(env={}).cluster.max_clock_offset_ms == 500
    assert Config.load(env={"EDGENODE_CLUSTER_MAX_CLOCK_OFFSET_MS": "250"}).cluster.max_clock_offset_ms == 250
    for bad in ("0", "-5", "3600000"):
        with pytest.raises(ValidationFailed) as info:
            Config.load(env={"EDGENODE_CLUSTER_MAX_CLOCK_OFFSET_MS": bad})
        assert "cluster.max_clock_offset_ms" in info.value.message
