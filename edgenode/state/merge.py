"""Replication data in and out of one namespace database: reading changes, checking and applying them.

Reading runs on a reader connection, applying on the writer; both take the
connection they run on. Applying is last-writer-wins per row on (HLC, origin),
with tombstones, so the result does not depend on the order changes arrive in.
A tombstone may go once every member has seen it (:func:`collect_tombstones`):
before that, a member still holding the older live row would hand it back.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterable, Mapping

from edgenode.cluster.ranges import RangeSet
from edgenode.errors import MalformedChanges
from edgenode.state import schema
from edgenode.state.guard import Guard
from edgenode.state.payload import Changes, Row

log = logging.getLogger(__name__)

_CREATE = re.compile(r"^\s*CREATE\s+(TABLE|UNIQUE\s+INDEX|INDEX|VIEW)\s", re.IGNORECASE)


def _load_values(conn: sqlite3.Connection, rows: list[Row], pks: dict[str, list[str]]) -> list[Row]:
    out: list[Row] = []
    stored: dict[str, list[str]] = {}
    for row in rows:
        if not row.deleted:
            cols = pks.get(row.tbl)
            if cols is None:
                continue
            # Stored columns only: a generated column is computed again on the receiver, and cannot be inserted.
            names = stored.get(row.tbl) or stored.setdefault(row.tbl, schema.columns(conn, row.tbl))
            where = " AND ".join(f"{schema.quote(c)} IS ?" for c in cols)
            found = conn.execute(f"SELECT {', '.join(schema.quote(c) for c in names)} FROM {schema.quote(row.tbl)} "
                                 f"WHERE {where}", json.loads(row.pk)).fetchone()
            if found is None:
                continue  # cannot happen while triggers hold; never send a live row without values
            row.values = dict(zip(names, found, strict=True))
        out.append(row)
    return out


def _schema_for(conn: sqlite3.Connection, rows: list[Row]) -> dict[str, str]:
    tables = {r.tbl for r in rows if r.tbl not in schema.BUILTIN_PK}
    out: dict[str, str] = {}
    for name in tables:
        found = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        if found:
            out[name] = found[0]
    return out


def _tables(conn: sqlite3.Connection, rows: list[Row]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tbl in {r.tbl for r in rows}:
        pk = schema.primary_key(conn, tbl)
        if pk:
            out[tbl] = pk
    return out


def _finish(conn: sqlite3.Connection, out: Changes) -> Changes:
    pks = schema.replicated_tables(conn) | _tables(conn, out.rows)
    out.rows = _load_values(conn, out.rows, pks)
    out.schema = _schema_for(conn, out.rows)
    return out


def read_changes(conn: sqlite3.Connection, tenant: str, namespace: str, wanted: dict[str, RangeSet],
                 budget: int) -> Changes:
    """Rows of the ``wanted`` versions still current, cut at a version boundary after ``budget`` rows."""
    out = Changes(tenant, namespace)
    count = 0
    full = False
    book = schema.read_book(conn)  # vouch only for versions this replica has actually seen
    for origin, asked in sorted(wanted.items()):
        ranges = asked.intersect(book.get(origin, RangeSet()))
        for lo, hi in ranges:
            if count >= budget:
                full = True
                break
            upto, last = hi, None
            for tbl, pk, h, o, v, d in conn.execute(
                "SELECT tbl, pk, hlc, origin, version, deleted FROM _crdt_clock "
                "WHERE origin = ? AND version BETWEEN ? AND ? ORDER BY version", (origin, lo, hi)
            ):
                if count >= budget and v != last:
                    upto = lo - 1 if last is None else last  # stop at a version boundary
                    full = True
                    break
                out.rows.append(Row(tbl, pk, h, o, v, bool(d), None))
                count += 1
                last = v
            if upto >= lo:
                out.seen.setdefault(origin, RangeSet()).add(lo, upto)
            if full:
                break
        if full:
            break
    return _finish(conn, out)


def read_snapshot(conn: sqlite3.Connection, tenant: str, namespace: str) -> Changes:
    """The whole replicated state of a namespace and its book, from one read transaction."""
    out = Changes(tenant, namespace, snapshot=True)
    out.seen = schema.read_book(conn)
    out.rows = [Row(r[0], r[1], r[2], r[3], r[4], bool(r[5]), None) for r in conn.execute(
        "SELECT tbl, pk, hlc, origin, version, deleted FROM _crdt_clock")]
    return _finish(conn, out)


def _run_peer_create(conn: sqlite3.Connection, name: str, sql: str) -> None:
    """Run a peer's CREATE statement for a user object under the SQL guard; MalformedChanges otherwise."""
    if not _CREATE.match(sql) or schema.is_internal(name):
        raise MalformedChanges(f"schema entry {name!r} is not a CREATE statement of a user object")
    guard = Guard(read_only=False)
    conn.set_authorizer(guard)
    try:
        conn.execute(sql)
    except (sqlite3.Error, ValueError) as exc:
        raise MalformedChanges(f"schema entry {name!r} failed: {guard.refusal or exc}") from exc
    finally:
        conn.set_authorizer(None)


def ensure_object(conn: sqlite3.Connection, name: str, sql: str) -> None:
    """Create a table, index or view a peer defined, if this namespace lacks it."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
        return
    _run_peer_create(conn, name, sql)
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    if kind is None:
        raise MalformedChanges(f"schema entry {name!r} did not create {name!r}")
    if kind[0] == "table":
        pk = schema.primary_key(conn, name)
        if not pk:
            raise MalformedChanges(f"table {name!r} has no primary key and cannot replicate")
        schema.install_triggers(conn, name, pk)


def _restamp_lost_versions(conn: sqlite3.Connection, changes: Changes, origin: str) -> None:
    """Give this node's rows fresh versions if the peer has seen versions of this node that this file lacks.

    Peers learn this node's versions from this node only, so a peer ahead of the file's own
    head means the file lost its history: restored from a backup, or deleted and started
    empty. Writes made since then reused version numbers the fleet has already seen, for
    other writes: neither side would ever ask the other for them. So this node's rows move
    to one new version, past what the peer has seen, and go out again (their clocks are
    unchanged, so last-writer-wins decides as before, and a peer holding the same write
    skips it); and the versions of this node the file claimed are forgotten, so it asks the
    fleet for what they held.
    """
    theirs = changes.seen.get(origin)
    head = conn.execute("SELECT coalesce(max(hi), 0) FROM _crdt_book WHERE origin = ?", (origin,)).fetchone()[0]
    if theirs is None or theirs.head() <= head:
        return
    version = theirs.head() + 1
    conn.execute("DELETE FROM _crdt_book WHERE origin = ?", (origin,))
    moved = conn.execute("UPDATE _crdt_clock SET version = ? WHERE origin = ?", (version, origin)).rowcount
    schema.book_add(conn, origin, version, version)
    log.warning("this namespace had lost versions of this node (restored from a backup, deleted and started "
                "again, or another node uses this node's id); its rows were stamped again so they replicate",
                extra={"tenant": changes.tenant, "namespace": changes.namespace, "own_head": head,
                       "peer_head": version - 1, "rows": moved})


def apply_changes(conn: sqlite3.Connection, changes: Changes, local_origin: str | None = None) -> int:
    """Apply a peer's changes on the writer (inside its transaction); returns how many rows won.

    ``local_origin`` is this node's id: if the peer has seen versions of it that this
    namespace lacks, this node's rows get a fresh version first (added to ``changes.seen``).
    """
    check_changes(changes, conn)
    if local_origin is not None:
        _restamp_lost_versions(conn, changes, local_origin)
    for name, sql in sorted(changes.schema.items()):
        ensure_object(conn, name, sql)
    # Schema rows first (tables before indexes), so every row finds its table.
    ordered = sorted(changes.rows, key=lambda r: (
        r.tbl != "_crdt_schema", (r.values or {}).get("type") != "table"))
    pks: dict[str, list[str]] = dict(schema.BUILTIN_PK)
    applied = 0
    for row in ordered:
        if row.tbl == "_crdt_schema" and row.values is not None:
            ensure_object(conn, str(row.values.get("name")), str(row.values.get("sql")))
        if row.tbl not in pks:
            pk = schema.primary_key(conn, row.tbl) if not schema.is_internal(row.tbl) else []
            if not pk:
                raise MalformedChanges(f"change for unknown or unreplicated table {row.tbl!r}")
            pks[row.tbl] = pk
        if _apply_row(conn, row, pks[row.tbl]):
            applied += 1
    for origin, ranges in changes.seen.items():
        for lo, hi in ranges:
            schema.book_add(conn, origin, lo, hi)
    return applied


def _apply_row(conn: sqlite3.Connection, row: Row, pk_cols: list[str]) -> bool:
    local = conn.execute("SELECT hlc, origin FROM _crdt_clock WHERE tbl = ? AND pk = ?",
                         (row.tbl, row.pk)).fetchone()
    if local is not None and (local[0], local[1]) >= row.clock():
        return False
    pk_values = json.loads(row.pk)
    if len(pk_values) != len(pk_cols):
        raise MalformedChanges(f"change for {row.tbl!r} has a primary key of the wrong length")
    table = schema.quote(row.tbl)
    try:
        if row.deleted:
            where = " AND ".join(f"{schema.quote(c)} IS ?" for c in pk_cols)
            conn.execute(f"DELETE FROM {table} WHERE {where}", pk_values)
        else:
            assert row.values is not None
            if [row.values.get(c) for c in pk_cols] != pk_values:
                raise MalformedChanges(f"change for {row.tbl!r} has values that disagree with its key")
            cols = list(row.values)
            # An upsert on the primary key, not INSERT OR REPLACE: REPLACE would also delete any *other*
            # row the new one collides with on a UNIQUE column, here only and without a tombstone.
            others = [c for c in cols if c not in pk_cols]
            action = ("DO UPDATE SET " + ", ".join(f"{schema.quote(c)} = excluded.{schema.quote(c)}" for c in others)
                      if others else "DO NOTHING")
            conn.execute(
                f"INSERT INTO {table} ({', '.join(schema.quote(c) for c in cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)}) "
                f"ON CONFLICT ({', '.join(schema.quote(c) for c in pk_cols)}) {action}",
                [row.values[c] for c in cols])
    except sqlite3.IntegrityError as exc:
        what = ("collides with a different row here on a UNIQUE column" if "UNIQUE" in str(exc)
                else "breaks a constraint of the table here (it is defined differently on the two nodes)")
        raise MalformedChanges(
            f"change for {row.tbl!r} key {row.pk} from {row.origin} {what} ({exc}); the namespace cannot merge "
            "until one of the rows is changed", table=row.tbl, pk=row.pk) from exc
    except sqlite3.Error as exc:
        raise MalformedChanges(f"change for {row.tbl!r} does not fit the local table: {exc}") from exc
    conn.execute(
        "INSERT INTO _crdt_clock (tbl, pk, hlc, origin, version, deleted) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (tbl, pk) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, "
        "version = excluded.version, deleted = excluded.deleted",
        (row.tbl, row.pk, row.hlc, row.origin, row.version, int(row.deleted)))
    return True


def check_changes(changes: Changes, conn: sqlite3.Connection | None) -> None:
    """Check that every row names a replicated table and fits its key; ``conn`` is None for a new namespace.

    Tables the namespace lacks must come with a CREATE statement in the same changes;
    those are tried in a scratch in-memory database under the SQL guard.
    """
    scratch = sqlite3.connect(":memory:")
    try:
        definitions = dict(changes.schema)
        for row in changes.rows:
            if row.tbl == "_crdt_schema" and row.values and row.values.get("type") == "table":
                definitions.setdefault(str(row.values.get("name")), str(row.values.get("sql")))
        keys: dict[str, list[str]] = dict(schema.BUILTIN_PK)
        known_columns: dict[str, set[str]] = {k: set(v) for k, v in schema.BUILTIN_COLUMNS.items()}
        keys_from_scratch: set[str] = set()
        for name, sql in definitions.items():
            if conn is not None and conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                                 (name,)).fetchone():
                continue
            _run_peer_create(scratch, name, sql)
            pk = schema.primary_key(scratch, name)
            if not pk:
                raise MalformedChanges(f"table {name!r} does not exist or has no primary key")
            keys[name] = pk
            keys_from_scratch.add(name)
        for row in changes.rows:
            if row.tbl not in keys:
                pk = schema.primary_key(conn, row.tbl) if conn is not None and not schema.is_internal(row.tbl) else []
                if not pk:
                    raise MalformedChanges(f"change for unknown or unreplicated table {row.tbl!r}")
                keys[row.tbl] = pk
            pk_values = json.loads(row.pk)
            if len(pk_values) != len(keys[row.tbl]):
                raise MalformedChanges(f"change for {row.tbl!r} has a primary key of the wrong length")
            if row.values is not None and [row.values.get(c) for c in keys[row.tbl]] != pk_values:
                raise MalformedChanges(f"change for {row.tbl!r} has values that disagree with its key")
            if row.tbl == "_kv" and row.values is not None and not (
                    isinstance(row.values.get("key"), str) and isinstance(row.values.get("value"), bytes)):
                raise MalformedChanges("a key-value change needs a string key and a bytes value")
            if row.values is not None:
                if row.tbl not in known_columns:
                    source = scratch if row.tbl in keys_from_scratch or conn is None else conn
                    known_columns[row.tbl] = set(schema.columns(source, row.tbl))
                unknown = set(row.values) - known_columns[row.tbl]
                if unknown:
                    raise MalformedChanges(f"change for {row.tbl!r} names columns it lacks here: {sorted(unknown)}")
                lacking = known_columns[row.tbl] - set(row.values)
                if lacking:  # the table is defined differently there: applying would mix two rows' columns
                    raise MalformedChanges(f"change for {row.tbl!r} lacks columns it has here: {sorted(lacking)}")
    finally:
        scratch.close()


def acknowledged_by_all(books: Iterable[Mapping[str, RangeSet]]) -> dict[str, int]:
    """Per origin, the highest version every one of ``books`` has seen with nothing missing below it.

    ``books`` are the members' seen versions of one namespace (this node's included); an
    origin some member has not seen at all is left out, so none of its tombstones go.
    """
    out: dict[str, int] | None = None
    for book in books:
        heads = {}
        for origin, ranges in book.items():
            first = next(iter(ranges), None)
            if first is not None and first[0] == 1:
                heads[origin] = first[1]
        out = heads if out is None else {o: min(v, heads[o]) for o, v in out.items() if o in heads}
    return out or {}


def collect_tombstones(conn: sqlite3.Connection, acknowledged: Mapping[str, int], before_hlc: int = 0) -> int:
    """Delete tombstones written by ``origin`` at versions up to ``acknowledged[origin]``; returns how many went.

    Call it only with versions every member has seen (:func:`acknowledged_by_all`): a member
    that has not yet applied a delete would otherwise send the deleted row back for good.
    ``before_hlc`` (if not 0) keeps tombstones stamped at or after it.
    """
    gone = 0
    for origin, upto in acknowledged.items():
        gone += conn.execute("DELETE FROM _crdt_clock WHERE origin = ? AND version <= ? AND deleted = 1 "
                             "AND (? = 0 OR hlc < ?)", (origin, upto, before_hlc, before_hlc)).rowcount
    return gone
