"""Bookkeeping over a namespace's life: tombstones go once every member has seen them; a namespace that lost its
history (restored, or deleted and started again) loses no write made since. Real SQLite files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.cluster import Hlc, RangeSet
from edgenode.cluster.hlc import pack
from edgenode.state import NamespaceDatabase, Replica
from edgenode.state.merge import acknowledged_by_all

ORIGINS = ("n-a", "n-b", "n-c")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[Replica]]:
    replicas = [Replica(NamespaceDatabase(tmp_path / f"{o}.db", readers=1, synchronous="OFF").open(),
                        "default", "ns", o, Hlc()) for o in ORIGINS]
    yield replicas
    for r in replicas:
        r.db.close()


def sync(src: Replica, dst: Replica) -> None:
    theirs = dst.book()
    wanted = {o: rs.minus(theirs.get(o, RangeSet())) for o, rs in src.book().items()}
    wanted = {o: rs for o, rs in wanted.items() if len(rs)}
    if wanted:
        dst.apply(src.changes(wanted))


def tombstones(r: Replica) -> list[str]:
    return [row[0] for row in r.db.read_sync(lambda c: c.execute(
        "SELECT pk FROM _crdt_clock WHERE deleted = 1 ORDER BY pk").fetchall())]


def test_acknowledged_by_all_is_the_gapless_prefix_every_book_holds() -> None:
    books = [{"n-a": RangeSet([(1, 9)]), "n-b": RangeSet([(1, 4), (6, 8)])},
             {"n-a": RangeSet([(1, 5), (7, 9)]), "n-b": RangeSet([(1, 8)]), "n-c": RangeSet([(1, 3)])},
             {"n-a": RangeSet([(1, 7)]), "n-b": RangeSet([(2, 8)])}]
    # n-b: one member lacks version 1; n-c: two members have seen nothing of it.
    assert acknowledged_by_all(books) == {"n-a": 5}
    assert acknowledged_by_all(books[:2]) == {"n-a": 5, "n-b": 4}
    assert acknowledged_by_all([]) == {}


def test_a_tombstone_goes_once_every_member_has_seen_it(fleet: list[Replica]) -> None:
    a, b, c = fleet
    a.kv_put("early", b"1")           # n-a:1
    a.kv_put("late", b"1")            # n-a:2
    a.kv_delete("early")              # n-a:3, a tombstone
    for r in (b, c):
        sync(a, r)
    a.kv_delete("late")               # n-a:4, a tombstone c has not seen yet
    sync(a, b)
    assert tombstones(a) == tombstones(b) == ['["early"]', '["late"]']

    acknowledged = acknowledged_by_all(r.book() for r in fleet)
    assert acknowledged == {"n-a": 3}
    for r in fleet:
        assert r.collect_tombstones(acknowledged) == 1
    assert tombstones(a) == tombstones(b) == ['["late"]'] and tombstones(c) == []
    # c still holds "late" alive; the tombstone that a and b kept deletes it when c catches up.
    assert c.kv_get("late") is not None
    sync(a, c)
    assert c.kv_get("late") is None and tombstones(c) == ['["late"]']
    # With no tombstone left for "early", nothing brings it back: every member had applied the delete.
    for src in fleet:
        for dst in fleet:
            if src is not dst:
                sync(src, dst)
    assert [r.kv_list("") for r in fleet] == [[], [], []]
    assert a.collect_tombstones(acknowledged_by_all(r.book() for r in fleet)) == 1 and tombstones(a) == []


def test_a_namespace_that_lost_its_history_sends_its_new_writes_again(tmp_path: Path, fleet: list[Replica]) -> None:
    a, b, _ = fleet  # a's file is about to be lost; "fresh" is the same node starting it again
    for i in range(3):
        a.kv_put(f"old-{i}", b"1")  # n-a:1..3, seen by b
    sync(a, b)
    # a's file is deleted (the damaged-namespace advice: "start it empty, peers fill it again") ...
    fresh = Replica(NamespaceDatabase(tmp_path / "fresh.db", readers=1, synchronous="OFF").open(),
                    "default", "ns", "n-a", Hlc())
    try:
        _, commit = fresh.kv_put("new", b"written before the peers filled it")
        assert commit.version == 1  # a version b has already seen, for another write
        sync(fresh, b)  # nothing: b's book already covers n-a:1, so b would never ask for it
        assert b.kv_get("new") is None
        sync(b, fresh)  # the peer fills it again: it learns the fleet is ahead of it ...
        sync(b, fresh)  # ... and asks again for n-a:1, which it had claimed for its own new write
        sync(fresh, b)
        assert b.kv_get("new") is not None, "a write of the restarted namespace never reached the peer"
        assert {k: b.kv_get(k) for k in b.kv_list("")} == {k: fresh.kv_get(k) for k in fresh.kv_list("")}
        assert fresh.kv_put("next", b"x")[1].version == 5  # past everything the fleet has seen of n-a
    finally:
        fresh.db.close()


def test_a_tombstone_younger_than_the_grace_stays(fleet: list[Replica]) -> None:
    a = fleet[0]
    a.kv_put("k", b"1")
    a.kv_delete("k")
    acknowledged = {"n-a": 2}
    an_hour_ago = pack(int(time.time() * 1000) - 3_600_000, 0)
    assert a.collect_tombstones(acknowledged, an_hour_ago) == 0 and tombstones(a) == ['["k"]']
    assert a.collect_tombstones(acknowledged, pack(int(time.time() * 1000) + 1000, 0)) == 1
