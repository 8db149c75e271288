"""The shape of this node's fleet, and the NATS it runs or joins to be in it.

* **Clustered** (small fleets, the default with a fleet secret): the node runs its own
  nats-server whose route listener clusters with its peers' servers; JetStream is
  replicated across them. A peer is given as a node URL (``http://HOST:PORT``: the
  node asks it, with a signed request, for its route) or as the route itself
  (``nats-route://HOST:PORT``). One peer is enough: servers tell each other the rest.
* **Leaf** (large fleets, ``--hub``): the node's server dials out to the hub cluster as
  a leaf node and keeps a JetStream domain of its own; fleet-wide streams live in the
  hub's domain.
* **Operator's NATS** (``--nats-url``): no child server; the node connects there.

Ports chosen once (``0`` settings) are kept in ``DATA/nats/ports.json`` so a restarted
node, or a restarted child, comes back where its peers expect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgenode.cluster.natsserver import (
    FleetKeys,
    NatsServer,
    find_binary,
    free_port,
    hostport,
    node_server_config,
    write_config,
)
from edgenode.cluster.transport import NatsTransport
from edgenode.errors import ValidationFailed

if TYPE_CHECKING:
    from edgenode.config import ClusterSettings

log = logging.getLogger(__name__)

ROUTE_PATH = "/v1/peer/cluster/route"


def split_peers(peers: list[str]) -> tuple[list[str], list[str]]:
    """Peers as ``(node URLs to ask for a route, routes HOST:PORT)``; ValidationFailed on anything else."""
    urls: list[str] = []
    routes: list[str] = []
    for peer in peers:
        scheme = urlsplit(peer.strip()).scheme
        if scheme in ("http", "https"):
            urls.append(peer.strip().rstrip("/"))
        elif scheme in ("nats-route", "nats"):
            routes.append(hostport(peer, schemes=("nats-route", "nats"), default_port=6222))
        else:
            raise ValidationFailed(f"--peer takes http://HOST:PORT or nats-route://HOST:PORT, got {peer!r}",
                                   field="peers")
    return urls, routes


class Fleet:
    """This node's NATS: the supervised child server (if any) and the transport on it."""

    def __init__(self, settings: ClusterSettings, *, node_id: str, data_dir: Path, secret: bytes,
                 listen_host: str, advertise_host: str, peers: list[str]) -> None:
        self.settings = settings
        self.node_id = node_id
        self.dir = data_dir / "nats"
        self.keys = FleetKeys.from_secret(secret)
        self.listen_host = listen_host
        self.advertise_host = advertise_host
        self.peer_urls, self.peer_routes = split_peers(peers)
        self.hubs = [hostport(h, schemes=("nats", "nats-leaf"), default_port=7422) for h in settings.hubs]
        self.shape = "operator" if settings.nats_url else "leaf" if self.hubs else "clustered"
        self.server: NatsServer | None = None
        self.routes: list[str] = list(self.peer_routes)
        self.ports: dict[str, int] = {}
        self.transport: NatsTransport | None = None

    # -- where things are ----------------------------------------------------------

    @property
    def fleet_domain(self) -> str | None:
        """The JetStream domain fleet-wide streams live in (None: the connected cluster's own)."""
        return self.settings.hub_domain if self.shape == "leaf" else None

    @property
    def route(self) -> str:
        """``HOST:PORT`` other nodes' servers route to (clustered shape only; else empty)."""
        if self.shape != "clustered" or "cluster" not in self.ports:
            return ""
        if self.settings.nats_cluster_advertise:
            return self.settings.nats_cluster_advertise
        host = self.advertise_host
        return f"{host}:{self.ports['cluster']}"

    def _load_ports(self) -> None:
        path = self.dir / "ports.json"
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text())
            if isinstance(saved, dict):
                self.ports = {k: v for k, v in saved.items() if isinstance(k, str) and type(v) is int}
        s = self.settings
        self.ports["client"] = s.nats_client_port or self.ports.get("client") or free_port()
        if self.shape == "clustered":
            if s.nats_cluster_listen:
                host, _, port = s.nats_cluster_listen.rpartition(":")
                self.listen_host = host.strip("[]") or "0.0.0.0"
                self.ports["cluster"] = int(port) if port.isdigit() and int(port) else \
                    self.ports.get("cluster") or free_port(self.listen_host)
            else:
                self.ports["cluster"] = self.ports.get("cluster") or free_port(self.listen_host)
        if s.nats_leaf_port:
            self.ports["leaf"] = s.nats_leaf_port
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(self.ports))

    def _load_routes(self) -> None:
        # Routes learned from members survive a restart, so a node comes back into its fleet
        # even when the peer it was first given is gone.
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((self.dir / "routes.json").read_text())
            if isinstance(saved, list):
                self.routes = list(dict.fromkeys([*self.routes, *(r for r in saved if isinstance(r, str))]))

    def remember_routes(self, routes: list[str]) -> None:
        """Keep members' routes for the next start (and for the config, at the next reload)."""
        merged = list(dict.fromkeys([*self.routes, *(r for r in routes if r and r != self.route)]))[:64]
        if merged != self.routes:
            self.routes = merged
            with contextlib.suppress(OSError):
                tmp = self.dir / "routes.tmp"
                tmp.write_text(json.dumps(self.routes))
                tmp.replace(self.dir / "routes.json")

    def server_config(self) -> dict[str, Any]:
        """The child server's config for the current routes."""
        listen = f"{self.listen_host}:{self.ports['cluster']}" if "cluster" in self.ports else None
        if listen and ":" in self.listen_host:
            listen = f"[{self.listen_host}]:{self.ports['cluster']}"
        return node_server_config(
            name=self.node_id, keys=self.keys, store_dir=self.dir / "jetstream", client_port=self.ports["client"],
            cluster_listen=listen if self.shape == "clustered" else None,
            cluster_advertise=self.route or None, routes=[r for r in self.routes if r != self.route],
            hubs=self.hubs, leaf_port=self.ports.get("leaf", 0),
            domain=f"edn-{self.node_id}" if self.shape == "leaf" else None,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, resolve_route: Any) -> NatsTransport:
        """Start the child server (asking peers for their routes first) and connect to NATS."""
        s = self.settings
        if self.shape == "operator":
            servers = [u.strip() for u in s.nats_url.split(",") if u.strip()]
            user = password = None
        else:
            self._load_ports()
            self._load_routes()
            if self.shape == "clustered" and self.peer_urls:
                await self._resolve(resolve_route, patience_s=10.0)
            config_path = self.dir / "nats-server.json"
            write_config(config_path, self.server_config())
            self.server = NatsServer(find_binary(s.nats_server), config_path, self.ports["client"])
            await self.server.start()
            servers = [f"nats://127.0.0.1:{self.ports['client']}"]
            user, password = self.keys.client_user, self.keys.client_password
        self.transport = NatsTransport(
            servers, node_id=self.node_id, prefix=self.keys.prefix, stream_prefix=f"EDN_{self.keys.fleet_id}",
            user=user, password=password, domain=self.fleet_domain, replicas=s.stream_replicas,
            timeout_s=max(1.0, s.push_timeout_s))
        await self.transport.connect()
        log.info("in the fleet", extra={"shape": self.shape, "route": self.route, "hubs": self.hubs,
                                        "fleet": self.keys.fleet_id})
        return self.transport

    async def _resolve(self, resolve_route: Any, *, patience_s: float) -> bool:
        """Ask each peer URL for its route; True when at least one answered."""
        deadline = time.monotonic() + patience_s
        found: list[str] = []
        while True:
            for url in self.peer_urls:
                try:
                    found.extend(await resolve_route(url))
                except Exception as exc:  # noqa: BLE001 - the peer may not be up yet
                    log.debug("peer did not give its route", extra={"peer": url, "error": str(exc)})
            if found or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        if found:
            self.remember_routes(found)
        return bool(found)

    async def resolve_later(self, resolve_route: Any) -> None:
        """Keep asking peers that did not answer at start; reload the server once one does."""
        delay = 1.0
        while True:
            if await self._resolve(resolve_route, patience_s=0):
                if self.server is not None:
                    write_config(self.server.config_path, self.server_config())
                    self.server.reload()
                return
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    async def stop(self) -> None:
        """Close the connection and stop the child server."""
        if self.transport is not None:
            await self.transport.close()
        if self.server is not None:
            await self.server.stop()
