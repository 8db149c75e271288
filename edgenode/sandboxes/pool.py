"""A small, bounded pool of sandboxes started ahead of their create call.

Starting bwrap and the in-sandbox supervisor costs tens of milliseconds; a create
served from the pool costs a record insert. Pooled sandboxes have the node's
default limits and no network (what most creates ask for); any other create
starts cold, as before. The pool fills only once a first sandbox is created on
the node, so a node that never runs sandboxes pays nothing.

Fairness: a tenant may take at most :meth:`WarmPool.tenant_share` entries that the
pool has not replaced yet; past that, its creates start cold and other tenants
still find pooled entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenode.sandboxes.runtime import SandboxRuntime

log = logging.getLogger(__name__)

#: How long the pool waits after a failed start before it tries again, in seconds.
RETRY_S = 5.0


@dataclass
class Prestarted:
    """A started sandbox waiting for its create call: its id, uid slot, directory and processes."""

    id: str
    uid_slot: int
    root: Path
    runtime: SandboxRuntime
    start_ms: float


class WarmPool:
    """Keeps up to ``size`` sandboxes started; hands them out under a per-tenant share."""

    def __init__(self, size: int, start_one: Callable[[], Coroutine[Any, Any, Prestarted]],
                 discard: Callable[[Prestarted], Coroutine[Any, Any, None]]) -> None:
        self.size = size
        self._start_one = start_one
        self._discard = discard
        self.ready: deque[Prestarted] = deque()
        #: Entries each tenant took that the pool has not replaced yet.
        self.owed: dict[str, int] = {}
        self._debts: deque[str] = deque()
        self.hits = 0
        self.misses = 0
        self.over_share = 0
        self.start_ms: deque[float] = deque(maxlen=32)
        self._wake = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None

    def tenant_share(self) -> int:
        """Pooled entries one tenant may hold unreplaced: half the pool, at least one."""
        return max(1, (self.size + 1) // 2)

    def take(self, tenant: str) -> Prestarted | None:
        """A started sandbox for ``tenant``, or None (then the create starts one cold)."""
        if self.size <= 0:
            return None
        self._ensure_filling()
        while self.ready and not self.ready[0].runtime.alive:
            dead = self.ready.popleft()
            asyncio.get_running_loop().create_task(self._discard(dead))
        if not self.ready:
            self.misses += 1
            return None
        if self.owed.get(tenant, 0) >= self.tenant_share():
            self.over_share += 1
            return None
        entry = self.ready.popleft()
        self.owed[tenant] = self.owed.get(tenant, 0) + 1
        self._debts.append(tenant)
        self.hits += 1
        self._wake.set()
        return entry

    def give_back(self, entry: Prestarted, tenant: str) -> None:
        """Return an entry a create could not use (it failed after taking it)."""
        self.ready.appendleft(entry)
        self._repay(tenant)

    def _repay(self, tenant: str | None = None) -> None:
        if tenant is None:
            if not self._debts:
                return
            tenant = self._debts.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._debts.remove(tenant)
        left = self.owed.get(tenant, 0) - 1
        if left > 0:
            self.owed[tenant] = left
        else:
            self.owed.pop(tenant, None)

    def wake(self) -> None:
        """Start filling the pool (it stays empty until a first sandbox is created)."""
        if self.size > 0:
            self._ensure_filling()

    def _ensure_filling(self) -> None:
        if self._filler is None:
            self._filler = asyncio.get_running_loop().create_task(self._fill())
        self._wake.set()

    async def _fill(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.ready) < self.size:
                began = time.perf_counter()
                try:
                    entry = await self._start_one()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not start a pooled sandbox", extra={"error": str(exc)})
                    await asyncio.sleep(RETRY_S)
                    continue
                self.start_ms.append((time.perf_counter() - began) * 1000)
                self.ready.append(entry)
                self._repay()

    async def stop(self) -> None:
        """Stop filling and take every waiting entry down."""
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(BaseException):
                await self._filler
            self._filler = None
        entries = list(self.ready)
        self.ready.clear()
        await asyncio.gather(*(self._discard(e) for e in entries), return_exceptions=True)

    def status(self) -> dict[str, Any]:
        """What the pool holds and what it costs: resident memory of its processes, start times, takes."""
        rss = sum(process_tree_rss(e.runtime.guest.proc.pid) for e in self.ready
                  if e.runtime.guest.proc is not None)
        starts = sorted(self.start_ms)
        return {
            "size": self.size,
            "ready": len(self.ready),
            "tenant_share": self.tenant_share(),
            "rss_bytes": rss,
            "start_ms_p50": round(starts[len(starts) // 2], 2) if starts else None,
            "hits": self.hits,
            "misses": self.misses,
            "over_share": self.over_share,
        }


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every process below it (0 for what has gone)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{current}/task/{current}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


__all__ = ["Prestarted", "WarmPool", "process_tree_rss"]
