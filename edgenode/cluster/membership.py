"""Who this node's peers are, how healthy they are, and what each has told us."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


def normalize_url(url: str) -> str:
    """A peer base URL without trailing slash; ValueError unless it is http(s)."""
    url = url.strip().rstrip("/")
    if not (url.startswith("http://") or url.startswith("https://")) or len(url) > 512:
        raise ValueError(f"peer URL must be http(s)://host:port, got {url!r}")
    return url


@dataclass
class Peer:
    """One peer node as this node sees it."""

    url: str
    node_id: str | None = None
    healthy: bool = False
    last_seen: float | None = None
    #: Configured with --peer or config.peers: never forgotten.
    static: bool = False
    failures: int = 0
    last_error: str | None = None
    #: Versions the peer reports having seen, per origin (from its last hello).
    seen: dict[str, int] = field(default_factory=dict)
    #: Seconds between a change's stamp and its arrival here, for the last change of this origin.
    lag_s: float | None = None
    #: When this node may next pull from the peer (random back-off after failures).
    next_sync_at: float = 0.0
    first_failure_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view for ``GET /v1/cluster``."""
        return {
            "url": self.url,
            "node_id": self.node_id,
            "healthy": self.healthy,
            "last_seen": self.last_seen,
            "static": self.static,
            "failures": self.failures,
            "last_error": self.last_error,
            "lag_s": None if self.lag_s is None else round(self.lag_s, 4),
            "next_sync_in_s": round(max(0.0, self.next_sync_at - time.monotonic()), 3),
        }


class Membership:
    """The peer table: configured peers plus those learned by peer exchange, keyed by URL and node id."""

    def __init__(self, self_id: str, *, forget_after_s: float = 600.0, now: Callable[[], float] | None = None):
        self.self_id = self_id
        self.self_url: str | None = None
        self.forget_after_s = forget_after_s
        self._now = now or time.time
        self._peers: dict[str, Peer] = {}
        self._lock = threading.Lock()

    def peers(self) -> list[Peer]:
        """Every known peer (a snapshot list; the Peer objects are live)."""
        with self._lock:
            return list(self._peers.values())

    def get(self, url: str) -> Peer | None:
        """The peer at ``url``, if known."""
        with self._lock:
            return self._peers.get(url.rstrip("/"))

    def by_node(self, node_id: str) -> Peer | None:
        """The peer with this node id, if known."""
        with self._lock:
            return next((p for p in self._peers.values() if p.node_id == node_id), None)

    def add(self, url: str, *, static: bool = False, node_id: str | None = None) -> Peer | None:
        """Add a peer by URL (no-op for this node itself); returns it."""
        try:
            url = normalize_url(url)
        except ValueError:
            return None
        if url == self.self_url or node_id == self.self_id:
            return None
        with self._lock:
            peer = self._peers.get(url)
            if peer is None:
                peer = self._peers[url] = Peer(url=url, static=static)
            peer.static = peer.static or static
            if node_id:
                self._bind(peer, node_id)
            return peer

    def learn(self, node_id: str, url: str) -> Peer | None:
        """Record that ``node_id`` answers at ``url`` (from a signed request or a hello)."""
        return self.add(url, node_id=node_id)

    def _bind(self, peer: Peer, node_id: str) -> None:
        # A node id is stable while URLs change (a restart on a new port): the URL that
        # last proved itself takes the id, and a stale entry for the same node goes away.
        peer.node_id = node_id
        for url, other in list(self._peers.items()):
            if other is not peer and other.node_id == node_id:
                peer.static = peer.static or other.static
                peer.seen = peer.seen or other.seen
                del self._peers[url]

    def merge(self, entries: Iterable[Any]) -> None:
        """Peer exchange: add the ``{"url", "node_id"}`` entries a peer told us about."""
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                continue
            node_id = entry.get("node_id")
            if not isinstance(node_id, str) or not node_id:
                node_id = None
            with self._lock:
                known = next((p for p in self._peers.values() if node_id and p.node_id == node_id), None)
            if known is None:  # learned ids never move a live entry; only the node itself can do that
                self.add(entry["url"], node_id=node_id)

    def remove(self, url: str) -> None:
        """Forget the peer at ``url`` (it turned out to be this node itself)."""
        with self._lock:
            self._peers.pop(url.rstrip("/"), None)

    def mark_ok(self, peer: Peer) -> bool:
        """The peer answered; True if it had been failing (its pull back-off is then reset)."""
        recovered = peer.failures > 0
        if recovered:
            # A healed partition with no new writes has nothing to push: only a pull carries
            # what either side missed, so it must not wait out a back-off grown while cut off.
            peer.next_sync_at = 0.0
        peer.healthy = True
        peer.last_seen = self._now()
        peer.failures = 0
        peer.first_failure_at = None
        peer.last_error = None
        return recovered

    def mark_failed(self, peer: Peer, error: str) -> None:
        """The peer did not answer (or answered with an error)."""
        peer.healthy = False
        peer.failures += 1
        peer.last_error = error[:300]
        if peer.first_failure_at is None:
            peer.first_failure_at = self._now()

    def forget_dead(self) -> list[Peer]:
        """Drop learned peers that have failed for longer than ``forget_after_s``; returns them."""
        now = self._now()
        gone: list[Peer] = []
        with self._lock:
            for url, peer in list(self._peers.items()):
                if (not peer.static and peer.first_failure_at is not None
                        and now - peer.first_failure_at > self.forget_after_s):
                    gone.append(peer)
                    del self._peers[url]
        return gone
