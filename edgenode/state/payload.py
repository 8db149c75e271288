"""Replication data on the wire: one namespace's rows and seen versions, parsed and checked.

A change is a row's latest state: ``[table, pk, hlc, origin, version, deleted, values]``
where ``pk`` is the JSON array of its primary key values and ``values`` maps
column to value (``{"$base64": ...}`` for blobs; ``null`` for a tombstone).
``seen`` lists, per origin, the version ranges the sender vouches for: versions
in them that carry no row were superseded by a later write the receiver gets
(or has) under that later write's own origin and version.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgenode.auth import validate_tenant
from edgenode.cluster.ranges import RangeSet
from edgenode.errors import EdgenodeError, MalformedChanges
from edgenode.state.names import NAMESPACE, ORIGIN

MAX_HLC = (1 << 63) - 1
_CREATE = re.compile(r"^\s*CREATE\s+(TABLE|UNIQUE\s+INDEX|INDEX|VIEW)\s", re.IGNORECASE)
_TABLE = re.compile(r"^[^\x00]{1,256}\Z")


@dataclass
class Row:
    """One row's latest state and the clock that wrote it."""

    tbl: str
    pk: str
    hlc: int
    origin: str
    version: int
    deleted: bool
    values: dict[str, Any] | None

    def to_json(self) -> list[Any]:
        """The wire form."""
        vals = None if self.values is None else {k: _enc(v) for k, v in self.values.items()}
        return [self.tbl, self.pk, self.hlc, self.origin, self.version, 1 if self.deleted else 0, vals]

    def clock(self) -> tuple[int, str]:
        """What last-writer-wins compares: HLC, then origin node id."""
        return (self.hlc, self.origin)


@dataclass
class Changes:
    """One namespace's replication data."""

    tenant: str
    namespace: str
    rows: list[Row] = field(default_factory=list)
    seen: dict[str, RangeSet] = field(default_factory=dict)
    #: CREATE statements of the user tables the rows touch, so a receiver can apply them in any order.
    schema: dict[str, str] = field(default_factory=dict)
    snapshot: bool = False

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {
            "tenant": self.tenant,
            "namespace": self.namespace,
            "rows": [r.to_json() for r in self.rows],
            "seen": {o: rs.to_json() for o, rs in self.seen.items()},
            "schema": self.schema,
            "snapshot": self.snapshot,
        }

    def max_hlc(self) -> int:
        """The newest HLC among the rows (0 when none)."""
        return max((r.hlc for r in self.rows), default=0)


def _enc(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"$base64"} or not isinstance(value["$base64"], str):
            raise ValueError("a value object must be {\"$base64\": str}")
        return base64.b64decode(value["$base64"], validate=True)
    if isinstance(value, list):
        raise ValueError("a value cannot be an array")
    return value


def parse_changes(data: Any) -> Changes:
    """Check and parse one namespace's wire data; MalformedChanges says what is wrong."""
    try:
        return _parse(data)
    except MalformedChanges:
        raise
    except (ValueError, TypeError, KeyError, EdgenodeError) as exc:
        raise MalformedChanges(f"malformed changes: {exc}") from exc


def _parse(data: Any) -> Changes:
    if not isinstance(data, dict):
        raise ValueError("a namespace entry must be an object")
    tenant, namespace = data["tenant"], data["namespace"]
    validate_tenant(tenant)
    if not isinstance(namespace, str) or not NAMESPACE.match(namespace):
        raise ValueError(f"bad namespace {namespace!r}")
    seen_raw = data.get("seen", {})
    if not isinstance(seen_raw, dict):
        raise ValueError("seen must be an object")
    seen: dict[str, RangeSet] = {}
    for origin, ranges in seen_raw.items():
        if not ORIGIN.match(origin):
            raise ValueError(f"bad origin {origin!r}")
        seen[origin] = RangeSet.from_json(ranges)
    schema_raw = data.get("schema", {})
    if not isinstance(schema_raw, dict):
        raise ValueError("schema must be an object")
    for name, sql in schema_raw.items():
        if not isinstance(sql, str) or not _CREATE.match(sql) or not _TABLE.match(name):
            raise ValueError(f"schema entry {name!r} is not a CREATE statement")
    rows_raw = data.get("rows", [])
    if not isinstance(rows_raw, list):
        raise ValueError("rows must be a list")
    rows = [_row(r) for r in rows_raw]
    for row in rows:
        if row.version not in seen.get(row.origin, RangeSet()):
            raise ValueError(f"row version {row.origin}:{row.version} is outside the ranges the sender vouches for")
    snapshot = data.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise ValueError("snapshot must be a boolean")
    return Changes(tenant, namespace, rows, seen, dict(schema_raw), snapshot)


def _row(raw: Any) -> Row:
    if not isinstance(raw, list) or len(raw) != 7:
        raise ValueError("a row must be [table, pk, hlc, origin, version, deleted, values]")
    tbl, pk, hlc, origin, version, deleted, values = raw
    if not isinstance(tbl, str) or not _TABLE.match(tbl):
        raise ValueError("bad table name")
    if not isinstance(pk, str) or len(pk) > 64 * 1024:
        raise ValueError("pk must be a JSON array string")
    pk_values = json.loads(pk)
    if not isinstance(pk_values, list) or not pk_values:
        raise ValueError("pk must be a non-empty JSON array")
    if type(hlc) is not int or not 0 < hlc <= MAX_HLC:
        raise ValueError("hlc must be a positive 63-bit integer")
    if not isinstance(origin, str) or not ORIGIN.match(origin):
        raise ValueError("bad origin")
    if type(version) is not int or not 0 < version <= MAX_HLC:
        raise ValueError("version must be a positive integer")
    if deleted not in (0, 1) or type(deleted) is not int:
        raise ValueError("deleted must be 0 or 1")
    if deleted:
        if values is not None:
            raise ValueError("a tombstone carries no values")
        vals = None
    else:
        if not isinstance(values, dict) or not values:
            raise ValueError("a live row needs its values")
        vals = {}
        for col, v in values.items():
            if not _TABLE.match(col):
                raise ValueError("bad column name")
            vals[col] = _dec(v)
    return Row(tbl, pk, hlc, origin, version, bool(deleted), vals)
