"""The bookkeeping schema inside every namespace database, and change capture by triggers.

Every replicated table (the built-in ``_kv``, the schema log ``_crdt_schema`` and
each user table with a primary key) gets three ``AFTER`` triggers that stamp the
row's entry in ``_crdt_clock`` with the writing transaction's HLC, origin node and
per-origin version. The triggers fire only while a local write is being captured
(``crdt_capturing()``), so applying a peer's change never re-stamps it. Because
they run inside the statement, the change is recorded in the same transaction as
the write, whatever path the write took (REPLACE, UPSERT, cascades).

A replicated row's identity is its primary key and nothing else: two nodes that
write the same key write the same row, and last-writer-wins decides. So whatever
would let two *different* rows collide on another node, out of sight of that
rule, is refused here with ``sql_not_replicable`` before anything is written:

* at CREATE (table or index): a UNIQUE constraint or unique index that does not
  contain the whole primary key (two nodes insert different keys with the same
  unique value; the merge would have to drop one), AUTOINCREMENT (its only job is
  to assign keys), and a primary key column with a collation other than BINARY
  (``'A'`` and ``'a'`` are one row to SQLite but two keys to the clock);
* at INSERT (and UPDATE), by one more edgenode trigger per table: a primary key
  SQLite would assign itself (an ``INTEGER PRIMARY KEY`` given no value, NULL or
  -1, which is what SQLite shows a trigger for all three), a NULL in a primary
  key column (rowid tables allow it, and every such row would share one clock
  entry), and a key value the clock's JSON cannot hold exactly (a REAL past 15
  digits: the row would be recorded under another key and never sent).

Tables without a primary key never replicate, so none of this applies to them.
ALTER TABLE is refused outright (see :mod:`edgenode.state.guard`).
"""

from __future__ import annotations

import json
import re
import sqlite3

from edgenode.cluster.ranges import RangeSet
from edgenode.errors import SqlNotReplicable
from edgenode.store import Migration

#: Tables edgenode manages; user SQL may read but not write them.
INTERNAL_PREFIXES = ("_crdt", "_kv", "_migrations", "sqlite_")
#: Built-in replicated tables and their primary keys.
BUILTIN_PK = {"_kv": ["key"], "_crdt_schema": ["name"]}
BUILTIN_COLUMNS = {"_kv": {"key", "value"}, "_crdt_schema": {"name", "type", "tbl", "sql", "pk"}}


def is_internal(name: str) -> bool:
    """Whether ``name`` is one of edgenode's own tables (or SQLite's)."""
    return name.lower().startswith(INTERNAL_PREFIXES)


def quote(name: str) -> str:
    """An SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE _kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
    conn.execute(
        """CREATE TABLE _crdt_clock (
            tbl TEXT NOT NULL, pk TEXT NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
            version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (tbl, pk)) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX _crdt_clock_origin ON _crdt_clock (origin, version)")
    conn.execute(
        """CREATE TABLE _crdt_book (origin TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
            PRIMARY KEY (origin, lo)) WITHOUT ROWID"""
    )
    # The replicated schema log: one row per user table, index or view, with its CREATE statement.
    conn.execute(
        """CREATE TABLE _crdt_schema (name TEXT PRIMARY KEY, type TEXT NOT NULL, tbl TEXT NOT NULL,
            sql TEXT NOT NULL, pk TEXT)"""
    )
    for table, pk in BUILTIN_PK.items():
        install_triggers(conn, table, pk)


def _guard_existing_tables(conn: sqlite3.Connection) -> None:
    for name, pk in conn.execute("SELECT name, pk FROM _crdt_schema WHERE type = 'table'").fetchall():
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone():
            install_triggers(conn, name, json.loads(pk))


MIGRATIONS = [
    Migration("state-0001-kv-and-bookkeeping", _create),
    Migration("state-0002-key-guards", _guard_existing_tables),
]

#: What the key guard trigger raises; :func:`key_refusal` turns it into the client's error.
_KEY_REFUSAL = "edgenode-key-refused"
_LITERALS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]")
_AUTOINCREMENT = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)


def _refusal(table: str, column: str, why: str) -> SqlNotReplicable:
    return SqlNotReplicable(f"table {table!r}, column {column!r}: {why}", table=table, column=column)


def rowid_alias(conn: sqlite3.Connection, table: str, pk: list[str]) -> bool:
    """Whether ``table``'s primary key is an ``INTEGER PRIMARY KEY`` that SQLite assigns when none is given."""
    if len(pk) != 1 or any(r[3] == "pk" for r in conn.execute(f"PRAGMA index_list({quote(table)})")):
        return False  # a key with an index of its own is no rowid alias (WITHOUT ROWID, composite, INT, DESC)
    return any(r[1] == pk[0] and str(r[2]).upper() == "INTEGER"
               for r in conn.execute(f"PRAGMA table_info({quote(table)})"))


def _unique_collision(conn: sqlite3.Connection, index: str, pk: list[str]) -> list[str] | None:
    """The columns of a unique index that could reject a row another node wrote (None: it cannot)."""
    cols = [(r[2], str(r[4]).upper()) for r in conn.execute(f"PRAGMA index_xinfo({quote(index)})") if r[5]]
    # An index holding the whole primary key, compared byte for byte, can only reject a row with the same key.
    if all((c, "BINARY") in cols for c in pk):
        return None
    return [c if c is not None else "<expression>" for c, _ in cols]


def check_table(conn: sqlite3.Connection, table: str, pk: list[str]) -> None:
    """SqlNotReplicable if rows of a new replicated table could collide across nodes beyond its primary key."""
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if sql and _AUTOINCREMENT.search(_LITERALS.sub("", sql[0])):
        raise _refusal(table, pk[0], "AUTOINCREMENT assigns keys on each node alone, so two nodes would hand out "
                       "the same key for different rows and one would be lost; give every row its key "
                       "(a random or UUID key, or ids the application makes unique across nodes)")
    for _, index, _, origin, _ in conn.execute(f"PRAGMA index_list({quote(table)})").fetchall():
        if origin == "pk":
            for r in conn.execute(f"PRAGMA index_xinfo({quote(index)})"):
                if r[5] and str(r[4]).upper() != "BINARY":
                    raise _refusal(table, r[2], f"a primary key with COLLATE {r[4]} makes keys that differ in bytes "
                                   "one row, which replication cannot tell apart; use the default collation")
        elif origin == "u":
            check_index(conn, table, index, pk)


def check_index(conn: sqlite3.Connection, table: str, index: str, pk: list[str]) -> None:
    """SqlNotReplicable if ``index`` on replicated ``table`` is unique over anything less than the primary key."""
    if not any(r[1] == index and r[2] for r in conn.execute(f"PRAGMA index_list({quote(table)})")):
        return
    cols = _unique_collision(conn, index, pk)
    if cols is not None:
        raise _refusal(table, ", ".join(cols), f"a UNIQUE constraint or index beyond the primary key {pk} "
                       "lets two nodes each insert a row with the same value; merging them would drop one "
                       "without a trace. Make the unique column the primary key, or check uniqueness in the "
                       "application")


def key_refusal(exc: sqlite3.Error) -> SqlNotReplicable | None:
    """The client's error for a statement the key guard trigger stopped, or None for any other error."""
    message = str(exc)
    if not message.startswith(_KEY_REFUSAL + ":"):
        return None
    kind, table, column = json.loads(message[len(_KEY_REFUSAL) + 1:])
    if kind == "auto":
        return _refusal(table, column, "this INSERT leaves the INTEGER PRIMARY KEY to SQLite, which assigns it "
                        "on each node alone: two nodes would give different rows the same key and one would be "
                        "lost. Give the key explicitly (e.g. a random 63-bit integer), or use a TEXT key such "
                        "as a UUID (-1 is taken for a missing key too)")
    if kind == "inexact":
        return _refusal(table, column, "this primary key value does not survive as JSON (a REAL with more than 15 "
                        "significant digits): replication names rows by their key as JSON, so it would lose "
                        "the row; use an integer or text key")
    return _refusal(table, column, "a primary key cannot be NULL in a replicated table: every such row "
                    "would share one identity across the fleet")


def _key_guards(conn: sqlite3.Connection, table: str, pk: list[str]) -> None:
    q = quote(table)

    def raise_(kind: str, column: str) -> str:
        text = f"{_KEY_REFUSAL}:{json.dumps([kind, table, column])}".replace("'", "''")
        return f"SELECT RAISE(ABORT, '{text}')"

    alias = rowid_alias(conn, table, pk)
    checks = []
    for col in pk:
        new = f"NEW.{quote(col)}"
        if alias:  # SQLite shows a BEFORE INSERT trigger -1 for a rowid it is about to assign (no value, or NULL)
            checks.append(f"{raise_('auto', col)} WHERE {new} = -1;")
            continue
        checks.append(f"{raise_('null', col)} WHERE {new} IS NULL;")
        # The clock names a row by its key as JSON, which keeps a REAL to 15 digits only.
        checks.append(f"{raise_('inexact', col)} WHERE typeof({new}) = 'real' "
                      f"AND json_extract(json_array({new}), '$[0]') IS NOT {new};")
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {quote('_crdt_' + table + '_key')} BEFORE INSERT ON {q} "
        f"WHEN crdt_capturing() BEGIN {' '.join(checks)} END"
    )
    if not alias:
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS {quote('_crdt_' + table + '_rekey')} BEFORE UPDATE ON {q} "
            f"WHEN crdt_capturing() BEGIN {' '.join(checks)} END"
        )


def install_triggers(conn: sqlite3.Connection, table: str, pk: list[str]) -> None:
    """Create the capture triggers of a replicated table."""
    q = quote(table)
    lit = "'" + table.replace("'", "''") + "'"

    def key(row: str) -> str:
        return "json_array(" + ", ".join(f"{row}.{quote(c)}" for c in pk) + ")"

    def stamp(row: str, deleted: int) -> str:
        return (
            f"INSERT INTO _crdt_clock (tbl, pk, hlc, origin, version, deleted) "
            f"VALUES ({lit}, {key(row)}, crdt_hlc(), crdt_origin(), crdt_version(), {deleted}) "
            f"ON CONFLICT (tbl, pk) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, "
            f"version = excluded.version, deleted = excluded.deleted;"
        )

    base = "_crdt_" + table
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {quote(base + '_ins')} AFTER INSERT ON {q} "
        f"WHEN crdt_capturing() BEGIN {stamp('NEW', 0)} END"
    )
    # A primary key change is a delete of the old row and an insert of the new one.
    old_stamp = stamp("OLD", 1).replace(
        f"VALUES ({lit}, {key('OLD')}, crdt_hlc(), crdt_origin(), crdt_version(), 1) ",
        f"SELECT {lit}, {key('OLD')}, crdt_hlc(), crdt_origin(), crdt_version(), 1 "
        f"WHERE {key('OLD')} IS NOT {key('NEW')} ",
    )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {quote(base + '_upd')} AFTER UPDATE ON {q} "
        f"WHEN crdt_capturing() BEGIN {old_stamp} {stamp('NEW', 0)} END"
    )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {quote(base + '_del')} AFTER DELETE ON {q} "
        f"WHEN crdt_capturing() BEGIN {stamp('OLD', 1)} END"
    )
    if table not in BUILTIN_PK:
        _key_guards(conn, table, pk)


def primary_key(conn: sqlite3.Connection, table: str) -> list[str]:
    """The primary key columns of ``table`` in key order (empty: no declared primary key)."""
    if table in BUILTIN_PK:
        return list(BUILTIN_PK[table])
    cols = [(r[5], r[1]) for r in conn.execute(f"PRAGMA table_info({quote(table)})") if r[5]]
    return [name for _, name in sorted(cols)]


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The columns of ``table`` (empty when it does not exist)."""
    return [r[1] for r in conn.execute(f"PRAGMA table_info({quote(table)})")]


def schema_version(conn: sqlite3.Connection) -> int:
    """SQLite's schema cookie: changes whenever any CREATE/DROP/ALTER commits or runs."""
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def register_new_objects(conn: sqlite3.Connection) -> list[str]:
    """Record user tables, indexes and views not yet in ``_crdt_schema``; trigger tables with a primary key.

    Runs inside the capturing write, so each registration is itself a replicated change.
    Returns the names of tables that are *not* replicated (no primary key). Raises
    SqlNotReplicable (and the write rolls back) for a table or index whose rows could
    collide across nodes beyond the primary key.
    """
    known = {r[0] for r in conn.execute("SELECT name FROM _crdt_schema")}
    replicated = replicated_tables(conn)
    local_only: list[str] = []
    rows = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE type IN ('table', 'index', 'view') AND sql IS NOT NULL ORDER BY type = 'table' DESC, rowid"
    ).fetchall()
    for kind, name, tbl, sql in rows:
        if name in known or is_internal(name) or is_internal(tbl):
            continue
        pk: list[str] | None = None
        if kind == "table":
            pk = primary_key(conn, name)
            if not pk:
                local_only.append(name)
                continue
            check_table(conn, name, pk)
            install_triggers(conn, name, pk)
            replicated[name] = pk
        elif kind == "index":
            if tbl not in replicated:
                continue  # an index of a local table stays local with it (peers lack the table)
            check_index(conn, tbl, name, replicated[tbl])
        conn.execute(
            "INSERT INTO _crdt_schema (name, type, tbl, sql, pk) VALUES (?, ?, ?, ?, ?)",
            (name, kind, tbl, sql, json.dumps(pk) if pk else None),
        )
    return local_only


def replicated_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every replicated table and its primary key, built-ins included."""
    out = dict(BUILTIN_PK)
    for name, pk in conn.execute("SELECT name, pk FROM _crdt_schema WHERE type = 'table'"):
        out[name] = json.loads(pk)
    return out


def book_add(conn: sqlite3.Connection, origin: str, lo: int, hi: int) -> None:
    """Mark versions ``lo..hi`` of ``origin`` as seen, merging with neighbouring ranges."""
    rows = conn.execute(
        "SELECT lo, hi FROM _crdt_book WHERE origin = ? AND hi >= ? AND lo <= ?", (origin, lo - 1, hi + 1)
    ).fetchall()
    for a, b in rows:
        lo, hi = min(lo, a), max(hi, b)
    conn.execute("DELETE FROM _crdt_book WHERE origin = ? AND hi >= ? AND lo <= ?", (origin, lo - 1, hi + 1))
    conn.execute("INSERT INTO _crdt_book (origin, lo, hi) VALUES (?, ?, ?)", (origin, lo, hi))


def read_book(conn: sqlite3.Connection) -> dict[str, RangeSet]:
    """Every origin's seen versions."""
    book: dict[str, RangeSet] = {}
    for origin, lo, hi in conn.execute("SELECT origin, lo, hi FROM _crdt_book ORDER BY origin, lo"):
        book.setdefault(origin, RangeSet()).add(lo, hi)
    return book
