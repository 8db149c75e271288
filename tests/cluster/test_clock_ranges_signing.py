"""The building blocks: version range sets, the hybrid logical clock, peer request signatures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgenode.cluster import Hlc, RangeSet, Verifier, sign
from edgenode.cluster.hlc import physical_ms
from edgenode.errors import PeerAuthFailed


def test_rangeset_merges_and_reports_gaps() -> None:
    rs = RangeSet()
    for v in (1, 2, 3, 7, 8, 5):
        rs.add(v)
    assert rs.to_json() == [[1, 3], [5, 5], [7, 8]]
    assert rs.gaps().to_json() == [[4, 4], [6, 6]]
    rs.add(4, 6)
    assert rs.to_json() == [[1, 8]] and rs.count() == 8 and rs.head() == 8


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5))), st.lists(st.tuples(st.integers(1, 60),
                                                                                     st.integers(0, 5))))
def test_rangeset_matches_python_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    ra, rb = RangeSet((lo, lo + n) for lo, n in a), RangeSet((lo, lo + n) for lo, n in b)
    sa = {v for lo, n in a for v in range(lo, lo + n + 1)}
    sb = {v for lo, n in b for v in range(lo, lo + n + 1)}

    def members(rs: RangeSet) -> set[int]:
        return {v for lo, hi in rs for v in range(lo, hi + 1)}

    assert members(ra) == sa
    assert members(ra.minus(rb)) == sa - sb
    assert members(ra.intersect(rb)) == sa & sb
    assert ra.count() == len(sa)
    assert RangeSet.from_json(ra.to_json()) == ra


@pytest.mark.parametrize("bad", ["x", [[1]], [[2, 1]], [[0, 1]], [["1", 2]], [[1, True]]])
def test_rangeset_refuses_malformed_wire_data(bad: object) -> None:
    with pytest.raises(ValueError):
        RangeSet.from_json(bad)


def test_hlc_is_monotonic_and_follows_remote_clocks() -> None:
    t = [1_800_000_000.0]
    clock = Hlc(now=lambda: t[0])
    a, b = clock.tick(), clock.tick()
    assert b > a and physical_ms(a) == physical_ms(b) == 1_800_000_000_000
    t[0] -= 10  # the wall clock steps back
    assert clock.tick() > b
    remote = Hlc(now=lambda: t[0], offset_ms=60_000).tick()
    clock.observe(remote)
    assert clock.tick() > remote


def test_hlc_offset_simulates_skew() -> None:
    assert physical_ms(Hlc(now=lambda: 100.0, offset_ms=-5000).tick()) == 95_000


SECRET = b"fleet-secret"


def signed(body: bytes = b"{}", **kw: object) -> dict[str, str]:
    return sign(SECRET, "POST", "/v1/peer/x?y=1", body, node_id="n-a", url="http://a", **kw)  # type: ignore[arg-type]


def test_signature_round_trip_and_replay() -> None:
    v = Verifier(SECRET)
    headers = signed()
    assert v.verify("POST", "/v1/peer/x?y=1", headers, b"{}").node_id == "n-a"
    with pytest.raises(PeerAuthFailed, match="replay"):
        v.verify("POST", "/v1/peer/x?y=1", headers, b"{}")


@pytest.mark.parametrize("tamper", ["body", "path", "method", "node", "secret", "stale", "missing", "nosecret"])
def test_signature_refuses_tampering(tamper: str) -> None:
    v = Verifier(None if tamper == "nosecret" else SECRET)
    headers = signed(now=0.0) if tamper == "stale" else signed()
    method, target, body = "POST", "/v1/peer/x?y=1", b"{}"
    if tamper == "body":
        body = b'{"x":1}'
    elif tamper == "path":
        target = "/v1/peer/x?y=2"
    elif tamper == "method":
        method = "PUT"
    elif tamper == "node":
        headers["x-edgenode-peer"] = "n-evil"
    elif tamper == "secret":
        headers = sign(b"other", method, target, body, node_id="n-a", url="http://a")
    elif tamper == "missing":
        del headers["x-edgenode-signature"]
    with pytest.raises(PeerAuthFailed):
        v.verify(method, target, headers, body)
