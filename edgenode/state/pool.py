"""An LRU of open namespace databases, so thousands of namespaces do not mean thousands of threads.

Each open namespace holds a writer thread and a few file descriptors. The pool
keeps at most ``capacity`` open, closing the least recently used one that no
caller is using; a namespace in use is never closed under its caller (the pool
runs over capacity instead, briefly).

Opening a namespace (creating its file, running its migrations, starting its writer) runs
outside the pool's lock: one tenant opening many new namespaces on a slow disk never holds up
another tenant's use of a namespace already open, nor its own opens. Callers asking for a
namespace being opened wait for that one open.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgenode.errors import StoreError
from edgenode.state.replica import Replica

#: How many opens of a namespace one caller waits for (each by whoever came first) before it gives up.
OPEN_ATTEMPTS = 3


@dataclass
class _Entry:
    replica: Replica | None  # None while it is being opened
    users: int = 0
    opened: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


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
        entry: _Entry | None = None
        for _ in range(OPEN_ATTEMPTS):
            with self._lock:
                entry = self._entries.get(key)
                opener = entry is None
                if entry is None:
                    if not create and not self._path_of(tenant, namespace).exists():
                        return None
                    entry = self._entries[key] = _Entry(None)
                self._entries.move_to_end(key)
                entry.users += 1
            if opener:
                return self._open_entry(key, entry)
            entry.opened.wait()
            if entry.error is None:
                assert entry.replica is not None
                return entry.replica
            # Its opener failed (and was told why): try the open again, as its opener this time.
        assert entry is not None
        raise StoreError(f"namespace {namespace!r} could not be opened: {entry.error}") from entry.error

    def _open_entry(self, key: tuple[str, str], entry: _Entry) -> Replica:
        """Open the namespace of a new entry (outside the lock), then let its waiters have it."""
        try:
            replica = self._open(*key)
        except BaseException as exc:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            entry.error = exc
            entry.opened.set()
            raise
        with self._lock:
            closed = self._entries.get(key) is not entry  # the tenant or the pool was closed meanwhile
            if not closed:
                entry.replica = replica
                self.opened += 1
                self._evict()
        if closed:
            replica.db.close()
            error = StoreError("the namespace was closed while it was being opened")
            entry.error = error
            entry.opened.set()
            raise error
        entry.opened.set()
        return replica

    def acquire_open(self, tenant: str, namespace: str) -> Replica | None:
        """The replica if it is already open (no file work, safe on the event loop), else None."""
        with self._lock:
            entry = self._entries.get((tenant, namespace))
            if entry is None or entry.replica is None:
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
            if entry.users == 0 and entry.replica is not None and entry.replica.db.idle():
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
            if entry.replica is not None:  # one being opened is closed by its opener
                entry.replica.db.close()

    def close_all(self) -> None:
        """Close every open database (at node stop)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            if entry.replica is not None:  # one being opened is closed by its opener
                entry.replica.db.close()
