"""An LRU of open namespace databases, so thousands of namespaces do not mean thousands of threads.

Each open namespace holds a writer thread and a few file descriptors. The pool
keeps at most ``capacity`` open, closing the least recently used one that no
caller is using; a namespace in use is never closed under its caller (the pool
runs over capacity instead, briefly).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgenode.state.replica import Replica


@dataclass
class _Entry:
    replica: Replica
    users: int = 0


class NamespacePool:
    """Open replicas keyed by (tenant, namespace), least recently used first."""

    def __init__(self, open_replica: Callable[[str, str], Replica], path_of: Callable[[str, str], Path],
                 capacity: int = 128) -> None:
        self._open = open_replica
        self._path_of = path_of
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0
        self.evicted = 0

    def acquire(self, tenant: str, namespace: str, *, create: bool = True) -> Replica | None:
        """The open replica of a namespace (opened if needed; None if absent and not ``create``)."""
        key = (tenant, namespace)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if not create and not self._path_of(tenant, namespace).exists():
                    return None
                entry = self._entries[key] = _Entry(self._open(tenant, namespace))
                self.opened += 1
            self._entries.move_to_end(key)
            entry.users += 1
            self._evict()
            return entry.replica

    def acquire_open(self, tenant: str, namespace: str) -> Replica | None:
        """The replica if it is already open (no file work, safe on the event loop), else None."""
        with self._lock:
            entry = self._entries.get((tenant, namespace))
            if entry is None:
                return None
            self._entries.move_to_end((tenant, namespace))
            entry.users += 1
            return entry.replica

    def release(self, replica: Replica) -> None:
        """Give back a replica from :meth:`acquire`."""
        with self._lock:
            entry = self._entries.get((replica.tenant, replica.namespace))
            if entry is not None and entry.replica is replica:
                entry.users -= 1
            self._evict()

    @contextmanager
    def lease(self, tenant: str, namespace: str, *, create: bool = True) -> Iterator[Replica | None]:
        """``with pool.lease(t, ns) as replica:`` — acquire and release around a block."""
        replica = self.acquire(tenant, namespace, create=create)
        try:
            yield replica
        finally:
            if replica is not None:
                self.release(replica)

    def _evict(self) -> None:
        if len(self._entries) <= self.capacity:
            return
        for key in list(self._entries):
            if len(self._entries) <= self.capacity:
                break
            entry = self._entries[key]
            # A busy writer (maybe stuck on a lock) is not closed under the pool's lock: closing waits for it.
            if entry.users == 0 and entry.replica.db.idle():
                del self._entries[key]
                entry.replica.db.close()
                self.evicted += 1

    def open_count(self) -> int:
        """How many namespace databases are open now."""
        with self._lock:
            return len(self._entries)

    def close_tenant(self, tenant: str) -> None:
        """Close every open database of ``tenant`` (its files are about to go)."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == tenant]
            entries = [self._entries.pop(k) for k in keys]
        for entry in entries:
            entry.replica.db.close()

    def close_all(self) -> None:
        """Close every open database (at node stop)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.replica.db.close()
