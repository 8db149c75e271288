"""The event log of each repository: creates, forks, imports, commits, pushes, clones, token use."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from edgenode.store import Database

KINDS = ("create", "fork", "import", "commit", "push", "clone", "fetch", "token_used", "sync", "conflict",
         "delete", "push_refused", "merge_request")


class Events:
    """Appends events and lists them per repository."""

    def __init__(self, db: Database, *, now: Callable[[], float] = time.time) -> None:
        self.db = db
        self._now = now

    async def record(self, tenant: str, repo: str, kind: str, **detail: Any) -> None:
        """Append one event."""
        at = self._now()
        body = json.dumps(detail, separators=(",", ":"), default=str)
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO repo_events (tenant, repo, kind, at, detail) VALUES (?, ?, ?, ?, ?)",
                (tenant, repo, kind, at, body),
            )
        )

    async def record_many(
        self, tenant: str, repo: str, items: list[tuple[str, dict[str, Any]]], *, touch_token: str | None = None
    ) -> None:
        """Append several events (and mark a repository token used) in one transaction."""
        if not items and touch_token is None:
            return
        at = self._now()
        rows = [(tenant, repo, kind, at, json.dumps(detail, separators=(",", ":"), default=str))
                for kind, detail in items]

        def write(c: Any) -> None:
            c.executemany("INSERT INTO repo_events (tenant, repo, kind, at, detail) VALUES (?, ?, ?, ?, ?)", rows)
            if touch_token is not None:
                c.execute("UPDATE repo_tokens SET last_used_at = ? WHERE id = ?", (at, touch_token))

        await self.db.write(write)

    async def list(
        self, tenant: str, repo: str, *, after: int = 0, limit: int = 100, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Events of a repository, oldest first, after event id ``after``."""
        query = "SELECT id, kind, at, detail FROM repo_events WHERE tenant = ? AND repo = ? AND id > ?"
        params: list[Any] = [tenant, repo, after]
        if kind:
            query += " AND kind = ?"
            params.append(kind)
        query += " ORDER BY id LIMIT ?"
        params.append(limit)
        rows = await self.db.read(lambda c: c.execute(query, params).fetchall())
        return [{"id": r["id"], "kind": r["kind"], "at": r["at"], **json.loads(r["detail"])} for r in rows]
