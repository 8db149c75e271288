"""One namespace database in-process: key-value, compare-and-set, SQL guard, capture, apply, pool."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgenode.cluster import Hlc, RangeSet
from edgenode.errors import (
    MalformedChanges,
    PayloadTooLarge,
    SqlError,
    SqlRefused,
    SqlResultTooLarge,
    SqlTimeLimit,
    ValidationFailed,
    VersionMismatch,
)
from edgenode.state import Limits, NamespaceDatabase, Replica
from edgenode.state.guard import watchdog
from edgenode.state.payload import parse_changes
from edgenode.state.pool import NamespacePool


def open_replica(path: Path, origin: str, hlc: Hlc | None = None, limits: Limits | None = None) -> Replica:
    db = NamespaceDatabase(path, readers=1, synchronous="OFF").open()
    return Replica(db, "default", "ns", origin, hlc or Hlc(), limits)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = open_replica(tmp_path / "a.db", "n-a", limits=Limits(max_value_bytes=64, sql_time_limit_ms=200,
                                                               sql_max_result_bytes=2000))
    yield r
    r.db.close()


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Replica]:
    r = open_replica(tmp_path / "b.db", "n-b")
    yield r
    r.db.close()


def everything(r: Replica) -> dict[str, RangeSet]:
    return {o: RangeSet([(1, 1 << 40)]) for o in ("n-a", "n-b")}


def test_kv_put_get_delete_and_versions(replica: Replica) -> None:
    version, commit = replica.kv_put("k", b"one")
    assert commit.version == 1
    assert replica.kv_get("k") == (b"one", version)
    version2, commit2 = replica.kv_put("k", b"two")
    assert commit2.version == 2 and version2 != version
    assert replica.kv_delete("k").version == 3
    assert replica.kv_get("k") is None
    assert replica.kv_delete("k").version is None  # deleting nothing changes nothing
    assert replica.book() == {"n-a": RangeSet([(1, 3)])}


def test_compare_and_set(replica: Replica) -> None:
    with pytest.raises(VersionMismatch):
        replica.kv_put("k", b"x", if_match="*")
    v1, _ = replica.kv_put("k", b"x", if_none_match="*")
    with pytest.raises(VersionMismatch):
        replica.kv_put("k", b"y", if_none_match="*")
    v2, _ = replica.kv_put("k", b"y", if_match=v1)
    with pytest.raises(VersionMismatch) as info:
        replica.kv_put("k", b"z", if_match=v1)
    assert info.value.current == v2
    with pytest.raises(VersionMismatch):
        replica.kv_delete("k", if_match=v1)
    assert replica.kv_get("k") == (b"y", v2)
    replica.kv_delete("k", if_match=v2)
    assert replica.kv_get("k") is None


def test_value_size_limit(replica: Replica) -> None:
    with pytest.raises(PayloadTooLarge):
        replica.kv_put("k", b"x" * 65)
    replica.kv_put("k", b"x" * 64)


def test_list_by_prefix_with_pages(replica: Replica) -> None:
    for key in ["a/1", "a/2", "a/3", "b/1", "a", "a\U0010ffff"]:
        replica.kv_put(key, b".")
    assert replica.kv_list("a/") == ["a/1", "a/2", "a/3"]
    assert replica.kv_list("a/", limit=2) == ["a/1", "a/2"]
    assert replica.kv_list("a/", after="a/2") == ["a/3"]
    assert replica.kv_list("") == sorted(["a/1", "a/2", "a/3", "b/1", "a", "a\U0010ffff"])
    assert replica.kv_list("a\U0010ffff") == ["a\U0010ffff"]


def test_sql_reads_and_writes(replica: Replica) -> None:
    replica.sql("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, b BLOB)")
    res = replica.sql("INSERT INTO t VALUES (?, ?, ?)", ["x", 1, {"$base64": "AAE="}])
    assert res.rows_affected == 1 and res.commit.version is not None
    res = replica.sql("SELECT * FROM t WHERE n = :n", {"n": 1})
    assert res.columns == ["id", "n", "b"] and res.rows == [["x", 1, {"$base64": "AAE="}]]
    assert res.commit.version is None  # a read runs on a reader and changes nothing
    res = replica.sql("INSERT INTO t VALUES ('y', 2, NULL) RETURNING id")
    assert res.rows == [["y"]]


@pytest.mark.parametrize("query", [
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "DETACH DATABASE main",
    "PRAGMA synchronous = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "SELECT load_extension('libx')",
    "SELECT hex(fts3_tokenizer('simple'))",
    "SELECT fts3_tokenizer('x', zeroblob(8))",
    "BEGIN",
    "COMMIT",
    "SAVEPOINT s",
    "CREATE TEMP TABLE z (a)",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
    "DROP TABLE t",
    "ALTER TABLE t ADD COLUMN c",
    "CREATE VIRTUAL TABLE v USING fts4(x)",
    "INSERT INTO _crdt_clock VALUES ('t', '[1]', 1, 'x', 1, 0)",
    "DELETE FROM _kv",
    "UPDATE _crdt_book SET hi = 0",
    "CREATE TABLE _crdt_evil (id PRIMARY KEY)",
    "SELECT crdt_hlc()",
])
def test_sql_guard_refuses_escapes(replica: Replica, query: str) -> None:
    replica.sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    with pytest.raises(SqlRefused):
        replica.sql(query)
    assert replica.sql("SELECT count(*) FROM t").rows == [[0]]


def test_sql_introspection_pragmas_are_allowed(replica: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    assert [r[1] for r in replica.sql("PRAGMA table_info(t)").rows] == ["id", "v"]


def _bounded(fn: Callable[[], object], bound_s: float = 60.0) -> BaseException | None:
    """What ``fn`` raised (None if nothing), run on a thread: a statement nothing stops fails the test.

    (In the test's own thread, pytest-timeout's alarm could end the statement and pass for a limit.)
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound_s)
    if not outcome:
        pytest.fail(f"the statement was still running after {bound_s} s: no limit stopped it")
    return outcome[0]


def test_sql_time_and_result_limits(replica: Replica) -> None:
    error = _bounded(lambda: replica.sql(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"))
    assert isinstance(error, SqlTimeLimit), error
    with pytest.raises(SqlResultTooLarge):
        replica.sql("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) SELECT x FROM c")
    assert replica.sql("SELECT 1").rows == [[1]]


def test_one_huge_step_is_refused_by_the_length_limit(replica: Replica) -> None:
    # One VM step each: the progress handler would never see them, and each would take the memory.
    for query in ("SELECT length(randomblob(200000000))", "SELECT length(zeroblob(200000000))"):
        error = _bounded(lambda query=query: replica.sql(query))
        assert isinstance(error, SqlError) and "too big" in error.message, (query, error)
    # A huge printf is stopped too (by the length limit or, while it grows, by the watchdog).
    error = _bounded(lambda: replica.sql("SELECT length(printf('%.*c', 200000000, 'x'))"))
    assert isinstance(error, (SqlError, SqlTimeLimit)), error
    assert replica.sql("SELECT length(zeroblob(1000000))").rows == [[1000000]]


def test_the_watchdog_interrupts_a_statement_without_a_progress_handler(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "w.db", check_same_thread=False)

    def run() -> None:
        with watchdog.watch(conn, 100):
            conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
                         ).fetchall()

    error = _bounded(run)
    assert isinstance(error, sqlite3.OperationalError) and "interrupt" in str(error), error
    with watchdog.watch(conn, 10_000):  # a statement done in time is left alone
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
    conn.close()


def test_sql_errors_and_bad_params(replica: Replica) -> None:
    with pytest.raises(SqlError):
        replica.sql("SELEKT 1")
    with pytest.raises(SqlError):
        replica.sql("SELECT * FROM missing")
    with pytest.raises(SqlError):
        replica.sql("SELECT 1; SELECT 2")
    with pytest.raises(ValidationFailed):
        replica.sql("SELECT ?", [[1, 2]])
    with pytest.raises(ValidationFailed):
        replica.sql("   ")


def test_batch_is_one_transaction_and_one_version(replica: Replica, other: Replica) -> None:
    replica.sql("CREATE TABLE acct (id TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))")
    replica.sql("INSERT INTO acct VALUES ('a', 10), ('b', 0)")
    head = replica.book()["n-a"].head()
    results = replica.sql_batch([
        ("UPDATE acct SET balance = balance - 7 WHERE id = 'a'", None),
        ("UPDATE acct SET balance = balance + 7 WHERE id = 'b'", None),
        ("SELECT id, balance FROM acct ORDER BY id", None),
    ])
    assert results[2].rows == [["a", 3], ["b", 7]]
    assert results[0].commit.version == head + 1 and replica.book()["n-a"].head() == head + 1
    with pytest.raises(SqlError):  # the second statement breaks the CHECK: the first is undone too
        replica.sql_batch([("UPDATE acct SET balance = balance + 100 WHERE id = 'b'", None),
                           ("UPDATE acct SET balance = balance - 100 WHERE id = 'a'", None)])
    assert replica.sql("SELECT balance FROM acct ORDER BY id").rows == [[3], [7]]
    with pytest.raises(SqlRefused):
        replica.sql_batch([("SELECT 1", None), ("PRAGMA synchronous = OFF", None)])
    other.apply(replica.changes(everything(replica)))
    assert other.sql("SELECT id, balance FROM acct ORDER BY id").rows == [["a", 3], ["b", 7]]


def test_failed_write_leaves_nothing(replica: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v NOT NULL)")
    before = replica.book()
    with pytest.raises(SqlError):
        replica.sql("INSERT INTO t VALUES (1, 'a'), (2, NULL)")
    assert replica.sql("SELECT count(*) FROM t").rows == [[0]]
    assert replica.book() == before


def test_sql_rows_replicate_with_schema_and_key_changes(replica: Replica, other: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    replica.sql("CREATE INDEX t_v ON t (v)")
    replica.sql("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    replica.sql("UPDATE t SET id = 3 WHERE id = 1")  # a key change: delete 1, insert 3
    res = replica.sql("CREATE TABLE loose (a, b)")
    assert res.not_replicated == ["loose"]
    replica.sql("INSERT INTO loose VALUES (1, 2)")
    other.apply(replica.changes(everything(replica)))
    assert other.sql("SELECT id, v FROM t ORDER BY id").rows == [[2, "b"], [3, "a"]]
    assert other.sql("SELECT name FROM sqlite_master WHERE name = 't_v'").rows == [["t_v"]]
    with pytest.raises(SqlError):
        other.sql("SELECT * FROM loose")  # tables without a primary key stay local
    assert other.book() == replica.book()


def test_equal_clocks_break_ties_by_origin(tmp_path: Path) -> None:
    frozen = 1_800_000_000.0
    a = open_replica(tmp_path / "a.db", "n-a", Hlc(now=lambda: frozen))
    b = open_replica(tmp_path / "b.db", "n-b", Hlc(now=lambda: frozen))
    try:
        _, ca = a.kv_put("k", b"from-a")
        _, cb = b.kv_put("k", b"from-b")
        assert ca.hlc == cb.hlc  # a true tie on the clock
        a.apply(b.changes(everything(b)))
        b.apply(a.changes(everything(a)))
        assert a.kv_get("k") == b.kv_get("k")
        assert a.kv_get("k")[0] == b"from-b"  # type: ignore[index]
    finally:
        a.db.close()
        b.db.close()


def test_a_write_after_seeing_a_future_clock_wins(tmp_path: Path) -> None:
    # 400 ms apart: within cluster.max_clock_offset_ms (500 ms by default), so the clock is followed.
    ahead = open_replica(tmp_path / "a.db", "n-a", Hlc(offset_ms=200))
    behind = open_replica(tmp_path / "b.db", "n-b", Hlc(offset_ms=-200))
    try:
        ahead.kv_put("k", b"first")
        behind.apply(ahead.changes(everything(ahead)))
        behind.kv_put("k", b"second")  # later in real time, on a clock 400 ms behind
        ahead.apply(behind.changes(everything(behind)))
        assert ahead.kv_get("k")[0] == behind.kv_get("k")[0] == b"second"  # type: ignore[index]
    finally:
        ahead.db.close()
        behind.db.close()


def test_changes_stop_at_budget_on_version_boundaries(replica: Replica, other: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    replica.sql("INSERT INTO t VALUES (1), (2), (3)")  # one version, three rows
    for i in range(5):
        replica.kv_put(f"k{i}", b".")
    rounds = 0
    while True:
        wanted = {o: rs.minus(other.book().get(o, RangeSet())) for o, rs in replica.book().items()}
        wanted = {o: rs for o, rs in wanted.items() if len(rs)}
        if not wanted:
            break
        batch = replica.changes(wanted, budget=2)
        assert batch.seen, "every batch makes progress"
        other.apply(batch)
        rounds += 1
    assert rounds > 2
    assert other.sql("SELECT count(*) FROM t").rows == [[3]]
    assert other.kv_list("") == [f"k{i}" for i in range(5)]


def test_superseded_versions_are_vouched_for_without_rows(replica: Replica, other: Replica) -> None:
    for i in range(10):
        replica.kv_put("k", str(i).encode())
    batch = replica.changes({"n-a": RangeSet([(1, 10)])})
    assert len(batch.rows) == 1 and batch.seen == {"n-a": RangeSet([(1, 10)])}
    other.apply(batch)
    assert other.kv_get("k")[0] == b"9"  # type: ignore[index]


def test_snapshot_brings_a_fresh_replica_up_to_date(replica: Replica, other: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    replica.sql("INSERT INTO t VALUES (1, 'x')")
    replica.kv_put("a", b"1")
    replica.kv_put("b", b"2")
    replica.kv_delete("a")
    snap = replica.snapshot()
    assert snap.snapshot and snap.seen == replica.book()
    other.apply(parse_changes(snap.to_json()))
    assert other.kv_list("") == ["b"]
    assert other.sql("SELECT * FROM t").rows == [[1, "x"]]
    assert other.book() == replica.book()


def wire(replica: Replica) -> dict:  # type: ignore[type-arg]
    return replica.changes(everything(replica)).to_json()


@pytest.mark.parametrize("mutate", [
    lambda w: w.update(rows="nope"),
    lambda w: w["rows"][0].__setitem__(2, -5),                     # negative HLC
    lambda w: w["rows"][0].__setitem__(4, 99),                      # version outside what is vouched for
    lambda w: w["rows"][0].__setitem__(1, "not json"),
    lambda w: w["rows"][0].__setitem__(3, "bad origin!"),
    lambda w: w["rows"][0].__setitem__(6, {"key": {"$base64": "***"}}),
    lambda w: w["rows"][0].__setitem__(5, 1),                       # tombstone with values
    lambda w: w.update(namespace="../escape"),
    lambda w: w.update(tenant="Not A Tenant"),
    lambda w: w.update(seen={"n-a": [[3, 1]]}),
    lambda w: w.update(schema={"t": "DROP TABLE t"}),
])
def test_malformed_changes_are_refused(replica: Replica, mutate) -> None:  # type: ignore[no-untyped-def]
    replica.kv_put("k", b"v")
    data = wire(replica)
    mutate(data)
    with pytest.raises(MalformedChanges):
        parse_changes(data)


def test_changes_for_unknown_tables_are_refused_whole(replica: Replica, other: Replica) -> None:
    replica.kv_put("k", b"v")
    data = wire(replica)
    data["rows"].append(["ghost", "[1]", data["rows"][0][2], "n-a", 1, 0, {"id": 1}])
    with pytest.raises(MalformedChanges):
        other.apply(parse_changes(data))
    assert other.kv_list("") == [] and other.book() == {}  # nothing applied


def test_values_that_disagree_with_the_key_are_refused(replica: Replica, other: Replica) -> None:
    replica.kv_put("k", b"v")
    data = wire(replica)
    data["rows"][0][6]["key"] = "other"
    with pytest.raises(MalformedChanges):
        other.apply(parse_changes(data))
    assert other.kv_list("") == []


def test_changes_check_out_for_a_namespace_this_node_lacks(replica: Replica) -> None:
    from edgenode.state.merge import check_changes

    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    replica.sql("INSERT INTO t VALUES (1, 'x')")
    replica.kv_put("k", b"v")
    check_changes(parse_changes(wire(replica)), None)  # no error: every table is defined or built in
    data = wire(replica)
    data["rows"][-1][6]["extra"] = 1
    with pytest.raises(MalformedChanges):
        check_changes(parse_changes(data), None)


def test_key_value_changes_need_bytes_values(replica: Replica, other: Replica) -> None:
    replica.kv_put("k", b"v")
    data = wire(replica)
    data["rows"][0][6]["value"] = "a string, not bytes"
    with pytest.raises(MalformedChanges):
        other.check(parse_changes(data))
    assert other.kv_list("") == []


def test_changes_naming_unknown_columns_are_refused(replica: Replica, other: Replica) -> None:
    replica.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    replica.sql("INSERT INTO t VALUES (1, 'x')")
    other.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, w)")  # defined differently here
    other.kv_put("mine", b".")
    data = wire(replica)
    with pytest.raises(MalformedChanges):
        other.check(parse_changes(data))
    with pytest.raises(MalformedChanges):
        other.apply(parse_changes(data))
    assert other.kv_list("") == ["mine"] and other.sql("SELECT count(*) FROM t").rows == [[0]]


def test_pool_closes_least_recently_used(tmp_path: Path) -> None:
    def opener(tenant: str, ns: str) -> Replica:
        db = NamespaceDatabase(tmp_path / f"{ns}.db", readers=1, synchronous="OFF").open()
        return Replica(db, tenant, ns, "n-a", Hlc())

    pool = NamespacePool(opener, lambda t, ns: tmp_path / f"{ns}.db", capacity=3)
    held = pool.acquire("default", "held")
    assert held is not None
    for i in range(10):
        with pool.lease("default", f"ns{i}") as r:
            assert r is not None
            r.kv_put("k", str(i).encode())
    assert pool.open_count() == 3
    held.kv_put("still", b"open")  # in use: never closed under its caller
    pool.release(held)
    with pool.lease("default", "ns0") as r:
        assert r is not None and r.kv_get("k")[0] == b"0"  # type: ignore[index]
    with pool.lease("default", "absent", create=False) as r:
        assert r is None
    assert not (tmp_path / "absent.db").exists()
    pool.close_all()
    assert pool.open_count() == 0
