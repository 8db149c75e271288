"""Property: whatever the operations, replicas and delivery order, every replica ends equal to last-writer-wins."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgenode.cluster import Hlc, RangeSet
from edgenode.state import Changes, NamespaceDatabase, Replica

ORIGINS = ["n-a", "n-b", "n-c"]
KEYS = ["k1", "k2"]


class Clock:
    """A manual wall clock shared by the replicas; each replica adds its own skew."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0


def make_replicas(root: Path, clock: Clock, skews_ms: list[int]) -> list[Replica]:
    replicas = []
    for origin, skew in zip(ORIGINS, skews_ms, strict=True):
        db = NamespaceDatabase(root / f"{origin}.db", readers=1, synchronous="OFF").open()
        hlc = Hlc(now=lambda: clock.t, offset_ms=skew, max_offset_ms=5000)  # skews here reach 2 s apart
        replica = Replica(db, "default", "ns", origin, hlc)
        replica.sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        replicas.append(replica)
    return replicas


def missing(src: Replica, dst: Replica) -> dict[str, RangeSet]:
    theirs = dst.book()
    out = {o: rs.minus(theirs.get(o, RangeSet())) for o, rs in src.book().items()}
    return {o: rs for o, rs in out.items() if len(rs)}


def sync(src: Replica, dst: Replica, budget: int) -> None:
    for _ in range(1000):
        wanted = missing(src, dst)
        if not wanted:
            return
        dst.apply(src.changes(wanted, budget))
    raise AssertionError("sync did not finish")


def kv_state(r: Replica) -> dict[str, bytes]:
    return {k: r.kv_get(k)[0] for k in r.kv_list("")}  # type: ignore[index]


def sql_state(r: Replica) -> list[Any]:
    return r.sql("SELECT id, v FROM t ORDER BY id").rows


op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), st.sampled_from(KEYS), st.binary(max_size=4)),
    st.tuples(st.just("del"), st.integers(0, 2), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("upsert"), st.integers(0, 2), st.integers(1, 2), st.text(max_size=3)),
    st.tuples(st.just("sqldel"), st.integers(0, 2), st.integers(1, 2), st.none()),
    st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(0, 10_000), st.none()),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("tick"), st.integers(0, 2), st.integers(0, 5), st.none()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, max_size=40),
    skews=st.lists(st.sampled_from([0, 0, 0, 3, -1000, 1000]), min_size=3, max_size=3),
    final_order=st.randoms(use_true_random=False),
)
def test_replicas_converge_to_last_writer_wins(ops: list[Any], skews: list[int], final_order: Any) -> None:
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        replicas = make_replicas(Path(tmp), clock, skews)
        try:
            messages: list[Changes] = []
            # The model: per key, every write's (hlc, origin) and its outcome; the max wins.
            kv_writes: dict[str, list[tuple[tuple[int, str], bytes | None]]] = {}
            sql_writes: dict[int, list[tuple[tuple[int, str], str | None]]] = {}

            def record(r: Replica, commit: Any, table: dict[Any, Any], key: Any, value: Any) -> None:
                if commit.version is None:
                    return
                table.setdefault(key, []).append(((commit.hlc, r.origin), value))
                messages.append(r.changes({r.origin: RangeSet([(commit.version, commit.version)])}))

            for kind, i, a, b in ops:
                r = replicas[i]
                if kind == "put":
                    _, commit = r.kv_put(a, b)
                    record(r, commit, kv_writes, a, b)
                elif kind == "del":
                    record(r, r.kv_delete(a), kv_writes, a, None)
                elif kind == "upsert":
                    res = r.sql("INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                                [a, b])
                    record(r, res.commit, sql_writes, a, b)
                elif kind == "sqldel":
                    record(r, r.sql("DELETE FROM t WHERE id = ?", [a]).commit, sql_writes, a, None)
                elif kind == "deliver" and messages:
                    r.apply(messages[a % len(messages)])
                elif kind == "sync" and a != i:
                    sync(replicas[a], r, b)
                elif kind == "tick":
                    clock.t += a / 1000

            # Deliver every message everywhere in a random order (duplicates included), then let
            # anti-entropy finish: every replica must hold the same last-writer-wins state.
            deliveries = [(m, r) for m in messages for r in replicas]
            final_order.shuffle(deliveries)
            for m, r in deliveries:
                r.apply(m)
            for dst in replicas:
                for src in replicas:
                    if src is not dst:
                        sync(src, dst, 3)

            expected_kv = {}
            for key, writes in kv_writes.items():
                winner = max(writes, key=lambda w: w[0])[1]
                if winner is not None:
                    expected_kv[key] = winner
            expected_sql = []
            for key in sorted(sql_writes):
                winner = max(sql_writes[key], key=lambda w: w[0])[1]
                if winner is not None:
                    expected_sql.append([key, winner])
            for r in replicas:
                assert kv_state(r) == expected_kv, r.origin
                assert sql_state(r) == expected_sql, r.origin
                assert r.book() == replicas[0].book()
        finally:
            for r in replicas:
                r.db.close()
