"""The OpenAPI document covers the whole route table with schemas, and body validation keeps its shape.

The routes come from ``edgenode.api.app.ROUTE_MODULES``, so a route added without an ``@operation``
(or one that reads a body it does not declare) fails here.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from edgenode import __version__
from edgenode.api.app import ROUTE_MODULES
from edgenode.api.openapi import openapi
from edgenode.api.schema import Body, Raw, operation_of, validate
from edgenode.errors import ValidationFailed
from edgenode.node import Node

ROUTES = [(module, route) for module in ROUTE_MODULES for route in module.routes
          if isinstance(route, Route) and route.include_in_schema]
DOC = openapi([route for _, route in ROUTES], __version__)
OPERATIONS = [(path, method, op) for path, item in DOC["paths"].items() for method, op in item.items()]
#: What an endpoint's source does when it reads a body (directly or through a helper of its module).
READS_BODY = re.compile(r"read_(json|model|validated|body)\(|request\.stream\(\)|_spec\(request\)|authenticate\(")
STREAMED = {"text/event-stream", "application/x-ndjson", "text/plain"}


def _public(path: str) -> bool:
    public = {p for module in ROUTE_MODULES for p in getattr(module, "public", ())}
    concrete = re.sub(r"{[^}]+}", "x", path)
    return any(concrete == p or (p.endswith("/") and concrete.startswith(p)) for p in public)


def _schema_of(media: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = media["schema"]
    return schema


@pytest.mark.parametrize(("module", "route"), ROUTES, ids=[f"{r.path} {sorted(r.methods or ())}" for _, r in ROUTES])
def test_every_route_declares_its_operation(module: Any, route: Route) -> None:
    declared = operation_of(route.endpoint)
    assert declared is not None, f"{route.path}: {route.endpoint.__name__} has no @operation"
    assert declared.responses, f"{route.path}: no success response declared"
    source = inspect.getsource(route.endpoint)
    if READS_BODY.search(source) and route.methods and route.methods & {"POST", "PUT", "PATCH"}:
        assert declared.body is not None, f"{route.path}: reads a body but declares none"


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m, _ in OPERATIONS])
def test_every_operation_has_schemas(path: str, method: str, op: dict[str, Any]) -> None:
    responses = op["responses"]
    successes = [s for s in responses if s.startswith(("2", "3"))]
    assert successes, f"{method} {path}: no success response"
    for status in successes:
        if status == "204":
            assert "content" not in responses[status]
            continue
        content = responses[status].get("content")
        assert content, f"{method} {path} {status}: no content declared"
        for media_type, media in content.items():
            assert _schema_of(media), f"{method} {path} {status} {media_type}: no schema"
            if media_type in STREAMED or media_type.startswith("application/x-git"):
                assert media.get("x-edgenode-stream") or media_type == "text/plain" and path == "/metrics", \
                    f"{method} {path}: streamed {media_type} not marked"
    errors = [s for s in responses if s.startswith(("4", "5")) or s == "default"]
    assert "default" in errors
    for status in errors:
        if (path, status) == ("/healthz", "503"):
            continue  # unhealthy: the health body itself, with 503
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    if "requestBody" in op:
        for media_type, media in op["requestBody"]["content"].items():
            assert _schema_of(media), f"{method} {path} body {media_type}: no schema"
    for param in op["parameters"]:
        assert param["schema"], f"{method} {path}: parameter {param['name']} has no schema"
    # Security: public paths say so, every other inherits the bearer token or names its own scheme.
    security = op.get("security")
    if _public(path):
        assert security is not None, f"{method} {path}: public path documented as needing a token"
    else:
        assert security is None, f"{method} {path}: needs a token but documents {security}"
    for requirement in security or DOC["security"]:
        for scheme in requirement:
            assert scheme in DOC["components"]["securitySchemes"]


def test_every_v1_body_is_a_json_schema_or_a_declared_media_type() -> None:
    bodies = 0
    for path, method, op in OPERATIONS:
        if not path.startswith("/v1/") or method not in ("post", "put", "patch") or "requestBody" not in op:
            continue
        bodies += 1
        for media_type, media in op["requestBody"]["content"].items():
            if media_type == "application/json":
                assert "$ref" in media["schema"], f"{method} {path}: JSON body without a model"
    assert bodies > 25


def test_models_are_named_once_and_every_reference_resolves() -> None:
    schemas = DOC["components"]["schemas"]
    assert "Error" in schemas and "JsonValue" in schemas
    text = repr(DOC)
    for name in set(re.findall(r"#/components/schemas/([\w.-]+)", text)):
        assert name in schemas, name
    assert not [n for n in schemas if "__" in n], "two models share a name: give them distinct ones"
    ids = [op["operationId"] for _, _, op in OPERATIONS]
    assert len(ids) == len(set(ids))


def test_the_document_marks_streams() -> None:
    exec_op = DOC["paths"]["/v1/sandboxes/{id}/exec"]["post"]
    events = exec_op["responses"]["200"]["content"]["text/event-stream"]
    assert events["x-edgenode-stream"] == "sse" and events["x-edgenode-item"]["$ref"].endswith("/ExecLine")
    assert "application/json" in exec_op["responses"]["200"]["content"]
    pack = DOC["paths"]["/git/{tenant}/{name}.git/git-upload-pack"]["post"]
    assert pack["responses"]["200"]["content"]["application/x-git-upload-pack-result"]["x-edgenode-stream"] == "git"
    assert pack["security"] == [{"gitBasic": []}, {"bearer": []}]
    logs = DOC["paths"]["/v1/sandboxes/{id}/processes/{pid}/logs"]["get"]
    assert logs["x-edgenode-stream"] is True


# -- validation keeps the error shape ---------------------------------------------------------------


class _Sample(Body):
    name: str
    count: int = 0
    nested: list[_Item] = []


class _Item(Body):
    size: int


_Sample.model_rebuild()


@pytest.mark.parametrize(("data", "field"), [
    ({}, "name"), ({"name": 5}, "name"), ({"name": "a", "count": True}, "count"),
    ({"name": "a", "count": 1.5}, "count"), ({"name": "a", "count": "1"}, "count"),
    ({"name": "a", "nested": [{"size": 1}, {"size": "x"}]}, "nested[1].size"), ({"name": None}, "name"),
])
def test_a_model_refuses_with_validation_failed_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate(_Sample, data)
    assert caught.value.field == field and caught.value.code == "validation_failed" and field in caught.value.message


def test_a_model_takes_null_as_absent_and_whole_numbers_as_integers() -> None:
    body = validate(_Sample, {"name": "a", "count": None, "nested": [{"size": 3.0}], "other": 1})
    assert body.count == 0 and body.nested[0].size == 3 and isinstance(body.nested[0].size, int)


def test_a_bad_body_answers_400_with_the_field(local: tuple[Node, TestClient]) -> None:
    _, client = local
    for body, field in [({"tenant": 5}, "tenant"), ({"tenant": "Bad Name"}, "tenant"),
                        ({"tenant": "ok", "ttl_s": "soon"}, "ttl_s"), ({"tenant": "ok", "admin": 1}, "admin")]:
        r = client.post("/v1/tokens", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_failed" and error["field"] == field and error["id"], error
    # The parsing rules still run first, on the one body reader: a 2**64 integer names its field.
    r = client.post("/v1/tokens", content=b'{"tenant":"ok","ttl_s":18446744073709551616}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "ttl_s"
    r = client.post("/v1/tokens", content=b'{"tenant":"ok","ttl_s":NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "ttl_s"


def test_reading_a_model_the_route_does_not_declare_is_a_bug() -> None:
    from edgenode.api.schema import _check_declared

    class _Request:
        url = type("U", (), {"path": "/v1/tokens"})()
        scope = {"endpoint": next(r.endpoint for _, r in ROUTES if r.path == "/v1/tokens" and "POST" in r.methods)}

    with pytest.raises(RuntimeError, match="does not declare"):
        _check_declared(_Request(), _Sample)  # type: ignore[arg-type]


# -- the reference page -----------------------------------------------------------------------------


def test_the_reference_page_is_self_contained(local: tuple[Node, TestClient]) -> None:
    _, client = local
    r = client.get("/docs", headers={"authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    page = r.text
    assert "<script" not in page.lower()
    # Nothing loaded from elsewhere: every src and href is in the page, or the node's own document.
    for target in re.findall(r"""(?:src|href)=['"]([^'"]+)""", page):
        assert target.startswith("#") or target == "/openapi.json", target
    for _, _, op in OPERATIONS:
        assert f"id='{op['operationId']}'" in page, op["operationId"]
    assert "id='schema-CreateToken'" in page and "id='schema-Error'" in page
    assert client.get("/openapi.json", headers={"authorization": ""}).json() == client.app.state.openapi


def test_raw_bodies_are_declared_with_their_media_type() -> None:
    kv = DOC["paths"]["/v1/kv/{namespace}/{key}"]["put"]["requestBody"]["content"]
    assert kv == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    deploy = DOC["paths"]["/v1/workers/{name}"]["put"]["requestBody"]["content"]
    assert set(deploy) == {"application/json", "application/wasm"}
    assert Raw().media_type == "application/octet-stream"
