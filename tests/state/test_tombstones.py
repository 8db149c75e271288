"""Tombstones go once every member has seen them, and not before. Real SQLite files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.cluster import Hlc, RangeSet
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
