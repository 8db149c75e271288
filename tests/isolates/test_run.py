"""One-off runs (POST /v1/run): code in, result out, nothing kept."""

from __future__ import annotations

import httpx

from tests.isolates.conftest import error_code

CODE = """\
from edgenode_guest import kv, log

def main(input):
    log("adding up")
    if input == "kv":
        kv.put("x", "1")
    return {"sum": sum(input)}
"""


def test_run_code_with_input(admin: httpx.Client) -> None:
    r = admin.post("/v1/run", json={"code": CODE, "input": [1, 2, 3]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["json"] == {"sum": 6}
    assert body["logs"] == [{"level": "info", "message": "adding up"}]
    assert body["usage"]["cpu_ms"] > 0
    assert "main" not in [w["name"] for w in admin.get("/v1/workers").json()["workers"]]


def test_run_errors_come_back_with_logs(admin: httpx.Client) -> None:
    r = admin.post("/v1/run", json={"code": CODE, "input": ["a"]})
    assert (r.status_code, error_code(r)) == (422, "guest_exception")
    error = r.json()["error"]
    assert error["message"].startswith("TypeError")
    assert error["logs"] == [{"level": "info", "message": "adding up"}]


def test_one_off_runs_have_no_kv(admin: httpx.Client) -> None:
    r = admin.post("/v1/run", json={"code": CODE, "input": "kv"})
    assert (r.status_code, error_code(r)) == (422, "guest_exception")
    assert "not available to one-off runs" in r.json()["error"]["message"]


def test_run_with_files_path_and_limits(admin: httpx.Client, kitchen_files: dict[str, str]) -> None:
    r = admin.post("/v1/run", json={"files": kitchen_files, "method": "GET", "path": "/text"})
    assert r.status_code == 200 and r.json()["body"] == "HELLO!"
    r = admin.post("/v1/run", json={"files": kitchen_files, "path": "/loop", "limits": {"cpu_ms": 50}})
    assert (r.status_code, error_code(r)) == (422, "cpu_limit")
    for body in ({"code": 12}, {}, {"code": CODE, "path": "x"}, {"code": CODE, "limits": {"cpu_ms": -1}}):
        bad = admin.post("/v1/run", json=body)
        assert (bad.status_code, error_code(bad)) == (400, "validation_failed"), body
