"""Describe the app's routes as OpenAPI 3.1, from their paths, docstrings and ``@operation`` declarations.

Each endpoint's models (``edgenode.api.schema``) give its request body, its responses and its
parameters; their JSON Schemas land once each under ``components/schemas``. Errors share one
``Error`` schema. Streamed replies are marked with ``x-edgenode-stream`` (``sse``, ``ndjson``,
``text`` or ``git``) and, where one is declared, the schema of one event in ``x-edgenode-item``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Mount, Route

from edgenode.api.parsing import INT_MAX, INT_MIN
from edgenode.api.schema import JSON_VALUE_MARK, JSON_VALUE_REF, Operation, Raw, Stream, json_value_schema, operation_of

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")
_REF = "#/components/schemas/{model}"
#: Parameters use the capabilities' own (Python) name patterns, as bodies do.
_PARAM_CONFIG = ConfigDict(regex_engine="python-re")

#: The shared error body.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "id"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code, e.g. validation_failed"},
                "message": {"type": "string", "description": "What went wrong, for a human"},
                "id": {"type": "string", "description": "The request id (also in the X-Request-Id header)"},
                "field": {"type": ["string", "null"], "description": "The request field at fault (400)"},
            },
            "additionalProperties": True,
        }
    },
}

#: What a declared ``security`` becomes in the document.
_SECURITY: dict[str, list[dict[str, list[str]]] | None] = {
    "bearer": None,  # the document's default
    "public": [],
    "git": [{"gitBasic": []}, {"bearer": []}],
    "peer": [{"peerSignature": []}],
}

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 206: "Partial content",
            307: "Redirect", 400: "Bad request or validation failed", 401: "No valid credentials",
            403: "Not allowed", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
            412: "Precondition failed", 413: "Payload too large", 415: "Unsupported media type",
            422: "Unprocessable", 429: "Too many requests", 502: "Upstream failed", 503: "Unavailable",
            504: "Upstream timed out", 507: "Insufficient storage"}


def openapi(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI document for ``routes``."""
    found = _walk(routes, "")
    models = _models(operation_of(endpoint) for _, _, endpoint in found)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, "JsonValue": json_value_schema(INT_MIN, INT_MAX),
                               **defs.get("$defs", {})}
    names = {model: refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for path, methods, endpoint in found:
        spec_path = _PARAM.sub(r"{\1}", path)
        declared = operation_of(endpoint)
        for method in sorted(methods - {"HEAD"}):
            op = _operation(path, method, endpoint, declared, names)
            op["operationId"] = _unique(op["operationId"], seen_ids)
            paths.setdefault(spec_path, {})[method.lower()] = op
    doc: dict[str, Any] = _with_json_value_refs({
        "openapi": "3.1.0",
        "info": {"title": "edgenode", "version": version,
                 "description": "The HTTP API of an edgenode node. Every /v1 route takes a bearer token unless "
                                "marked otherwise; errors are {\"error\": {\"code\", \"message\", \"id\"}}."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An edgenode API token"},
                "gitBasic": {"type": "http", "scheme": "basic",
                             "description": "Git clients: any user name, a repository token or API token as password"},
                "peerSignature": {"type": "apiKey", "in": "header", "name": "x-edgenode-signature",
                                  "description": "Fleet peers: requests signed with the fleet key"},
            },
            "schemas": schemas,
        },
    })
    return doc


def _with_json_value_refs(node: Any) -> Any:
    """``node`` with each stand-in for "any JSON value" made a reference to the document's JsonValue."""
    if isinstance(node, dict):
        if node.get(JSON_VALUE_MARK) is True:
            return {"$ref": JSON_VALUE_REF, **{k: v for k, v in node.items() if k != JSON_VALUE_MARK}}
        return {k: _with_json_value_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_json_value_refs(v) for v in node]
    return node


def _operation(path: str, method: str, endpoint: Any, declared: Operation | None,
               names: dict[type[BaseModel], str]) -> dict[str, Any]:
    doc = inspect.getdoc(endpoint) or ""
    summary, _, description = doc.partition("\n")
    module = endpoint.__module__.rsplit(".", 1)[-1]
    op: dict[str, Any] = {"summary": summary.strip() or endpoint.__name__, "tags": [module],
                          "operationId": f"{module}_{endpoint.__name__}_{method.lower()}"}
    if description.strip():
        op["description"] = description.strip()
    declared = declared or Operation()
    params = [{"name": name, "in": "path", "required": True,
               "schema": _type_schema(declared.path.get(name, str))} for name in _PARAM.findall(path)]
    params += [_query_param(name, kind) for name, kind in declared.query.items()]
    params += [{"name": name, "in": "header", "required": False, "schema": _type_schema(kind)}
               for name, kind in declared.headers.items()]
    op["parameters"] = params
    if declared.body is not None and method in ("POST", "PUT", "PATCH"):
        kinds = declared.body if isinstance(declared.body, tuple) else (declared.body,)
        content: dict[str, Any] = {}
        for kind in kinds:
            content.update(_content(kind, names))
        op["requestBody"] = {"required": declared.body_required, "content": content}
    responses: dict[str, Any] = {}
    for status, reply in sorted(declared.responses.items()):
        entry: dict[str, Any] = {"description": _REASONS.get(status, "Success")}
        if reply is not None:
            entry["content"] = {}
            for kind in reply if isinstance(reply, tuple) else (reply,):
                entry["content"].update(_content(kind, names))
        if isinstance(reply, Stream):
            entry["description"] += f"; streamed ({reply.format})"
            if reply.description:
                entry["description"] += f": {reply.description}"
        responses[str(status)] = entry
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status in sorted({*declared.errors, *((401,) if declared.security != "public" else ())}):
        responses[str(status)] = {"description": _REASONS.get(status, "Error"), **error}
    responses["default"] = {"description": "An error: {\"error\": {\"code\", \"message\", \"id\"}}", **error}
    op["responses"] = responses
    security = _SECURITY[declared.security]
    if security is not None:
        op["security"] = security
    if any(isinstance(c, Stream) for c in declared.responses.values()):
        op["x-edgenode-stream"] = True
    return op


def _content(content: type[BaseModel] | Raw | Stream, names: dict[type[BaseModel], str]) -> dict[str, Any]:
    if isinstance(content, Stream):
        media: dict[str, Any] = {"schema": {"type": "string"}, "x-edgenode-stream": content.format}
        if content.item is not None:
            media["x-edgenode-item"] = {"$ref": _REF.format(model=names[content.item])}
        return {content.media_type: media}
    if isinstance(content, Raw):
        return {content.media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {"application/json": {"schema": {"$ref": _REF.format(model=names[content])}}}


def _query_param(name: str, kind: Any) -> dict[str, Any]:
    schema = _type_schema(kind)
    required = "default" not in schema and not _nullable(schema)
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _nullable(schema: dict[str, Any]) -> bool:
    return any(s.get("type") == "null" for s in schema.get("anyOf", ()))


def _type_schema(kind: Any) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(kind, config=_PARAM_CONFIG).json_schema(ref_template=_REF)
    return schema


def _models(ops: Any) -> list[type[BaseModel]]:
    """Every model the operations name, once each, in a stable order."""
    found: dict[type[BaseModel], None] = {}
    for op in ops:
        if op is None:
            continue
        kinds = [*(op.body if isinstance(op.body, tuple) else (op.body,))]
        for reply in op.responses.values():
            kinds.extend(reply if isinstance(reply, tuple) else (reply,))
        for content in kinds:
            if isinstance(content, Stream):
                content = content.item
            if isinstance(content, type) and issubclass(content, BaseModel):
                found[content] = None
    return list(found)


def _unique(operation_id: str, seen: set[str]) -> str:
    candidate, n = operation_id, 1
    while candidate in seen:
        n += 1
        candidate = f"{operation_id}_{n}"
    seen.add(candidate)
    return candidate


def _walk(routes: Sequence[BaseRoute], prefix: str) -> list[tuple[str, set[str], Any]]:
    found: list[tuple[str, set[str], Any]] = []
    for route in routes:
        if isinstance(route, Route) and route.include_in_schema:
            found.append((prefix + route.path, set(route.methods or {"GET"}), route.endpoint))
        elif isinstance(route, Mount):
            found.extend(_walk(route.routes, prefix + route.path))
    return found
