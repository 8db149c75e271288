"""The bookkeeping schema inside every namespace database, and change capture by triggers.

Every replicated table (the built-in ``_kv``, the schema log ``_crdt_schema`` and
each user table with a primary key) gets three ``AFTER`` triggers that stamp the
row's entry in ``_crdt_clock`` with the writing transaction's HLC, origin node and
per-origin version. The triggers fire only while a local write is being captured
(``crdt_capturing()``), so applying a peer's change never re-stamps it. Because
they run inside the statement, the change is recorded in the same transaction as
the write, whatever path the write took (REPLACE, UPSERT, cascades).
"""

from __future__ import annotations

import json
import sqlite3

from edgenode.cluster.ranges import RangeSet
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


MIGRATIONS = [Migration("state-0001-kv-and-bookkeeping", _create)]


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
    Returns the names of tables that are *not* replicated (no primary key).
    """
    known = {r[0] for r in conn.execute("SELECT name FROM _crdt_schema")}
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
            install_triggers(conn, name, pk)
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
