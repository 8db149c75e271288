"""The cluster capability: this node in its fleet, over NATS.

With a fleet secret, the node joins its fleet's NATS (:mod:`edgenode.cluster.fleet`)
and hands other capabilities the :attr:`Cluster.transport` (publish, subscribe,
request, streams, buckets) and :attr:`Cluster.members` (heartbeats in a bucket).
Without one it runs no NATS at all.

Signed HTTP requests between nodes (``send``, ``broadcast``, ``authenticate``) remain for
what still moves over HTTP (Git objects between repositories, and a joining node
asking a peer for its route); ``peers()`` is the HTTP view of the NATS members.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter, Gauge

from edgenode.cluster.fleet import ROUTE_PATH, Fleet
from edgenode.cluster.members import Members
from edgenode.cluster.membership import Membership, Peer
from edgenode.cluster.signing import Verifier, sign
from edgenode.cluster.transport import NatsTransport
from edgenode.errors import PeerAuthFailed
from edgenode.streams import read_limited

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)



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
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: This node's NATS (None outside a fleet) and the transport capabilities are handed.
        self.fleet: Fleet | None = None
        self.transport: NatsTransport | None = None
        self.members: Members | None = None
        #: What capabilities add to this node's heartbeat (small JSON-able fields).
        self.heartbeat_info: list[Callable[[], dict[str, Any]]] = []
        #: What capabilities add to ``GET /v1/cluster``.
        self.reporters: list[Callable[[], Awaitable[dict[str, Any]]]] = []
        #: A peer answered again after failing.
        self.on_peer_recovered: Callable[[Peer], None] = lambda peer: None
        registry = node.metrics.registry
        self._m_healthy = Gauge("edgenode_cluster_peer_healthy", "1 if the peer answered its last check.",
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
        """Join the fleet over NATS (a fleet secret is set), else do nothing: a lone node runs no NATS."""
        self.membership.self_url = self.url or None
        self._http()
        if not self.fleet_enabled:
            if self.node.config.peers or self.settings.hubs or self.settings.nats_url:
                log.warning("fleet settings are given but no fleet secret: this node stays alone")
            return
        assert self._secret is not None
        listen_host = self.node.config.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
        advertise = urlsplit(self.url).hostname if self.url else None
        self.fleet = Fleet(self.settings, node_id=self.node_id, data_dir=self.node.data_dir, secret=self._secret,
                           listen_host=listen_host, advertise_host=advertise or "127.0.0.1",
                           peers=list(self.node.config.peers))
        try:
            self.transport = await self.fleet.start(self._ask_route)
        except BaseException:
            await self.fleet.stop()  # never leave a child server behind a failed start
            raise
        self.members = Members(self.transport, node_id=self.node_id, interval_s=self.settings.heartbeat_interval_s,
                               down_after_s=self.settings.down_after_s,
                               forget_after_s=self.settings.forget_peer_after_s,
                               refresh_s=self.settings.members_refresh_s)
        self.members.describe_self = self._self_info
        await self.members.start()
        self._tasks.append(asyncio.create_task(self._peer_loop(), name="cluster-peers"))
        self._tasks.append(asyncio.create_task(self._grow_loop(), name="cluster-stream-copies"))
        if self.fleet.shape == "clustered" and self.fleet.peer_urls and not self.fleet.routes:
            self._tasks.append(asyncio.create_task(self.fleet.resolve_later(self._ask_route),
                                                   name="cluster-resolve-peers"))

    async def stop(self) -> None:
        """Leave the fleet: last heartbeat, close NATS, stop the child server and the HTTP client."""
        if self.members is not None:
            await self.members.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.fleet is not None:
            await self.fleet.stop()
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

    def _sync_peers(self) -> None:
        """Mirror NATS membership into the HTTP peer table (what artifacts gossip sends to)."""
        if self.members is None:
            return
        for member in self.members.members():
            if member.node_id == self.node_id or not member.url:
                continue
            peer = self.membership.learn(member.node_id, member.url)
            if peer is None:
                continue
            if self.members.healthy(member):
                if self.membership.mark_ok(peer):
                    self.on_peer_recovered(peer)
                peer.last_seen = member.last_seen
                self._m_healthy.labels(peer.url).set(1)
            elif peer.healthy or peer.failures == 0:
                self.membership.mark_failed(peer, "stopped" if member.stopped else "no heartbeat")
                self._m_healthy.labels(peer.url).set(0)
        for gone in self.membership.forget_dead():
            log.info("forgot peer", extra={"peer": gone.url, "peer_node": gone.node_id})
            with contextlib.suppress(KeyError):
                self._m_healthy.remove(gone.url)
        if self.fleet is not None:
            self.fleet.remember_routes([m.route for m in self.members.members() if m.route])

    async def _peer_loop(self) -> None:
        while True:
            try:
                self._sync_peers()
            except Exception:
                log.exception("peer table refresh failed")
            await asyncio.sleep(max(0.05, self.settings.heartbeat_interval_s))

    async def _grow_loop(self) -> None:
        """Raise the fleet's streams to ``stream_replicas`` copies as servers join: soon while some are
        short (a fleet forming), then now and then (a stream made later, a server replaced)."""
        assert self.transport is not None
        delay, seen_up, quick = 1.0, -1, 0
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                short = await self.transport.grow_streams()
            except Exception as exc:  # noqa: BLE001 - JetStream not answering yet: the next round
                log.debug("could not check the streams' copies", extra={"error": repr(exc)})
                short = ["?"]
            up = sum(1 for m in self.members.members() if self.members.healthy(m)) if self.members else 1
            if up != seen_up:  # members came or went: their servers may take a few seconds to route
                seen_up, quick = up, 15
            quick -= 1
            # Still short with the members unchanged for a while: fewer servers than copies wanted.
            delay = 2.0 if short and quick > 0 else 30.0

    def route_answer(self) -> dict[str, Any]:
        """What ``GET /v1/peer/cluster/route`` tells a joining node: where to route to."""
        routes = [self.fleet.route] if self.fleet is not None and self.fleet.route else []
        if self.members is not None:
            routes += [m.route for m in self.members.members() if m.route and self.members.healthy(m)]
        return {"node_id": self.node_id, "routes": list(dict.fromkeys(routes))}

    async def _ask_route(self, url: str) -> list[str]:
        response = await self.send(url, "GET", ROUTE_PATH, timeout=2.0)
        if response.status_code != 200:
            raise RuntimeError(f"route answered HTTP {response.status_code}")
        data = response.json()
        routes = data.get("routes") if isinstance(data, dict) else None
        return [r for r in routes if isinstance(r, str) and r][:64] if isinstance(routes, list) else []

    def _self_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"url": self.url, "version": self.node.version,
                                "route": self.fleet.route if self.fleet is not None else ""}
        for contribute in self.heartbeat_info:
            info.update(contribute())
        return info

    # -- reporting -----------------------------------------------------------

    def member_list(self, stream_head: int | None = None) -> list[dict[str, Any]]:
        """Every member with last-seen, health and replication lag in stream positions."""
        if self.members is None:
            return []
        now = time.time()
        out = []
        for m in self.members.members():
            blocked = m.info.get("blocked_namespaces")
            out.append({
                "node_id": m.node_id, "url": m.url, "route": m.route, "version": m.version,
                "self": m.node_id == self.node_id, "healthy": self.members.healthy(m), "stopped": m.stopped,
                "last_seen": round(m.last_seen, 3), "last_seen_ago_s": round(max(0.0, now - m.last_seen), 3),
                "applied_seq": m.applied,
                "lag_messages": None if stream_head is None else max(0, stream_head - m.applied),
                "blocked_namespaces": blocked if type(blocked) is int else 0,
            })
        return out

    async def describe(self) -> dict[str, Any]:
        """This node, the fleet's members and their health and lag, the stream (``GET /v1/cluster``)."""
        if self.members is not None:
            with contextlib.suppress(Exception):  # cut off: report what was last read
                await asyncio.wait_for(self.members.refresh(max_age_s=0.25), 5.0)
            self._sync_peers()
        report: dict[str, Any] = {}
        for contribute in self.reporters:
            with contextlib.suppress(Exception):
                report.update(await contribute())
        head = report.get("stream", {}).get("last_seq") if isinstance(report.get("stream"), dict) else None
        nats_info: dict[str, Any] | None = None
        if self.fleet is not None:
            nats_info = {
                "shape": self.fleet.shape, "fleet": self.fleet.keys.fleet_id, "route": self.fleet.route,
                "hubs": self.fleet.hubs, "connected": bool(self.transport and self.transport.connected),
                "server_pid": self.fleet.server.pid if self.fleet.server else None,
                "server_restarts": self.fleet.server.restarts if self.fleet.server else 0,
                "heartbeat_error": self.members.last_error if self.members else None,
            }
        peers = [p.as_dict() for p in self.peers()]
        return {
            "node_id": self.node_id,
            "url": self.url,
            "fleet_enabled": self.fleet_enabled,
            "nats": nats_info,
            "members": self.member_list(head if type(head) is int else None),
            "peers": peers,
            **report,
        }

    def status(self) -> dict[str, Any]:
        """A short summary for ``edgenode status``."""
        members = self.members.members() if self.members is not None else []
        return {
            "node_id": self.node_id,
            "fleet": self.fleet_enabled,
            "shape": self.fleet.shape if self.fleet is not None else None,
            "members": len(members),
            "healthy": sum(1 for m in members if self.members is not None and self.members.healthy(m)),
        }
