"""The cluster capability: peer membership, signed peer requests, health and peer exchange.

Other capabilities talk to peers only through :class:`Cluster`: ``send`` and
``broadcast`` sign requests with the fleet secret, route handlers call
``authenticate`` first thing, and ``peers()`` lists what membership knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import Counter, Gauge

from edgenode.cluster.membership import Membership, Peer
from edgenode.cluster.signing import Verifier, sign
from edgenode.errors import PeerAuthFailed
from edgenode.streams import read_limited

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)

HELLO_PATH = "/v1/peer/cluster/hello"


class Cluster:
    """This node's view of the fleet, and the only way capabilities reach peers."""

    name = "cluster"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.config.cluster
        self.node_id: str = node.id
        self._secret = node.config.fleet_secret_bytes()
        self.verifier = Verifier(self._secret, window_s=self.settings.peer_auth_window_s)
        self.membership = Membership(self.node_id, forget_after_s=self.settings.forget_peer_after_s)
        for url in node.config.peers:
            self.membership.add(url, static=True)
        self._peers_file = node.data_dir / "peers.json"
        self._saved_peers: list[list[str | None]] = []
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by the state capability: versions seen per origin, sent in every hello.
        self.progress: Callable[[], dict[str, int]] = dict
        #: Set by the state capability: a peer answered again after failing (pull from it now).
        self.on_peer_recovered: Callable[[Peer], None] = lambda peer: None
        registry = node.metrics.registry
        self._m_healthy = Gauge("edgenode_cluster_peer_healthy", "1 if the peer answered its last check.",
                                ["peer"], registry=registry)
        self._m_behind = Gauge("edgenode_cluster_peer_behind_versions",
                               "Versions this node has seen that the peer has not (from its last hello).",
                               ["peer"], registry=registry)
        self._m_auth_failed = Counter("edgenode_cluster_peer_auth_failures",
                                      "Peer requests refused for a missing, forged or replayed signature.",
                                      registry=registry)

    # -- the interface other capabilities use -------------------------------

    @property
    def fleet_enabled(self) -> bool:
        """Whether a fleet secret is configured (without one, peer routes refuse everything)."""
        return self._secret is not None

    @property
    def url(self) -> str:
        """The URL peers reach this node at."""
        return (self.settings.advertise_url or self.node.url or "").rstrip("/")

    def peers(self) -> list[Peer]:
        """Every known peer, healthy or not."""
        return self.membership.peers()

    async def send(
        self,
        peer_url: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One HTTP request to a peer, signed with the fleet secret; httpx errors propagate."""
        if self._secret is None:
            raise PeerAuthFailed("no fleet secret is configured; this node cannot sign peer requests")
        body = content if content is not None else b""
        all_headers = dict(headers or {})
        if json is not None:
            body = _json.dumps(json, separators=(",", ":")).encode()
            all_headers.setdefault("content-type", "application/json")
        client = self._http()
        request = client.build_request(
            method, peer_url.rstrip("/") + path, content=body, headers=all_headers,
            timeout=timeout if timeout is not None else self.settings.push_timeout_s,
        )
        target = request.url.raw_path.decode("ascii")
        request.headers.update(sign(self._secret, method, target, body, node_id=self.node_id, url=self.url))
        peer = self.membership.get(peer_url)
        try:
            response = await client.send(request)
        except httpx.HTTPError as exc:
            if peer is not None:
                self.membership.mark_failed(peer, f"{type(exc).__name__}: {exc}")
                self._m_healthy.labels(peer.url).set(0)
            raise
        if peer is not None:
            if response.status_code in (401, 403):
                # The peer refuses our signature (another fleet secret, or clocks too far apart):
                # it is up, but not a working peer, and the reason belongs in GET /v1/cluster.
                await response.aread()
                self.membership.mark_failed(peer, f"HTTP {response.status_code}: {response.text[:200]}")
                self._m_healthy.labels(peer.url).set(0)
            elif response.status_code < 500:
                if self.membership.mark_ok(peer):
                    self.on_peer_recovered(peer)
                self._m_healthy.labels(peer.url).set(1)
            else:
                self.membership.mark_failed(peer, f"HTTP {response.status_code}")
                self._m_healthy.labels(peer.url).set(0)
        return response

    async def broadcast(
        self, method: str, path: str, *, json: Any = None, content: bytes | None = None
    ) -> dict[str, httpx.Response | Exception]:
        """Send the same signed request to every known peer at once; failures come back as exceptions."""
        peers = self.peers()
        if json is not None and content is None:
            content = _json.dumps(json, separators=(",", ":")).encode()
        results = await asyncio.gather(
            *(self.send(p.url, method, path, content=content,
                        headers={"content-type": "application/json"} if json is not None else None)
              for p in peers),
            return_exceptions=True,
        )
        out: dict[str, httpx.Response | Exception] = {}
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out[peer.url] = result
        return out

    async def authenticate(self, request: Any) -> tuple[str, bytes]:
        """Read and verify a peer request (a starlette Request); returns ``(peer node id, body)``.

        Raises PeerAuthFailed (401) for anything unsigned, forged, stale or replayed,
        and PayloadTooLarge beyond the peer body limit. A bearer token never passes.
        """
        try:
            if not self.fleet_enabled:
                raise PeerAuthFailed("this node has no fleet secret; peer requests are refused")
            body = await read_limited(request.stream(), self.settings.max_peer_body_bytes, "peer request body")
            scope = request.scope
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
            query: bytes = scope.get("query_string") or b""
            target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
            signed = self.verifier.verify(request.method, target, request.headers, body)
        except PeerAuthFailed as exc:
            self._m_auth_failed.inc()
            client = getattr(request, "client", None)
            log.warning("peer request refused", extra={"reason": exc.message, "path": request.url.path,
                                                       "remote": getattr(client, "host", None)})
            raise
        if signed.node_id == self.node_id:
            raise PeerAuthFailed("peer request claims to come from this node itself")
        peer = self.membership.learn(signed.node_id, signed.url) if signed.url else \
            self.membership.by_node(signed.node_id)
        if peer is not None:
            self.membership.mark_ok(peer)
        return signed.node_id, body

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start health checks and peer exchange."""
        self.membership.self_url = self.url or None
        self._load_peers()
        if self.url:
            self.membership.remove(self.url)
        self._http()
        if self.fleet_enabled:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"))
        elif self.peers():
            log.warning("peers are configured but no fleet secret: replication is off")

    async def stop(self) -> None:
        """Stop background tasks and close the HTTP client."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        """Run a background task owned by the cluster (cancelled at stop)."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.push_timeout_s,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                headers={"user-agent": f"edgenode-peer/{self.node.version}"},
            )
        return self._client

    # -- health and peer exchange -------------------------------------------

    def hello_body(self) -> dict[str, Any]:
        """What this node tells a peer about itself and the fleet."""
        known = [{"url": p.url, "node_id": p.node_id} for p in self.peers() if p.healthy and p.node_id]
        return {"node_id": self.node_id, "url": self.url, "peers": known, "seen": self.progress()}

    def handle_hello(self, sender: str, data: Any) -> dict[str, Any]:
        """Answer a peer's hello: learn it and whom it knows; reply in kind."""
        if isinstance(data, dict):
            peer = self.membership.by_node(sender)
            if peer is not None:
                self._absorb(peer, data)
        return self.hello_body()

    def _absorb(self, peer: Peer, data: dict[str, Any]) -> None:
        seen = data.get("seen")
        if isinstance(seen, dict):
            peer.seen = {k: v for k, v in seen.items() if isinstance(k, str) and type(v) is int}
            self._m_behind.labels(peer.url).set(self.behind(peer))
        peers = data.get("peers")
        if isinstance(peers, list):
            self.membership.merge(peers[:1000])

    def behind(self, peer: Peer) -> int:
        """Versions this node has seen that ``peer`` had not, as of its last hello."""
        ours = self.progress()
        return sum(max(0, n - peer.seen.get(origin, 0)) for origin, n in ours.items() if origin != peer.node_id)

    async def hello(self, peer: Peer) -> None:
        """Check one peer's health and swap peer lists with it."""
        try:
            response = await self.send(peer.url, "POST", HELLO_PATH, json=self.hello_body(),
                                       timeout=max(1.0, self.settings.heartbeat_interval_s))
        except (httpx.HTTPError, PeerAuthFailed):
            return
        if response.status_code != 200:
            self.membership.mark_failed(peer, f"hello answered HTTP {response.status_code}")
            self._m_healthy.labels(peer.url).set(0)
            return
        with contextlib.suppress(ValueError):
            data = response.json()
            node_id = data.get("node_id") if isinstance(data, dict) else None
            if isinstance(node_id, str) and node_id:
                if node_id == self.node_id:
                    self.membership.remove(peer.url)
                    return
                bound = self.membership.learn(node_id, peer.url)
                if bound is not None:
                    self._absorb(bound, data)

    def _load_peers(self) -> None:
        # Peers learned by exchange survive a restart, so a node that comes back (maybe on
        # another port) can reach the fleet even if it was configured with no --peer.
        try:
            saved = _json.loads(self._peers_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, list):
            for entry in saved:
                if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                    self.membership.add(entry[0], node_id=entry[1] if isinstance(entry[1], str) else None)
            self._saved_peers = saved

    def _save_peers(self) -> None:
        current: list[list[str | None]] = sorted([p.url, p.node_id] for p in self.peers())
        if current == self._saved_peers:
            return
        tmp = self._peers_file.with_suffix(".tmp")
        try:
            tmp.write_text(_json.dumps(current))
            tmp.replace(self._peers_file)
            self._saved_peers = current
        except OSError as exc:
            log.warning("cannot save the peer list", extra={"error": str(exc)})

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            started = time.monotonic()
            try:
                await asyncio.gather(*(self.hello(p) for p in self.peers()))
                for gone in self.membership.forget_dead():
                    log.info("forgot peer", extra={"peer": gone.url, "peer_node": gone.node_id})
                    with contextlib.suppress(KeyError):
                        self._m_healthy.remove(gone.url)
                        self._m_behind.remove(gone.url)
                self._save_peers()
            except Exception:
                log.exception("heartbeat round failed")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.05, interval * random.uniform(0.8, 1.2) - elapsed))

    # -- reporting -----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """This node and its peers, their health and replication lag (``GET /v1/cluster``)."""
        peers = []
        for p in self.peers():
            entry = p.as_dict()
            entry["behind_versions"] = self.behind(p) if p.seen or p.node_id else None
            peers.append(entry)
        return {
            "node_id": self.node_id,
            "url": self.url,
            "fleet_enabled": self.fleet_enabled,
            "seen": self.progress(),
            "peers": peers,
        }

    def status(self) -> dict[str, Any]:
        """A short summary for ``edgenode status``."""
        peers = self.peers()
        behind = [self.behind(p) for p in peers if p.node_id]
        return {
            "node_id": self.node_id,
            "fleet": self.fleet_enabled,
            "peers": len(peers),
            "healthy": sum(1 for p in peers if p.healthy),
            "max_behind_versions": max(behind) if behind else 0,
        }

