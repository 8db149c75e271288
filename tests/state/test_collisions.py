"""Rows of two replicas that would collide out of sight of last-writer-wins: refused up front, or visible at merge.

Each case is two replicas (real SQLite files) that each insert a row; either the
statement was refused before anything was written, with the table and column
named, or the merge refuses the batch and says why, losing neither row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.cluster import Hlc, RangeSet
from edgenode.errors import MalformedChanges, SqlNotReplicable
from edgenode.state import NamespaceDatabase, Replica
from edgenode.state import schema as schema_mod


def open_replica(path: Path, origin: str) -> Replica:
    db = NamespaceDatabase(path, readers=1, synchronous="OFF").open()
    return Replica(db, "default", "ns", origin, Hlc())


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    a, b = open_replica(tmp_path / "a.db", "n-a"), open_replica(tmp_path / "b.db", "n-b")
    yield a, b
    a.db.close()
    b.db.close()


def everything() -> dict[str, RangeSet]:
    return {o: RangeSet([(1, 1 << 40)]) for o in ("n-a", "n-b")}


def merge_both_ways(a: Replica, b: Replica) -> None:
    a_changes, b_changes = a.changes(everything()), b.changes(everything())
    b.apply(a_changes)
    a.apply(b_changes)


def tables(r: Replica) -> list[str]:
    return [row[0] for row in r.sql("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') "
                                    "AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' "
                                    "ORDER BY name").rows]


# -- refused at CREATE -------------------------------------------------------------


@pytest.mark.parametrize(("statements", "table", "column"), [
    (["CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE)"], "users", "email"),
    (["CREATE TABLE users (id TEXT PRIMARY KEY, org TEXT, email TEXT, UNIQUE (org, email))"], "users", "org, email"),
    (["CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT)", "CREATE UNIQUE INDEX by_email ON users (email)"],
     "users", "email"),
    (["CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT)",
      "CREATE UNIQUE INDEX live ON users (email) WHERE email IS NOT NULL"], "users", "email"),
    (["CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT)", "CREATE UNIQUE INDEX low ON users (lower(email))"],
     "users", "<expression>"),
    # Unique over the key, but 'A' and 'a' are one entry to the index and two keys to the clock.
    (["CREATE TABLE users (id TEXT PRIMARY KEY, v)", "CREATE UNIQUE INDEX ci ON users (id COLLATE NOCASE)"],
     "users", "id"),
    (["CREATE TABLE users (id TEXT PRIMARY KEY COLLATE NOCASE, v)"], "users", "id"),
    (["CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT)"], "notes", "id"),
])
def test_tables_whose_rows_could_collide_are_refused_at_create(
        pair: tuple[Replica, Replica], statements: list[str], table: str, column: str) -> None:
    a, b = pair
    *setup, last = statements
    for r in (a, b):  # each node tries the same schema: each is refused, so no row can ever collide
        for query in setup:
            r.sql(query)
        before = tables(r)
        with pytest.raises(SqlNotReplicable) as info:
            r.sql(last)
        assert info.value.status == 400 and info.value.code == "sql_not_replicable"
        assert (info.value.table, info.value.column) == (table, column)
        assert repr(table) in info.value.message and repr(column) in info.value.message
        assert tables(r) == before  # the CREATE rolled back whole
    merge_both_ways(a, b)


def test_the_refusal_is_a_400_naming_table_and_column_in_a_batch_too(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    a.kv_put("kept", b"1")
    with pytest.raises(SqlNotReplicable):
        a.sql_batch([("CREATE TABLE ok (id TEXT PRIMARY KEY)", None),
                     ("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE)", None)])
    assert tables(a) == [] and a.kv_get("kept") is not None


@pytest.mark.parametrize(("queries", "local"), [
    (["CREATE TABLE t (id TEXT PRIMARY KEY, n INT, UNIQUE (id, n))"], []),  # holds the whole key: cannot collide
    (["CREATE TABLE t (a TEXT, b TEXT, c TEXT, PRIMARY KEY (a, b), UNIQUE (b, a, c))"], []),
    (["CREATE TABLE t (id INTEGER PRIMARY KEY, v) WITHOUT ROWID"], []),  # SQLite assigns no key here
    (["CREATE TABLE t (id TEXT PRIMARY KEY, v)", "CREATE INDEX t_v ON t (v)"], []),  # not unique
    (["CREATE TABLE t (email TEXT UNIQUE, n INTEGER)"], ["t"]),  # no primary key: this node's only
])
def test_what_cannot_collide_is_allowed(pair: tuple[Replica, Replica], queries: list[str], local: list[str]) -> None:
    a, b = pair
    for query in queries:
        result = a.sql(query)
    assert result.not_replicated == local
    b.apply(a.changes(everything()))
    assert tables(b) == ([] if local else tables(a))


def test_a_unique_table_without_a_key_stays_local_and_so_does_its_index(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    assert a.sql("CREATE TABLE seen (email TEXT UNIQUE)").not_replicated == ["seen"]
    a.sql("CREATE INDEX seen_email ON seen (email)")
    a.sql("CREATE UNIQUE INDEX seen_email2 ON seen (email)")
    a.sql("INSERT INTO seen (email) VALUES ('x@example.org')")
    a.kv_put("k", b"v")
    # Before, the index of the local table was registered as replicated: the peer failed to create it
    # (no such table) and refused every later batch of the namespace.
    b.apply(a.changes(everything()))
    assert b.kv_get("k") is not None and "seen" not in tables(b)


# -- refused at INSERT ----------------------------------------------------------


@pytest.mark.parametrize("query", [
    "INSERT INTO notes (body) VALUES ('mine')",
    "INSERT INTO notes (id, body) VALUES (NULL, 'mine')",
    "INSERT INTO notes DEFAULT VALUES",
    "INSERT INTO notes (body) SELECT 'mine' UNION ALL SELECT 'yours'",
    "REPLACE INTO notes (body) VALUES ('mine')",
    "INSERT INTO notes (body) VALUES ('mine') ON CONFLICT (id) DO NOTHING",
])
def test_an_insert_leaving_the_integer_key_to_sqlite_is_refused(pair: tuple[Replica, Replica], query: str) -> None:
    a, b = pair
    for r in (a, b):
        r.sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        # Both nodes would assign id 1 to a different row; last-writer-wins would keep one of them.
        with pytest.raises(SqlNotReplicable) as info:
            r.sql(query)
        assert (info.value.table, info.value.column) == ("notes", "id") and info.value.status == 400
        assert r.sql("SELECT count(*) FROM notes").rows == [[0]]
    # Given explicitly, keys unique across nodes replicate as usual.
    a.sql("INSERT INTO notes (id, body) VALUES (?, ?)", [101, "from a"])
    b.sql("INSERT INTO notes (id, body) VALUES (?, ?)", [202, "from b"])
    merge_both_ways(a, b)
    for r in (a, b):
        assert r.sql("SELECT id, body FROM notes ORDER BY id").rows == [[101, "from a"], [202, "from b"]]


def test_a_null_primary_key_is_refused(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    for r in (a, b):
        r.sql("CREATE TABLE t (k TEXT PRIMARY KEY, v)")  # a rowid table: SQLite itself allows NULL keys
        # Two NULL-key rows on each node would share one clock entry: one row would reach the peer.
        with pytest.raises(SqlNotReplicable) as info:
            r.sql("INSERT INTO t (k, v) VALUES (NULL, ?)", [r.origin])
        assert (info.value.table, info.value.column) == ("t", "k")
        r.sql("INSERT INTO t VALUES (?, 1)", [r.origin])
        with pytest.raises(SqlNotReplicable):
            r.sql("UPDATE t SET k = NULL")
    merge_both_ways(a, b)
    assert a.sql("SELECT k FROM t ORDER BY k").rows == b.sql("SELECT k FROM t ORDER BY k").rows == [["n-a"], ["n-b"]]


def test_tables_made_before_the_guards_get_them_when_the_namespace_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    r = open_replica(path, "n-a")
    r.sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    r.db.close()
    # What a namespace written by the previous release looks like: no key guard, migration 2 not applied.
    conn = sqlite3.connect(path)
    conn.execute('DROP TRIGGER "_crdt_notes_key"')
    conn.execute("DELETE FROM _migrations WHERE name = 'state-0002-key-guards'")
    conn.commit()
    conn.close()
    r = open_replica(path, "n-a")
    try:
        with pytest.raises(SqlNotReplicable):
            r.sql("INSERT INTO notes (body) VALUES ('x')")
    finally:
        r.db.close()


# -- visible at merge -------------------------------------------------------------


def make_unique_table_the_old_way(r: Replica) -> None:
    """A UNIQUE table as a namespace from before the refusal holds it (or a peer still running that release)."""
    def create(conn: sqlite3.Connection) -> None:
        sql = "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE)"
        conn.execute(sql)
        schema_mod.install_triggers(conn, "users", ["id"])
        conn.execute("INSERT INTO _crdt_schema (name, type, tbl, sql, pk) VALUES ('users', 'table', 'users', ?, ?)",
                     (sql, json.dumps(["id"])))
    r.db.write_sync(create)


def test_a_collision_on_an_old_unique_table_is_refused_visibly_and_loses_no_row(
        pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    for r in (a, b):
        make_unique_table_the_old_way(r)
        r.sql("INSERT INTO users VALUES (?, 'same@example.org')", [f"user-{r.origin}"])
    # INSERT OR REPLACE used to delete the local row in the way, here only and with no tombstone.
    with pytest.raises(MalformedChanges) as info:
        b.apply(a.changes(everything()))
    assert "collides" in info.value.message and "users" in info.value.message
    with pytest.raises(MalformedChanges):
        a.apply(b.changes(everything()))
    assert a.sql("SELECT id FROM users").rows == [["user-n-a"]]
    assert b.sql("SELECT id FROM users").rows == [["user-n-b"]]


def test_a_peer_table_with_fewer_columns_is_refused_not_mixed(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.sql("CREATE TABLE t (id TEXT PRIMARY KEY, v)")
    b.sql("CREATE TABLE t (id TEXT PRIMARY KEY, v, note)")  # defined differently here
    b.sql("INSERT INTO t VALUES ('x', 'b', 'kept')")
    a.sql("INSERT INTO t VALUES ('x', 'a')")  # later: it wins last-writer-wins
    with pytest.raises(MalformedChanges) as info:
        b.apply(a.changes(everything()))
    assert "note" in info.value.message
    assert b.sql("SELECT * FROM t").rows == [["x", "b", "kept"]]


def test_generated_columns_replicate(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.sql("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, twice INTEGER AS (n * 2))")
    a.sql("INSERT INTO t (id, n) VALUES ('x', 21)")
    b.apply(a.changes(everything()))  # a generated column was sent and refused as a column b lacks
    assert b.sql("SELECT id, n, twice FROM t").rows == [["x", 21, 42]]


def test_same_key_with_equal_timestamps_resolves_the_same_everywhere(tmp_path: Path) -> None:
    # Two nodes whose clocks read the same millisecond and write the same key: the origin decides, everywhere.
    clocks = [Hlc(now=lambda: 1_800_000_000.0, max_offset_ms=10**9) for _ in range(2)]
    a, b = (Replica(NamespaceDatabase(tmp_path / f"{o}.db", readers=1, synchronous="OFF").open(), "default", "ns",
                    o, hlc) for o, hlc in zip(("n-a", "n-b"), clocks, strict=True))
    try:
        _, ca = a.kv_put("k", b"from a")
        _, cb = b.kv_put("k", b"from b")
        assert ca.hlc == cb.hlc
        merge_both_ways(a, b)
        assert a.kv_get("k") == b.kv_get("k") and a.kv_get("k")[0] == b"from b"  # type: ignore[index]
    finally:
        a.db.close()
        b.db.close()


def test_a_key_the_clock_cannot_hold_exactly_is_refused(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.sql("CREATE TABLE m (k REAL PRIMARY KEY, v)")
    a.sql("INSERT INTO m VALUES (1.5, 'exact')")
    # 0.1 + 0.2 is 0.30000000000000004, which the clock would record as 0.3: the row would never be sent.
    with pytest.raises(SqlNotReplicable) as info:
        a.sql("INSERT INTO m VALUES (0.1 + 0.2, 'inexact')")
    assert (info.value.table, info.value.column) == ("m", "k")
    b.apply(a.changes(everything()))
    assert b.sql("SELECT k, v FROM m").rows == a.sql("SELECT k, v FROM m").rows == [[1.5, "exact"]]


def test_a_peer_row_breaking_a_local_constraint_is_refused_visibly(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.sql("CREATE TABLE t (id TEXT PRIMARY KEY, v)")
    b.sql("CREATE TABLE t (id TEXT PRIMARY KEY, v CHECK (v > 0))")  # same columns, defined differently
    a.sql("INSERT INTO t VALUES ('x', -1)")
    with pytest.raises(MalformedChanges) as info:
        b.apply(a.changes(everything()))
    assert "constraint" in info.value.message and "defined differently" in info.value.message
