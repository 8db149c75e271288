"""Cluster routes: ``GET /v1/cluster`` for clients, ``/v1/peer/...`` for signed peer requests.

Peer routes skip bearer auth (they are listed in ``public``) and call
``node.cluster.authenticate`` before anything else: a client token never passes.
"""

from __future__ import annotations

import json as _json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import admin, json, node_of
from edgenode.api.schema import Reply, operation
from edgenode.errors import InvalidJson

#: Peer routes check the fleet signature themselves.
public = ("/v1/peer/cluster/", "/v1/peer/state/")


class PeerReply(Reply):
    """A fleet-internal answer (its shape belongs to the cluster protocol)."""


class ClusterView(Reply):
    """This node, its peers and their health."""


#: Every peer route: a signed JSON message in, a JSON answer out.
_peer = operation(body=PeerReply, responses={200: PeerReply},
                  errors=(400, 401), security="peer")


def _parse(body: bytes) -> Any:
    try:
        return _json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"malformed JSON: {exc}") from exc


@operation(responses={200: ClusterView}, errors=(403,))
async def cluster(request: Request) -> Response:
    """This node, its peers, their health and replication lag (admin: peer URLs are fleet-internal)."""
    admin(request)
    node = node_of(request)
    return json({**node.cluster.describe(), "blocked_namespaces": node.state.blocked_namespaces()})


@_peer
async def hello(request: Request) -> Response:
    """Peer health check and peer exchange (signed)."""
    node = node_of(request)
    sender, body = await node.cluster.authenticate(request)
    return json(node.cluster.handle_hello(sender, _parse(body)))


@_peer
async def state_push(request: Request) -> Response:
    """Changes a peer pushes right after its commit (signed)."""
    node = node_of(request)
    sender, body = await node.cluster.authenticate(request)
    result = await node.state.replicator.receive_push(sender, _parse(body))
    return json(result)


@_peer
async def state_sync(request: Request) -> Response:
    """Anti-entropy: a peer sends what it has seen; the answer is what it lacks (signed)."""
    node = node_of(request)
    sender, body = await node.cluster.authenticate(request)
    result = await node.state.replicator.answer_sync(sender, _parse(body))
    return json(result)


routes = [
    Route("/v1/cluster", cluster, methods=["GET"]),
    Route("/v1/peer/cluster/hello", hello, methods=["POST"]),
    Route("/v1/peer/state/push", state_push, methods=["POST"]),
    Route("/v1/peer/state/sync", state_sync, methods=["POST"]),
]
