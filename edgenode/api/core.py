"""Node routes: health, metrics, OpenAPI, status, tenants and tokens."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode import tenants
from edgenode.api.common import admin, field, json, node_of, principal, read_json
from edgenode.api.openapi import openapi
from edgenode.api.parsing import query_str
from edgenode.errors import EdgenodeError
from edgenode.metrics import CONTENT_TYPE_LATEST

#: Paths that skip bearer-token auth.
public = ("/healthz", "/metrics", "/openapi.json")


async def healthz(request: Request) -> Response:
    """Health: the node id, version and the store's state; no token needed.

    ``status`` is ``ok``; ``degraded`` (still 200) while disk space is below the reserve or a
    namespace is damaged; ``unhealthy`` (503) while a database writer is stuck or stopped.
    """
    node = node_of(request)
    store = node.store.health(public=True)
    status, code = "ok", 200
    if not store["ok"]:
        status, code = "unhealthy", 503
    elif store["space"]["low"] or store["damaged"] or node.state.health.damaged():
        status = "degraded"
    return json({"status": status, "node": node.id, "version": node.version, "store": store}, status=code)


async def metrics(request: Request) -> Response:
    """Prometheus metrics in text format; no token needed.

    Without the admin token, series are summed over the labels that name tenants and what they
    own (workers, namespaces, agents, repositories, sandboxes): anyone may scrape node health,
    only the admin sees who uses it. A tenant sees its own use at ``/v1/usage``.
    """
    node = node_of(request)
    auth = request.headers.get("authorization", "")
    labelled = False
    if auth.lower().startswith("bearer "):
        try:
            labelled = (await asyncio.to_thread(node.auth.authenticate, auth[7:].strip())).admin
        except EdgenodeError:
            labelled = False
    return Response(node.metrics.render(labelled=labelled), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 description of the public routes."""
    return json(openapi(request.app.routes, node_of(request).version))


async def status(request: Request) -> Response:
    """The node's identity, uptime and capabilities; admins also see each one's summary and the settings."""
    node = node_of(request)
    body = node.status()
    if principal(request).admin:
        body["config"] = node.config.as_dict()
        body["store"] = {**node.store.health(), "damaged_namespaces": node.state.health.damaged()}
    else:
        # A tenant learns what the node offers, not its paths nor other tenants' counts.
        body = {"node": body["node"], "version": body["version"], "uptime_s": body["uptime_s"],
                "capabilities": {name: {} for name in sorted(body["capabilities"])}}
    return json(body)


async def whoami(request: Request) -> Response:
    """The tenant the caller's token acts for."""
    p = principal(request)
    return json({"tenant": p.tenant, "admin": p.admin, "token_id": p.token_id})


async def create_tenant(request: Request) -> Response:
    """Create a tenant (admin)."""
    admin(request)
    data = await read_json(request)
    tenant = await node_of(request).auth.create_tenant(field(data, "name", str, required=True))
    return json(tenant, status=201)


async def list_tenants(request: Request) -> Response:
    """List tenants with their live token counts (admin)."""
    admin(request)
    return json({"tenants": await node_of(request).auth.list_tenants()})


async def delete_tenant(request: Request) -> Response:
    """Delete a tenant with everything it owns on this node, and revoke its tokens (admin)."""
    admin(request)
    await tenants.delete_tenant(node_of(request), request.path_params["name"])
    return Response(status_code=204)


async def create_token(request: Request) -> Response:
    """Issue a token for a tenant: ``{"tenant", "name"?, "ttl_s"?, "admin"?}`` (admin)."""
    admin(request)
    data = await read_json(request)
    issued = await node_of(request).auth.create_token(
        field(data, "tenant", str, required=True),
        name=field(data, "name", str, ""),
        ttl_s=field(data, "ttl_s", (int, float), None),
        admin=field(data, "admin", bool, False),
    )
    return json(
        {
            "id": issued.id,
            "tenant": issued.tenant,
            "name": issued.name,
            "admin": issued.admin,
            "created_at": issued.created_at,
            "expires_at": issued.expires_at,
            "token": issued.token,
        },
        status=201,
    )


async def list_tokens(request: Request) -> Response:
    """List tokens without their secrets: all of them for admins, a tenant's own otherwise."""
    p = principal(request)
    tenant = query_str(request, "tenant") if p.admin else p.tenant
    return json({"tokens": await node_of(request).auth.list_tokens(tenant)})


async def revoke_token(request: Request) -> Response:
    """Revoke a token: any for admins, the tenant's own otherwise."""
    p = principal(request)
    await node_of(request).auth.revoke_token(request.path_params["id"], tenant=None if p.admin else p.tenant)
    return Response(status_code=204)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/whoami", whoami, methods=["GET"]),
    Route("/v1/tenants", create_tenant, methods=["POST"]),
    Route("/v1/tenants", list_tenants, methods=["GET"]),
    Route("/v1/tenants/{name}", delete_tenant, methods=["DELETE"]),
    Route("/v1/tokens", create_token, methods=["POST"]),
    Route("/v1/tokens", list_tokens, methods=["GET"]),
    Route("/v1/tokens/{id}", revoke_token, methods=["DELETE"]),
]
