"""Cluster routes: ``GET /v1/cluster`` for admins, ``GET /v1/peer/cluster/route`` for joining nodes (signed).

The peer route skips bearer auth (it is listed in ``public``) and calls
``node.cluster.authenticate`` before anything else: a client token never passes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import admin, json, node_of
from edgenode.api.schema import Reply, operation

#: Peer routes check the fleet signature themselves.
public = ("/v1/peer/cluster/",)


class PeerReply(Reply):
    """A fleet-internal answer (its shape belongs to the cluster protocol)."""


class ClusterView(Reply):
    """This node, the fleet's members, their health and replication lag."""


@operation(responses={200: ClusterView}, errors=(403,))
async def cluster(request: Request) -> Response:
    """This node, the fleet's members, their health and replication lag (admin: addresses are fleet-internal)."""
    admin(request)
    node = node_of(request)
    return json({**await node.cluster.describe(), "blocked_namespaces": node.state.blocked_namespaces()})


@operation(responses={200: PeerReply}, errors=(401,), security="peer")
async def route(request: Request) -> Response:
    """Where a joining node's NATS server routes to: this node's route and its healthy members' (signed)."""
    node = node_of(request)
    await node.cluster.authenticate(request)
    return json(node.cluster.route_answer())


routes = [
    Route("/v1/cluster", cluster, methods=["GET"]),
    Route("/v1/peer/cluster/route", route, methods=["GET"]),
]
