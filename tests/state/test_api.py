"""The HTTP API and CLI of key-value and SQL, against a real node process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from edgenode.cli import cli
from edgenode.node import Node
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("state-node"), env={
        "EDGENODE_STATE_SQL_TIME_LIMIT_MS": "300",
        "EDGENODE_STATE_SQL_MAX_RESULT_BYTES": "100000",
        "EDGENODE_STATE_MAX_VALUE_BYTES": "4096",
        "EDGENODE_STATE_MAX_OPEN_NAMESPACES": "4",
    })
    proc.start()
    yield proc
    proc.stop()


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def test_put_get_delete_with_versions(client: httpx.Client) -> None:
    value = bytes(range(256))
    r = client.put("/v1/kv/app/dir/sub/ключ", content=value)
    assert r.status_code == 200
    etag = r.headers["etag"]
    assert r.json()["version"] == etag.strip('"')
    r = client.get("/v1/kv/app/dir/sub/ключ")
    assert r.status_code == 200 and r.content == value and r.headers["etag"] == etag
    assert client.delete("/v1/kv/app/dir/sub/ключ").status_code == 204
    r = client.get("/v1/kv/app/dir/sub/ключ")
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert client.delete("/v1/kv/app/dir/sub/ключ").status_code == 204  # idempotent


def test_compare_and_set(client: httpx.Client) -> None:
    r = client.put("/v1/kv/app/cas", content=b"1", headers={"if-none-match": "*"})
    assert r.status_code == 200
    v1 = r.headers["etag"]
    r = client.put("/v1/kv/app/cas", content=b"again", headers={"if-none-match": "*"})
    assert r.status_code == 412 and error_code(r) == "version_mismatch"
    r = client.put("/v1/kv/app/cas", content=b"2", headers={"if-match": v1})
    assert r.status_code == 200
    v2 = r.headers["etag"]
    r = client.put("/v1/kv/app/cas", content=b"3", headers={"if-match": v1})  # stale version
    assert r.status_code == 412 and error_code(r) == "version_mismatch"
    assert r.json()["error"]["current"] == v2.strip('"')
    r = client.delete("/v1/kv/app/cas", headers={"if-match": v1})
    assert r.status_code == 412
    assert client.get("/v1/kv/app/cas").content == b"2"
    r = client.put("/v1/kv/app/cas", content=b"x", headers={"if-match": "no-quotes"})
    assert r.status_code == 400 and error_code(r) == "validation_failed"
    r = client.put("/v1/kv/app/absent", content=b"x", headers={"if-match": "*"})
    assert r.status_code == 412


def test_list_by_prefix_in_pages(client: httpx.Client) -> None:
    for i in range(7):
        client.put(f"/v1/kv/listing/user/{i:02d}", content=b".")
    client.put("/v1/kv/listing/other", content=b".")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"prefix": "user/", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/kv/listing", params=params).json()
        seen += page["keys"]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == [f"user/{i:02d}" for i in range(7)]
    assert client.get("/v1/kv/never-written").json() == {"keys": [], "cursor": None}


@pytest.mark.parametrize("method,path,kwargs,status,code", [
    ("PUT", "/v1/kv/app/big", {"content": b"x" * 4097}, 413, "payload_too_large"),
    ("PUT", "/v1/kv/-bad/k", {"content": b"x"}, 400, "validation_failed"),
    ("GET", "/v1/kv/bad!ns/k", {}, 400, "validation_failed"),
    ("PUT", "/v1/kv/app/" + "k" * 1025, {"content": b"x"}, 400, "validation_failed"),
    ("GET", "/v1/kv/app", {"params": {"limit": "-1"}}, 400, "validation_failed"),
    ("GET", "/v1/kv/app", {"params": {"limit": "100000"}}, 400, "validation_failed"),
    ("GET", "/v1/kv/app", {"params": {"cursor": "%%%"}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"content": b"not json"}, 400, "invalid_json"),
    ("POST", "/v1/sql/app", {"json": {"params": []}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"sql": "SELECT ?", "params": "x"}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"sql": "SELECT ?", "params": [{"a": 1}]}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"sql": "SELEKT"}}, 400, "sql_error"),
    ("POST", "/v1/sql/app", {"json": {"batch": []}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"batch": ["SELECT 1"]}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"batch": [{"sql": "SELECT 1"}] * 101}}, 400, "validation_failed"),
    ("POST", "/v1/sql/app", {"json": {"batch": [{"sql": "SELECT 1"}, {"sql": "ATTACH 'x' AS x"}]}}, 403,
     "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "SELECT 1; SELECT 2"}}, 400, "sql_error"),
    ("POST", "/v1/sql/app", {"json": {"sql": "ATTACH DATABASE '/etc/x' AS x"}}, 403, "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "PRAGMA synchronous = OFF"}}, 403, "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "PRAGMA journal_mode = MEMORY"}}, 403, "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "SELECT load_extension('x')"}}, 403, "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "DELETE FROM _kv"}}, 403, "sql_refused"),
    ("POST", "/v1/sql/app", {"json": {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                                             "SELECT count(*) FROM c"}}, 400, "sql_time_limit_exceeded"),
    ("POST", "/v1/sql/app", {"json": {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                                             "LIMIT 100000) SELECT x, 'padding' FROM c"}}, 413,
     "sql_result_too_large"),
])
def test_bad_input_is_refused_and_the_node_keeps_serving(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert error_code(r) == code
    assert client.get("/healthz").status_code == 200


def test_sql_namespace(client: httpx.Client) -> None:
    def q(sql: str, params: Any = None) -> httpx.Response:
        return client.post("/v1/sql/shop", json={"sql": sql, "params": params})

    assert q("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL, pic BLOB)").status_code == 200
    r = q("INSERT INTO items VALUES (?, ?, ?), (?, ?, ?)", ["a", 1, {"$base64": "AP8="}, "b", 2, None])
    assert r.json()["rows_affected"] == 2
    r = q("SELECT sku, qty, pic FROM items WHERE qty >= :min ORDER BY sku", {"min": 1})
    assert r.json()["columns"] == ["sku", "qty", "pic"]
    assert r.json()["rows"] == [["a", 1, {"$base64": "AP8="}], ["b", 2, None]]
    r = q("INSERT INTO items VALUES ('a', 5, NULL)")
    assert r.status_code == 400 and error_code(r) == "sql_error"
    r = q("CREATE TABLE notes (body TEXT)")
    assert r.json()["not_replicated"] == ["notes"]
    # kv and SQL share the namespace's file but not each other's tables
    assert client.get("/v1/kv/shop").json()["keys"] == []


def test_sql_batch_is_all_or_nothing(client: httpx.Client) -> None:
    def batch(*statements: tuple[str, Any]) -> httpx.Response:
        return client.post("/v1/sql/bank", json={"batch": [{"sql": q, "params": p} for q, p in statements]})

    r = batch(("CREATE TABLE acct (id TEXT PRIMARY KEY, balance INTEGER CHECK (balance >= 0))", None),
              ("INSERT INTO acct VALUES (?, ?), (?, ?)", ["a", 10, "b", 0]),
              ("SELECT id, balance FROM acct ORDER BY id", None))
    assert r.status_code == 200 and r.json()["results"][2]["rows"] == [["a", 10], ["b", 0]]
    r = batch(("UPDATE acct SET balance = balance + 50 WHERE id = 'b'", None),
              ("UPDATE acct SET balance = balance - 50 WHERE id = 'a'", None))
    assert r.status_code == 400 and error_code(r) == "sql_error"
    r = client.post("/v1/sql/bank", json={"sql": "SELECT balance FROM acct ORDER BY id"})
    assert r.json()["rows"] == [[10], [0]]


def test_tenants_are_isolated(node: NodeProcess, client: httpx.Client) -> None:
    token = client.post("/v1/tokens", json={"tenant": "acme"}).json()["token"]
    with node.client(token) as acme:
        assert acme.put("/v1/kv/shared/k", content=b"acme").status_code == 200
        assert acme.get("/v1/kv/shared/k").content == b"acme"
        assert acme.post("/v1/sql/shared", json={"sql": "SELECT 1"}).status_code == 200
        r = acme.get("/v1/cluster")  # fleet topology is for admins
        assert r.status_code == 403 and error_code(r) == "forbidden"
    assert client.get("/v1/kv/shared/k").status_code == 404
    assert client.get("/v1/kv/shared/k", headers={"x-edgenode-tenant": "acme"}).content == b"acme"


def test_peer_routes_refuse_everything_without_a_fleet_secret(node: NodeProcess, client: httpx.Client) -> None:
    r = client.get("/v1/peer/cluster/route")
    assert r.status_code == 401 and error_code(r) == "peer_auth_failed"
    cluster = client.get("/v1/cluster").json()
    assert cluster["fleet_enabled"] is False and cluster["nats"] is None and cluster["members"] == []
    assert not (node.data_dir / "nats").exists()  # a node alone runs no NATS at all


def test_cli_kv_and_sql(node: NodeProcess) -> None:
    runner = CliRunner()
    base = ["--url", node.url, "--token", node.admin_token]

    def run(*args: str, input: bytes | None = None) -> Any:
        result = runner.invoke(cli, [*base, *args], input=input, catch_exceptions=False)
        return result

    r = run("kv", "put", "cli", "greeting", "hello")
    assert r.exit_code == 0, r.output
    version = r.output.strip()
    assert run("kv", "get", "cli", "greeting").output == "hello"
    assert run("kv", "put", "cli", "greeting", "x", "--if-version", "1.nope").exit_code == 1
    assert run("kv", "put", "cli", "greeting", "bye", "--if-version", version).exit_code == 0
    assert run("kv", "put", "cli", "blob", "--file", "-", input=b"\x00\x01").exit_code == 0
    assert run("kv", "ls", "cli", "--all").output.split() == ["blob", "greeting"]
    assert run("kv", "rm", "cli", "blob").exit_code == 0
    assert run("kv", "get", "cli", "blob").exit_code == 1
    assert run("sql", "cli", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").exit_code == 0
    assert run("sql", "cli", "INSERT INTO t VALUES (?, ?)", "-p", "1", "-p", "one").exit_code == 0
    r = run("sql", "cli", "SELECT v FROM t")
    assert r.exit_code == 0 and "one" in r.output
    r = run("cluster", "--json")
    assert r.exit_code == 0 and '"fleet_enabled": false' in r.output
    r = run("status")
    assert "cluster" in r.output and "state" in r.output


def test_sync_interface_and_http_share_one_implementation(local: tuple[Node, TestClient]) -> None:
    node, client = local
    errors: list[BaseException] = []

    def worker() -> None:  # what a worker's kv/sql binding does, from an isolate thread
        try:
            node.state.kv_put("default", "worker.w", "hits", b"1")
            assert node.state.kv_get("default", "worker.w", "hits") == b"1"
            assert node.state.kv_list("default", "worker.w", "h") == ["hits"]
            node.state.sql("default", "worker.w", "CREATE TABLE t (id INTEGER PRIMARY KEY)")
            node.state.sql("default", "worker.w", "INSERT INTO t VALUES (?)", [7])
            node.state.kv_delete("default", "worker.w", "gone")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors
    assert client.get("/v1/kv/worker.w/hits").content == b"1"
    assert client.post("/v1/sql/worker.w", json={"sql": "SELECT id FROM t"}).json()["rows"] == [[7]]
    assert node.state.kv_get("default", "worker.w", "missing") is None


def test_many_namespaces_keep_files_and_threads_bounded(node: NodeProcess, client: httpx.Client) -> None:
    assert node.proc is not None
    proc = Path(f"/proc/{node.proc.pid}")

    def threads() -> int:
        return int(next(line for line in (proc / "status").read_text().splitlines()
                        if line.startswith("Threads:")).split()[1])

    for i in range(40):
        assert client.put(f"/v1/kv/many-{i}/k", content=str(i).encode()).status_code == 200
    fds, thread_count = len(list((proc / "fd").iterdir())), threads()
    for i in range(40, 120):
        assert client.put(f"/v1/kv/many-{i}/k", content=str(i).encode()).status_code == 200
    assert client.get("/v1/status").json()["capabilities"]["state"]["open"] <= 4
    assert len(list((proc / "fd").iterdir())) <= fds + 8
    assert threads() <= thread_count + 4
    for i in (0, 57, 119):  # closed ones reopen on demand
        assert client.get(f"/v1/kv/many-{i}/k").content == str(i).encode()
