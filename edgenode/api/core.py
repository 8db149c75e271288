"""Node routes: health, metrics, OpenAPI, status, tenants and tokens."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode import tenants
from edgenode.api.common import admin, json, node_of, principal
from edgenode.api.openapi import openapi
from edgenode.api.parsing import PATH_MAX, query_str
from edgenode.api.reference import REFERENCE_HEADERS, render
from edgenode.api.schema import Body, Raw, Reply, operation, pattern, read_model
from edgenode.auth.tokens import MAX_TOKEN_TTL_S, TENANT_NAME, TOKEN_NAME
from edgenode.errors import EdgenodeError
from edgenode.metrics import CONTENT_TYPE_LATEST
from edgenode.threads import STORE

#: Paths that skip bearer-token auth.
public = ("/healthz", "/metrics", "/openapi.json", "/docs")

TenantName = Annotated[str, pattern(TENANT_NAME, "A tenant: 1-63 lower-case letters, digits and dashes")]


class Health(Reply):
    """The node's health."""

    status: Literal["ok", "degraded", "unhealthy"]
    node: str
    version: str
    store: dict[str, Any]


class NodeStatus(Reply):
    """Identity, uptime and capabilities (admins see more)."""

    node: str
    version: str
    uptime_s: float | None
    capabilities: dict[str, Any]


class Document(Reply):
    """An OpenAPI 3.1 document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


class WhoAmI(Reply):
    """The caller."""

    tenant: str
    admin: bool
    token_id: str | None


class CreateTenant(Body):
    """A new tenant."""

    name: TenantName


class Tenant(Reply):
    """A tenant."""

    name: str
    created_at: float


class TenantList(Reply):
    """Tenants with their live token counts."""

    tenants: list[Tenant]


class CreateToken(Body):
    """A token to issue."""

    tenant: TenantName
    name: Annotated[str, pattern(TOKEN_NAME, "A label: up to 200 characters, no control characters")] = ""
    ttl_s: float | None = Field(None, gt=0, le=MAX_TOKEN_TTL_S, description="Seconds to live; none: never expires")
    admin: bool = False


class _Token(Reply):
    """What every answer about a token says of it."""

    id: str
    tenant: str
    name: str
    admin: bool
    created_at: float
    expires_at: float | None


class IssuedToken(_Token):
    """A new token, with its secret (shown once)."""

    token: str


class TokenInfo(_Token):
    """A token without its secret."""

    revoked_at: float | None
    state: Literal["live", "expired", "revoked"]


class TokenList(Reply):
    """Tokens without their secrets."""

    tokens: list[TokenInfo]


@operation(responses={200: Health, 503: Health}, security="public")
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


@operation(responses={200: Raw("text/plain", "Prometheus text format")}, security="public")
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
            labelled = (await STORE.run(node.auth.authenticate, auth[7:].strip())).admin
        except EdgenodeError:
            labelled = False
    return Response(node.metrics.render(labelled=labelled), media_type=CONTENT_TYPE_LATEST)


@operation(responses={200: Document}, security="public")
async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 description of the node's API."""
    return json(document(request))


@operation(responses={200: Raw("text/html")}, security="public")
async def docs(request: Request) -> Response:
    """The API reference: a page rendered from the OpenAPI document, with no scripts or outside assets."""
    page: bytes | None = getattr(request.app.state, "reference_page", None)
    if page is None:
        page = request.app.state.reference_page = render(document(request)).encode()
    return Response(page, media_type="text/html; charset=utf-8", headers=REFERENCE_HEADERS)


def document(request: Request) -> dict[str, Any]:
    """The app's OpenAPI document, made once per app (its routes do not change while it runs)."""
    doc: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if doc is None:
        doc = request.app.state.openapi = openapi(request.app.routes, node_of(request).version)
    return doc


@operation(responses={200: NodeStatus})
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


@operation(responses={200: WhoAmI})
async def whoami(request: Request) -> Response:
    """The tenant the caller's token acts for."""
    p = principal(request)
    return json({"tenant": p.tenant, "admin": p.admin, "token_id": p.token_id})


@operation(body=CreateTenant, responses={201: Tenant}, errors=(400, 403))
async def create_tenant(request: Request) -> Response:
    """Create a tenant (admin)."""
    admin(request)
    body = await read_model(request, CreateTenant)
    tenant = await node_of(request).auth.create_tenant(body.name)
    return json(tenant, status=201)


@operation(responses={200: TenantList}, errors=(403,))
async def list_tenants(request: Request) -> Response:
    """List tenants with their live token counts (admin)."""
    admin(request)
    return json({"tenants": await node_of(request).auth.list_tenants()})


@operation(responses={204: None}, errors=(403, 404), path={"name": TenantName})
async def delete_tenant(request: Request) -> Response:
    """Delete a tenant with everything it owns on this node, and revoke its tokens (admin)."""
    caller = admin(request)
    name = request.path_params["name"]
    await tenants.delete_tenant(node_of(request), name, own_request=caller.tenant == name)
    return Response(status_code=204)


@operation(body=CreateToken, responses={201: IssuedToken}, errors=(400, 403))
async def create_token(request: Request) -> Response:
    """Issue a token for a tenant: ``{"tenant", "name"?, "ttl_s"?, "admin"?}`` (admin)."""
    admin(request)
    body = await read_model(request, CreateToken)
    issued = await node_of(request).auth.create_token(body.tenant, name=body.name, ttl_s=body.ttl_s,
                                                      admin=body.admin)
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


@operation(responses={200: TokenList}, query={"tenant": Annotated[str, Field(max_length=PATH_MAX)] | None})
async def list_tokens(request: Request) -> Response:
    """List tokens without their secrets: all of them for admins, a tenant's own otherwise."""
    p = principal(request)
    wanted = query_str(request, "tenant")  # checked for every caller; only an admin's picks the tenant
    tenant = wanted if p.admin else p.tenant
    return json({"tokens": await node_of(request).auth.list_tokens(tenant)})


@operation(responses={204: None}, errors=(404,))
async def revoke_token(request: Request) -> Response:
    """Revoke a token: any for admins, the tenant's own otherwise."""
    p = principal(request)
    await node_of(request).auth.revoke_token(request.path_params["id"], tenant=None if p.admin else p.tenant)
    return Response(status_code=204)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/whoami", whoami, methods=["GET"]),
    Route("/v1/tenants", create_tenant, methods=["POST"]),
    Route("/v1/tenants", list_tenants, methods=["GET"]),
    Route("/v1/tenants/{name}", delete_tenant, methods=["DELETE"]),
    Route("/v1/tokens", create_token, methods=["POST"]),
    Route("/v1/tokens", list_tokens, methods=["GET"]),
    Route("/v1/tokens/{id}", revoke_token, methods=["DELETE"]),
]
