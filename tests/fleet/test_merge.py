"""Applying control records is idempotent and order-independent: the highest stamp per key wins."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from edgenode.artifacts.gossip import sign
from edgenode.fleet.buckets import Entry
from edgenode.fleet.control import MIGRATIONS, SIGNING_DOMAIN, ControlPlane, Record
from edgenode.store import Database

SECRET = b"merge-test-fleet-secret-0123456789"


class Memory:
    """A kind of record kept in a dict, to watch what the control plane applies."""

    name = "thing"

    def __init__(self) -> None:
        self.state: dict[tuple[str, ...], Record] = {}

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        return self.state.get(parts)

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        if record is None:
            self.state.pop(parts, None)
        else:
            self.state[parts] = record

    async def keys(self) -> list[tuple[str, ...]]:
        return list(self.state)

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


def _entry(key: str, stamp: int, record: Record | None, revision: int) -> Entry:
    envelope = sign(SECRET, {"v": 1, "key": key, "stamp": stamp, "origin": "n", "record": record}, SIGNING_DOMAIN)
    return Entry(key, json.dumps(envelope).encode(), revision, 0.0)


def test_every_order_and_every_repetition_ends_in_the_same_state(tmp_path: Path) -> None:
    entries = [_entry("thing.a", 10, {"v": "a1"}, 1), _entry("thing.a", 30, None, 2),
               _entry("thing.a", 20, {"v": "a2"}, 3), _entry("thing.b", 7, {"v": "b2"}, 4)]

    db = Database(tmp_path / "fleet.db", MIGRATIONS).open()

    async def replay(order: tuple[Entry, ...]) -> dict[tuple[str, ...], Record]:
        await db.write(lambda c: c.execute("DELETE FROM control_applied"))  # a fresh node each time
        kind = Memory()
        plane = ControlPlane(Any, Any, node_id="me", fleet_secret=SECRET, db=db, kinds=[kind])  # type: ignore[arg-type]
        for entry in (*order, *order):  # every record twice
            await plane._receive(entry)
        return kind.state

    async def all_orders() -> list[dict[tuple[str, ...], Record]]:
        try:
            return [await replay(order) for order in itertools.permutations(entries)]
        finally:
            db.close()

    results = asyncio.run(all_orders())
    assert len(results) == 24
    assert all(r == {("b",): {"v": "b2"}} for r in results)  # a: deleted at its highest stamp
