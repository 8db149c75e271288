from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from edgenode.node import Node


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["id"] == response.headers["x-request-id"]
    return error


def test_healthz_needs_no_token(local: tuple[Node, TestClient]) -> None:
    node, client = local
    r = client.get("/healthz", headers={"authorization": ""})
    assert r.status_code == 200
    body = r.json()
    assert {k: body[k] for k in ("status", "node", "version")} == {"status": "ok", "node": node.id,
                                                                    "version": node.version}
    assert body["store"]["ok"] is True and body["store"]["stuck_writers"] == []


def test_missing_and_bad_tokens(local: tuple[Node, TestClient]) -> None:
    _, client = local
    error_of(client.get("/v1/status", headers={"authorization": ""}), 401, "unauthorized")
    r = client.get("/v1/status", headers={"authorization": "Bearer edn_nope"})
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    error_of(client.get("/v1/status", headers={"authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized")


def test_unknown_route_and_wrong_method(local: tuple[Node, TestClient]) -> None:
    _, client = local
    error_of(client.get("/v1/nothing-here"), 404, "not_found")
    r = client.delete("/v1/tokens")
    error_of(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
        (b'{"tenant": 5}', "application/json", 400, "validation_failed"),
        (b'{"name": "x"}', "application/json", 400, "validation_failed"),
        (b'{"tenant": "Bad Name"}', "application/json", 400, "validation_failed"),
        (b'{"tenant": "acme", "ttl_s": "soon"}', "application/json", 400, "validation_failed"),
        (b'{"tenant": "acme", "admin": "yes"}', "application/json", 400, "validation_failed"),
        (b"tenant=acme", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
    ],
)
def test_malformed_bodies(local: tuple[Node, TestClient], body: bytes, ctype: str, status: int, code: str) -> None:
    _, client = local
    r = client.post("/v1/tokens", content=body, headers={"content-type": ctype})
    error = error_of(r, status, code)
    if code == "validation_failed" and b"tenant" not in body:
        assert error["field"] == "tenant"
    assert client.get("/healthz").status_code == 200


def test_oversized_body_is_413(local: tuple[Node, TestClient]) -> None:
    node, client = local
    limit = node.config.http.max_body_bytes
    big = b'{"tenant": "' + b"a" * limit + b'"}'
    error = error_of(client.post("/v1/tokens", content=big, headers={"content-type": "application/json"}),
                     413, "payload_too_large")
    assert error["limit"] == limit

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield b'{"tenant": "'
        for _ in range(limit // 65536 + 1):
            yield b"a" * 65536
        yield b'"}'

    error_of(client.post("/v1/tokens", content=chunks(), headers={"content-type": "application/json"}),
             413, "payload_too_large")
    assert client.get("/v1/whoami").status_code == 200


def test_request_id_is_echoed_or_made(local: tuple[Node, TestClient]) -> None:
    _, client = local
    r = client.get("/v1/nothing", headers={"x-request-id": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    assert r.json()["error"]["id"] == "trace-123"
    r = client.get("/v1/nothing", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 16


def test_tokens_and_tenants_over_http(local: tuple[Node, TestClient]) -> None:
    _, client = local
    r = client.post("/v1/tokens", json={"tenant": "acme", "name": "ci", "ttl_s": 3600})
    assert r.status_code == 201
    issued = r.json()
    assert issued["tenant"] == "acme" and issued["token"].startswith("edn_") and issued["expires_at"]
    acme = {"authorization": f"Bearer {issued['token']}"}
    assert client.get("/v1/whoami", headers=acme).json() == {"tenant": "acme", "admin": False,
                                                              "token_id": issued["id"]}
    # a tenant token is not an admin token, and cannot act for another tenant
    error_of(client.post("/v1/tokens", json={"tenant": "acme"}, headers=acme), 403, "forbidden")
    error_of(client.get("/v1/tenants", headers=acme), 403, "forbidden")
    error_of(client.get("/v1/whoami", headers={**acme, "x-edgenode-tenant": "other"}), 403, "forbidden")
    # it lists only its own tenant's tokens, whatever it asks for
    client.post("/v1/tokens", json={"tenant": "other"})
    listed = client.get("/v1/tokens?tenant=other", headers=acme).json()["tokens"]
    assert {t["tenant"] for t in listed} == {"acme"}
    assert all("hash" not in t and "token" not in t for t in listed)
    # the admin sees every tenant and may act for one
    names = [t["name"] for t in client.get("/v1/tenants").json()["tenants"]]
    assert names == ["acme", "other"]
    assert client.get("/v1/whoami", headers={"x-edgenode-tenant": "acme"}).json()["tenant"] == "acme"
    # revoking works at once; a tenant cannot revoke another tenant's token
    other_id = [t for t in client.get("/v1/tokens").json()["tokens"] if t["tenant"] == "other"][0]["id"]
    error_of(client.delete(f"/v1/tokens/{other_id}", headers=acme), 404, "not_found")
    assert client.delete(f"/v1/tokens/{issued['id']}").status_code == 204
    error_of(client.get("/v1/whoami", headers=acme), 401, "token_revoked")


def test_status_shows_config_to_admins_only(local: tuple[Node, TestClient]) -> None:
    node, client = local
    body = client.get("/v1/status").json()
    assert body["node"] == node.id and body["config"]["admin_token"] in ("", "<redacted>")
    assert str(node.data_dir) in str(body)
    assert set(body["event_loop_lag"]) == {"samples", "p50_ms", "p99_ms", "max_ms"}
    token = client.post("/v1/tokens", json={"tenant": "acme"}).json()["token"]
    mine = client.get("/v1/status", headers={"authorization": f"Bearer {token}"}).json()
    assert "config" not in mine and str(node.data_dir) not in str(mine)
    assert set(mine) == {"node", "version", "uptime_s", "capabilities"} and "state" in mine["capabilities"]


def test_metrics_count_requests_per_route(local: tuple[Node, TestClient]) -> None:
    _, client = local
    for _ in range(3):
        client.get("/v1/whoami")
    client.get("/v1/nothing")
    text = client.get("/metrics", headers={"authorization": ""}).text
    assert 'edgenode_http_requests_total{method="GET",route="/v1/whoami",status="200"} 3.0' in text
    assert 'edgenode_http_request_duration_seconds_count{method="GET",route="/v1/whoami"} 3.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "edgenode_info{" in text


def test_openapi_describes_public_routes(local: tuple[Node, TestClient]) -> None:
    _, client = local
    spec = client.get("/openapi.json", headers={"authorization": ""}).json()
    assert spec["openapi"].startswith("3.")
    assert {"get"} <= set(spec["paths"]["/healthz"]) and spec["paths"]["/healthz"]["get"]["security"] == []
    assert {"get", "post"} <= set(spec["paths"]["/v1/tokens"])
    assert spec["paths"]["/v1/tokens/{id}"]["delete"]["parameters"][0]["name"] == "id"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["summary"] != op["operationId"], (path, method)


def _public_prefixes() -> set[str]:
    from edgenode.api.app import ROUTE_MODULES

    return {p for module in ROUTE_MODULES for p in getattr(module, "public", ())}


def test_public_paths_are_exactly_the_reviewed_ones() -> None:
    # Adding a path that skips bearer auth must be a deliberate, reviewed change to this list.
    assert _public_prefixes() == {
        "/healthz", "/metrics", "/openapi.json", "/docs",  # no secrets
        "/git/",  # Git smart HTTP: basic auth with a repo or tenant token
        "/v1/peer/cluster/", "/v1/peer/artifacts/",  # fleet-signed peer requests
        "/p/",  # workers deployed with "public": true
        "/sp/",  # sandbox ports exposed with "public": true (only with sandboxes.public_ports)
        "/v1/agents/ui", "/v1/agents/ui/",  # static page and script; its API calls carry a token
    }


def test_every_non_public_route_demands_a_token(local: tuple[Node, TestClient]) -> None:
    _, client = local
    spec = client.get("/openapi.json").json()
    public = _public_prefixes()

    def is_public(path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in public)

    checked = 0
    for path, ops in spec["paths"].items():
        concrete = path.replace("{", "").replace("}", "")
        if is_public(concrete):
            continue
        for method in ops:
            r = client.request(method.upper(), concrete, headers={"authorization": ""})
            assert r.status_code == 401, (method, path, r.status_code)
            checked += 1
    assert checked > 10


def test_413_closes_the_connection_so_the_next_request_is_not_poisoned(node) -> None:  # type: ignore[no-untyped-def]
    import socket

    host, port = node.url.removeprefix("http://").split(":")
    limit = 16 * 1024 * 1024
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = (f"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.admin_token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {limit + 10}\r\n\r\n")
        s.sendall(head.encode() + b'{"tenant": "' + b"a" * 65536)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break  # the server closed the connection after answering
            data += chunk
    assert data.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in data.lower()
    with node.client() as c:
        assert c.get("/v1/whoami").status_code == 200
