"""Key-value and SQL routes: ``/v1/kv/{namespace}[/{key}]`` and ``POST /v1/sql/{namespace}``.

Values are raw bytes. Every key has a version, sent as its ``ETag``; a PUT or
DELETE with ``If-Match: "<version>"`` happens only if the key is still at that
version (412 otherwise), and ``If-None-Match: *`` only creates.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import json, node_of, principal, read_body
from edgenode.api.parsing import INT_MAX, PATH_MAX, query_int, query_str
from edgenode.api.schema import Body, Json, Raw, Reply, operation, pattern, read_model
from edgenode.errors import NotFound, ValidationFailed
from edgenode.state.names import NAMESPACE

Namespace = Annotated[str, pattern(NAMESPACE, "A namespace: 1-128 letters, digits, dots, dashes, underscores")]
Params = list[Json] | dict[str, Json]


class KvWritten(Reply):
    """A key's new version (also its ETag)."""

    key: str
    version: str


class KvKeys(Reply):
    """A page of keys; ``cursor`` fetches the next (null on the last page)."""

    keys: list[str]
    cursor: str | None


class Statement(Body):
    """One parameterized statement."""

    sql: str = Field(min_length=1)
    params: Params | None = Field(None, description="Positional (array) or named (object) parameters")


class SqlRequest(Body):
    """One statement (``sql``, ``params``), or a ``batch`` of them run in one transaction."""

    requires_one_of = ("sql", "batch")

    sql: str | None = Field(None, min_length=1)
    params: Params | None = None
    batch: list[Statement] | None = None


class SqlResult(Reply):
    """A statement's columns, rows and rows changed; a batch answers ``results`` of these instead."""

    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    rows_affected: int | None = None
    results: list[dict[str, Any]] | None = None


_KV = {"namespace": Namespace, "key": Annotated[str, Field(min_length=1, max_length=PATH_MAX)]}
_ETAG = Annotated[str, Field(pattern='^(?:\\*|(?:W/)?"[^",]+")$', max_length=256)]


def _tag(version: str) -> str:
    return f'"{version}"'


def _precondition(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if value == "*":
        return "*"
    if value.startswith("W/"):
        value = value[2:]
    if "," in value or len(value) < 3 or not (value.startswith('"') and value.endswith('"')):
        raise ValidationFailed(f"{name} takes one quoted version (an ETag) or *", field=name.lower())
    return value[1:-1]


@operation(responses={200: Raw()}, errors=(404,), path=_KV)
async def kv_get(request: Request) -> Response:
    """The raw value of a key, with its version as ETag."""
    p = principal(request)
    found = await node_of(request).state.akv_get_versioned(
        p.tenant, request.path_params["namespace"], request.path_params["key"])
    if found is None:
        raise NotFound(f"key {request.path_params['key']!r} not found in namespace "
                       f"{request.path_params['namespace']!r}")
    value, version = found
    return Response(value, media_type="application/octet-stream", headers={"etag": _tag(version)})


@operation(body=Raw(), body_required=False, responses={200: KvWritten}, errors=(400, 412, 413), path=_KV,
           headers={"if-match": _ETAG, "if-none-match": _ETAG})
async def kv_put(request: Request) -> Response:
    """Set a key to the raw request body; compare-and-set with If-Match / If-None-Match."""
    p = principal(request)
    node = node_of(request)
    if_match = _precondition(request, "If-Match")
    if_none_match = _precondition(request, "If-None-Match")
    value = await read_body(request, node.config.state.max_value_bytes)
    version = await node.state.akv_put(p.tenant, request.path_params["namespace"], request.path_params["key"],
                                       value, if_match=if_match, if_none_match=if_none_match)
    return json({"key": request.path_params["key"], "version": version}, headers={"etag": _tag(version)})


@operation(responses={204: None}, errors=(400, 412), path=_KV, headers={"if-match": _ETAG})
async def kv_delete(request: Request) -> Response:
    """Delete a key (idempotent); with If-Match only if it is at that version."""
    p = principal(request)
    await node_of(request).state.akv_delete(p.tenant, request.path_params["namespace"],
                                            request.path_params["key"], if_match=_precondition(request, "If-Match"))
    return Response(status_code=204)


def _decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one this API returned", field="cursor") from exc


@operation(responses={200: KvKeys}, path={"namespace": Namespace},
           query={"prefix": Annotated[str, Field(max_length=PATH_MAX)] | None,
                  "cursor": Annotated[str, Field(max_length=PATH_MAX)] | None,
                  "limit": Annotated[int, Field(ge=1, le=INT_MAX)] | None})
async def kv_list(request: Request) -> Response:
    """Keys by prefix, in order, a page at a time: ``?prefix=&cursor=&limit=``."""
    p = principal(request)
    limit = query_int(request, "limit", 100, lo=1, hi=INT_MAX)
    prefix = query_str(request, "prefix", "") or ""
    keys = await node_of(request).state.akv_list(
        p.tenant, request.path_params["namespace"], prefix, limit, after=_decode_cursor(query_str(request, "cursor")))
    cursor = base64.urlsafe_b64encode(keys[-1].encode()).decode().rstrip("=") if len(keys) == limit else None
    return json({"keys": keys, "cursor": cursor})


@operation(body=SqlRequest, responses={200: SqlResult}, errors=(400, 409), path={"namespace": Namespace})
async def sql(request: Request) -> Response:
    """Run one parameterized statement in the namespace's database: ``{"sql", "params"}``.

    ``{"batch": [{"sql", "params"}, ...]}`` runs several in one transaction instead (all or none)
    and answers ``{"results": [...]}``.
    """
    p = principal(request)
    body = await read_model(request, SqlRequest)
    if body.batch is not None:
        statements = [(s.sql, s.params) for s in body.batch]
        return json(await node_of(request).state.asql_batch(p.tenant, request.path_params["namespace"], statements))
    if body.sql is None:
        raise ValidationFailed("field 'sql' is required (or 'batch')", field="sql")
    result = await node_of(request).state.asql(p.tenant, request.path_params["namespace"], body.sql, body.params)
    return json(result)


routes = [
    Route("/v1/kv/{namespace}", kv_list, methods=["GET"]),
    Route("/v1/kv/{namespace}/{key:path}", kv_get, methods=["GET"]),
    Route("/v1/kv/{namespace}/{key:path}", kv_put, methods=["PUT"]),
    Route("/v1/kv/{namespace}/{key:path}", kv_delete, methods=["DELETE"]),
    Route("/v1/sql/{namespace}", sql, methods=["POST"]),
]
