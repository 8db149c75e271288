"""Deploy, invoke, inspect, roll back and delete workers through a real node."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.isolates.conftest import error_code, hello_component, start_node
from tests.support import NodeProcess


def test_deploy_reports_version_and_content_hash(admin: httpx.Client, kitchen_files: dict[str, str]) -> None:
    first = admin.put("/v1/workers/same", json={"files": kitchen_files})
    second = admin.put("/v1/workers/same", json={"files": kitchen_files})
    assert first.status_code == second.status_code == 201
    assert first.json()["version"] == 1 and second.json()["version"] == 2
    assert first.json()["hash"] == second.json()["hash"]  # content-addressed: the same build
    assert "built" not in second.json()


def test_invoke_passes_method_path_query_headers_and_body(admin: httpx.Client, kitchen: str) -> None:
    r = admin.post("/w/kitchen/echo/deeper?a=1&b=two", content=b"payload", headers={"x-thing": "v"})
    assert r.status_code == 200, r.text
    assert r.json() == {"method": "POST", "path": "/echo/deeper", "query": {"a": "1", "b": "two"},
                        "headers": {"x-thing": "v"}, "body": "payload"}
    assert "cpu;dur=" in r.headers["server-timing"]


def test_the_callers_token_is_not_shown_to_the_guest(admin: httpx.Client, kitchen: str) -> None:
    # The guest lists every header it got: the bearer token and the acting-for header are not among them.
    names = admin.get("/w/kitchen/headers", headers={"x-check": "1", "x-edgenode-tenant": "default"}).json()
    assert "x-check" in names and "host" in names
    assert "authorization" not in names and "x-edgenode-tenant" not in names


def test_handler_return_types(admin: httpx.Client, kitchen: str) -> None:
    text = admin.get("/w/kitchen/text")
    assert (text.status_code, text.text) == (200, "HELLO!")  # from a vendored helper module
    assert text.headers["content-type"].startswith("text/plain")
    raw = admin.get("/w/kitchen/raw")
    assert raw.content == bytes(range(256)) and raw.headers["content-type"] == "application/octet-stream"
    assert admin.get("/w/kitchen/items").json() == [1, 2, 3]
    teapot = admin.get("/w/kitchen/status")
    assert (teapot.status_code, teapot.text, teapot.headers["x-guest"]) == (418, "teapot", "yes")


def test_env_reaches_the_guest(admin: httpx.Client, kitchen: str) -> None:
    assert admin.get("/w/kitchen/env").json() == {"greeting": "hi", "keys": ["GREETING"]}


def test_kv_and_sql_persist_across_isolates(admin: httpx.Client, kitchen: str) -> None:
    assert admin.get("/w/kitchen/counter").json() == {"hits": 1}
    assert admin.get("/w/kitchen/counter").json() == {"hits": 2}
    assert admin.put("/w/kitchen/kv?key=colour", content=b"blue").status_code == 200
    assert admin.get("/w/kitchen/kv?key=colour").json() == {"key": "colour", "value": "blue"}
    assert admin.get("/w/kitchen/kv?list=1&prefix=col").json() == {"keys": ["colour"]}
    admin.delete("/w/kitchen/kv?key=colour")
    assert admin.get("/w/kitchen/kv?key=colour").json()["value"] is None
    admin.post("/w/kitchen/sql", content=b"first")
    rows = admin.post("/w/kitchen/sql", content=b"second").json()["rows"]
    assert rows == [["first"], ["second"]]
    # The worker's namespace is the state API's "worker.kitchen".
    assert admin.get("/v1/kv/worker.kitchen/hits").content == b"2"


def test_list_describe_rollback_delete(admin: httpx.Client, kitchen_files: dict[str, str]) -> None:
    assert admin.put("/v1/workers/life", json={"files": kitchen_files, "env": {"SECRET": "s3"}}).status_code == 201
    assert admin.put("/v1/workers/life", content=hello_component(),
                     headers={"content-type": "application/wasm"}).status_code == 201
    names = [w["name"] for w in admin.get("/v1/workers").json()["workers"]]
    assert "life" in names
    info = admin.get("/v1/workers/life").json()
    assert info["version"] == 2 and info["kind"] == "component"
    assert [v["version"] for v in info["versions"]] == [2, 1]
    assert info["versions"][1]["env"] == ["SECRET"] and "s3" not in str(info)  # names, never values
    assert admin.get("/w/life/x").text == "hello from wat"
    back = admin.post("/v1/workers/life/rollback")
    assert back.status_code == 200 and back.json()["version"] == 1
    assert admin.get("/w/life/text").text == "HELLO!"
    assert admin.post("/v1/workers/life/rollback", json={"version": 2}).json()["version"] == 2
    assert admin.get("/w/life/x").text == "hello from wat"
    missing = admin.post("/v1/workers/life/rollback", json={"version": 9})
    assert (missing.status_code, error_code(missing)) == (404, "worker_not_found")
    assert admin.delete("/v1/workers/life").status_code == 204
    gone = admin.get("/w/life/x")
    assert (gone.status_code, error_code(gone)) == (404, "worker_not_found")


def test_bad_deploys(admin: httpx.Client) -> None:
    cases = [
        ({"files": {"other.py": "x = 1"}}, "validation_failed"),
        ({"files": {"../main.py": "x"}}, "validation_failed"),
        ({"files": {"main.py": "", "edgenode_guest.py": ""}}, "validation_failed"),
        ({"files": "main.py"}, "validation_failed"),
        ({"files": {"main.py": "def handle(r): pass"}, "limits": {"cpu_ms": 10**9}}, "validation_failed"),
        ({"files": {"main.py": "def handle(r): pass"}, "allowed_hosts": ["ftp://x"]}, "validation_failed"),
        ({"files": {"main.py": "def handle(r): pass"}, "env": {"A": 1}}, "validation_failed"),
    ]
    for body, code in cases:
        r = admin.put("/v1/workers/bad", json=body)
        assert (r.status_code, error_code(r)) == (400, code), (body, r.text)
    r = admin.put("/v1/workers/Bad_Name", json={"files": {"main.py": ""}})
    assert (r.status_code, error_code(r)) == (400, "validation_failed")
    r = admin.put("/v1/workers/bad", content=b"hello", headers={"content-type": "text/plain"})
    assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")


def test_corrupt_components_are_refused(admin: httpx.Client) -> None:
    for blob in (b"not wasm at all", b"\0asm\x0d\x00\x01\x00garbage", hello_component()[:-7]):
        r = admin.put("/v1/workers/corrupt", content=blob, headers={"content-type": "application/wasm"})
        assert (r.status_code, error_code(r)) == (400, "invalid_component"), r.text
    # A component of some other world: no handle export.
    other = b"\0asm\x0d\x00\x01\x00"
    r = admin.put("/v1/workers/corrupt", content=other, headers={"content-type": "application/wasm"})
    assert (r.status_code, error_code(r)) == (400, "invalid_component")
    assert admin.get("/w/corrupt/x").status_code == 404


def test_build_error_returns_the_compilers_message(admin: httpx.Client) -> None:
    r = admin.put("/v1/workers/broken", json={"files": {"main.py": "def handle(request):\n    return (\n"}})
    assert (r.status_code, error_code(r)) == (400, "build_failed")
    output = r.json()["error"]["output"]
    assert "SyntaxError" in output and "main.py" in output
    assert (r.json()["error"]["file"], r.json()["error"]["line"]) == ("main.py", 2)


def test_invocation_needs_the_owners_token(wnode: NodeProcess, kitchen: str) -> None:
    r = httpx.get(wnode.url + "/w/kitchen/text")
    assert (r.status_code, error_code(r)) == (401, "unauthorized")
    public = httpx.get(wnode.url + "/p/default/kitchen/text")  # deployed without "public": true
    assert (public.status_code, error_code(public)) == (404, "worker_not_found")


def test_public_workers_need_no_token(admin: httpx.Client, wnode: NodeProcess) -> None:
    r = admin.put("/v1/workers/open?public=true", content=hello_component(),
                  headers={"content-type": "application/wasm"})
    assert r.status_code == 201
    assert httpx.get(wnode.url + "/p/default/open/x").text == "hello from wat"
    assert admin.get("/v1/workers/open").json()["public"] is True
    r = httpx.get(wnode.url + "/p/default/open/trap")
    assert r.status_code == 422 and error_code(r) == "trap" and "usage" not in r.json()["error"]


def test_a_tenant_sees_only_its_own_workers_and_kv(admin: httpx.Client, wnode: NodeProcess,
                                                    kitchen_files: dict[str, str]) -> None:
    tokens = {}
    for tenant in ("alpha", "beta"):
        tokens[tenant] = admin.post("/v1/tokens", json={"tenant": tenant}).json()["token"]
    with wnode.client(tokens["alpha"]) as alpha, wnode.client(tokens["beta"]) as beta:
        for c in (alpha, beta):
            assert c.put("/v1/workers/shared-name", json={"files": kitchen_files}).status_code == 201
        alpha.put("/w/shared-name/kv?key=secret", content=b"alpha-only")
        assert alpha.get("/w/shared-name/kv?key=secret").json()["value"] == "alpha-only"
        # Same worker name, same key, other tenant: a different namespace.
        assert beta.get("/w/shared-name/kv?key=secret").json()["value"] is None
        assert beta.get("/w/shared-name/kv?list=1").json() == {"keys": []}
        assert "kitchen" not in [w["name"] for w in beta.get("/v1/workers").json()["workers"]]
        r = beta.get("/w/kitchen/text")  # the default tenant's worker
        assert (r.status_code, error_code(r)) == (404, "worker_not_found")
        denied = beta.get("/w/kitchen/text", headers={"x-edgenode-tenant": "default"})
        assert denied.status_code == 403


def test_usage_and_metrics_count_invocations(admin: httpx.Client, wnode: NodeProcess, kitchen: str) -> None:
    for _ in range(3):
        admin.get("/w/kitchen/text")
    admin.get("/w/kitchen/fail")
    usage = {u["worker"]: u for u in admin.get("/v1/usage").json()["usage"]}
    k = usage["kitchen"]
    assert k["requests"] >= 4 and k["errors"] >= 1 and k["cpu_ms"] > 0 and k["wall_ms"] >= k["cpu_ms"] * 0.5
    assert k["max_memory_limit_mb"] == 48
    # Without the admin token, nothing names a tenant or a worker; with it, the series are labelled.
    anonymous = httpx.get(wnode.url + "/metrics").text
    assert 'edgenode_worker_invocations_total{outcome="ok"}' in anonymous
    assert "tenant=" not in anonymous and "kitchen" not in anonymous
    metrics = admin.get("/metrics").text
    assert 'edgenode_worker_invocations_total{outcome="ok",tenant="default",worker="kitchen"}' in metrics
    assert 'outcome="guest_exception"' in metrics
    assert "edgenode_worker_instantiate_seconds_bucket" in metrics


def test_public_pages_cannot_act_on_the_nodes_origin(admin: httpx.Client, wnode: NodeProcess,
                                                     kitchen_files: dict[str, str]) -> None:
    r = admin.put("/v1/workers/open-page", json={"files": kitchen_files, "public": True})
    assert r.status_code == 201, r.text
    page = httpx.get(wnode.url + "/p/default/open-page/page")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html"
    # Its HTML runs in an opaque origin (no script, no storage of the node's), and it sets no cookie.
    assert page.headers.get_list("content-security-policy") == ["sandbox"]
    assert "set-cookie" not in page.headers and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-guest"] == "yes"
    # Behind a token the same worker's headers pass as they are (that response is not a page of the node).
    private = admin.get("/w/open-page/page")
    assert private.headers["content-security-policy"] == "default-src *"


def test_workers_per_tenant_are_capped(tmp_path: Path, worker_cache: Path) -> None:
    node = start_node(tmp_path / "capped", worker_cache, EDGENODE_WORKERS_MAX_PER_TENANT="1")
    try:
        with node.client(timeout=120) as c:
            wasm = {"content": hello_component(), "headers": {"content-type": "application/wasm"}}
            assert c.put("/v1/workers/one", **wasm).status_code == 201
            assert c.put("/v1/workers/one", **wasm).status_code == 201  # a new version of it is fine
            refused = c.put("/v1/workers/two", **wasm)
            assert refused.status_code == 429 and error_code(refused) == "tenant_quota_exceeded", refused.text
            assert refused.headers["retry-after"] == "60"
    finally:
        node.stop()
