"""The shared Python runtime: code is data, yet every request and every tenant is isolated.

Every Python worker, one-off run and agent runs in a fresh instance of one pre-initialized
runtime component; these tests check what that must never change (nothing a request does
reaches the next one or another tenant) and what it gives (deploys that only compile, clear
errors at deploy time, many deployments on one node).
"""

from __future__ import annotations

import os

import httpx

from tests.isolates.conftest import error_code
from tests.support import NodeProcess

LEAKY = '''
import sys
import edgenode_guest

SEEN = []

def handle(request):
    SEEN.append(request.path)
    before = getattr(edgenode_guest, "tampered", None)
    edgenode_guest.tampered = request.path            # monkeypatch the guest package
    sys.modules["injected_by_" + request.path.strip("/")] = sys   # tamper with sys.modules
    builtins_before = getattr(__builtins__, "leak", None) if not isinstance(__builtins__, dict) \\
        else __builtins__.get("leak")
    if isinstance(__builtins__, dict):
        __builtins__["leak"] = request.path
    else:
        __builtins__.leak = request.path
    return {"seen": list(SEEN), "tampered_before": before, "builtins_before": builtins_before,
            "injected": sorted(m for m in sys.modules if m.startswith("injected_by_"))}
'''


def test_nothing_a_request_does_reaches_the_next_one(admin: httpx.Client) -> None:
    assert admin.put("/v1/workers/leaky", json={"files": {"main.py": LEAKY}}).status_code == 201
    first = admin.get("/w/leaky/one").json()
    second = admin.get("/w/leaky/two").json()
    assert first == {"seen": ["/one"], "tampered_before": None, "builtins_before": None,
                     "injected": ["injected_by_one"]}
    # A fresh instance: module globals, the patched guest package, builtins and sys.modules all start over.
    assert second == {"seen": ["/two"], "tampered_before": None, "builtins_before": None,
                      "injected": ["injected_by_two"]}


def test_random_differs_between_instances(admin: httpx.Client) -> None:
    # The runtime is a snapshot: without a reseed every instance would draw the same numbers.
    code = "import random, uuid\ndef main(x):\n    return [random.random(), str(uuid.uuid4())]\n"
    draws = [admin.post("/v1/run", json={"code": code}).json()["json"] for _ in range(3)]
    assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3


def tenant_client(node: NodeProcess, admin: httpx.Client, tenant: str) -> httpx.Client:
    r = admin.post("/v1/tokens", json={"tenant": tenant, "name": "shared-runtime-test"})
    assert r.status_code == 201, r.text
    return httpx.Client(base_url=node.url, headers={"authorization": f"Bearer {r.json()['token']}"}, timeout=120)


def test_one_tenants_modules_are_not_importable_by_another(wnode: NodeProcess, admin: httpx.Client) -> None:
    with tenant_client(wnode, admin, "alice") as alice, tenant_client(wnode, admin, "bob") as bob:
        secret = {"main.py": "import alice_secret\ndef handle(request):\n    return {'key': alice_secret.KEY}\n",
                  "alice_secret.py": "KEY = 'alice-only'\n"}
        assert alice.put("/v1/workers/vault", json={"files": secret}).status_code == 201
        assert alice.get("/w/vault/").json() == {"key": "alice-only"}
        probe = ("import importlib, sys\ndef main(x):\n    try:\n        importlib.import_module('alice_secret')\n"
                 "        return {'got': 'imported'}\n    except ImportError as exc:\n"
                 "        return {'got': type(exc).__name__}\n")
        assert bob.post("/v1/run", json={"code": probe}).json()["json"] == {"got": "ModuleNotFoundError"}
        # Nor can bob reach alice's worker by name: workers are per tenant.
        assert error_code(bob.get("/w/vault/")) == "worker_not_found"


def test_packages_and_data_files_ship_with_the_code(admin: httpx.Client) -> None:
    files = {
        "main.py": ("import pkgutil\nfrom shop import prices\nfrom shop.tax import rate\n"
                    "def handle(request):\n"
                    "    note = pkgutil.get_data('shop', 'note.txt').decode()\n"
                    "    return {'total': prices.total([1, 2]) * (1 + rate()), 'note': note}\n"),
        "shop/__init__.py": "",
        "shop/prices.py": "def total(items):\n    return sum(items)\n",
        "shop/tax.py": "def rate():\n    return 0.5\n",
        "shop/note.txt": "thanks",
    }
    assert admin.put("/v1/workers/shop", json={"files": files}).status_code == 201
    assert admin.get("/w/shop/").json() == {"total": 4.5, "note": "thanks"}


def test_deploy_refuses_code_that_cannot_run_with_file_and_line(admin: httpx.Client) -> None:
    cases = {
        "syntax": ({"main.py": "def handle(request):\n    return {\n"}, "SyntaxError", ("main.py", 2)),
        "indent": ({"main.py": "def handle(request):\nreturn 1\n"}, "IndentationError", ("main.py", 2)),
        "in a module": ({"main.py": "import util\ndef handle(r):\n    return 1\n", "util.py": "x = (\n"},
                        "SyntaxError", ("util.py", 1)),
        "missing module": ({"main.py": "import numpyy\ndef handle(r):\n    return 1\n"}, "numpyy", ("main.py", 1)),
        "no handler": ({"main.py": "x = 1\n"}, "must define handle", ("main.py", 0)),
        "null byte": ({"main.py": "def handle(r):\n    return 1\n\x00"}, "", ("main.py", None)),
    }
    for label, (files, needle, (path, line)) in cases.items():
        r = admin.put("/v1/workers/broken", json={"files": files})
        assert (r.status_code, error_code(r)) == (400, "build_failed"), (label, r.text)
        error = r.json()["error"]
        assert needle in error["message"] and error["file"] == path, (label, error)
        if line is not None:
            assert error["line"] == line, (label, error)
    assert admin.get("/v1/workers/broken").status_code == 404  # nothing was deployed


def test_oversized_source_is_refused(admin: httpx.Client) -> None:
    r = admin.put("/v1/workers/huge", json={"files": {"main.py": "x = 1\n" * (2 * 1024 * 1024)}})
    assert (r.status_code, error_code(r)) == (413, "payload_too_large")


def test_a_runaway_guest_gets_its_error_and_the_node_serves_on(admin: httpx.Client) -> None:
    cases = {
        "def main(x):\n    while True:\n        pass\n": "cpu_limit",
        "def main(x):\n    blob = []\n    while True:\n        blob.append(bytearray(1 << 20))\n": "memory_limit",
        "def main(x):\n    def f(n):\n        return f(n + 1)\n    return f(0)\n": "guest_exception",
        "def main(x):\n    return 1 / 0\n": "guest_exception",
    }
    for code, expected in cases.items():
        r = admin.post("/v1/run", json={"code": code, "limits": {"cpu_ms": 300, "memory_mb": 64}})
        assert error_code(r) == expected, (code, r.text)
    assert admin.post("/v1/run", json={"code": "def main(x):\n    return x + 1\n", "input": 1}).json()["json"] == 2


def test_one_off_runs_return_any_json_value_and_syntax_errors_are_the_callers(admin: httpx.Client) -> None:
    assert admin.post("/v1/run", json={"code": "def main(x):\n    return 42\n"}).json()["json"] == 42
    r = admin.post("/v1/run", json={"code": "def main(x):\n    return (\n"})
    assert (r.status_code, error_code(r)) == (400, "build_failed")
    assert "main.py:2" in r.json()["error"]["message"]


def test_binary_bodies_cross_the_host_boundary_intact(admin: httpx.Client, kitchen: str) -> None:
    blob = os.urandom(300_000) + bytes(range(256))
    assert admin.put("/w/kitchen/kv?key=blob", content=blob).json() == {"stored": "blob"}
    listed = admin.get("/w/kitchen/kv?list=1&prefix=bl").json()
    assert listed == {"keys": ["blob"]}
    assert admin.get("/v1/kv/worker.kitchen/blob").content == blob


def test_fifty_distinct_workers_deploy_and_answer(admin: httpx.Client) -> None:
    for i in range(50):
        code = f"def handle(request):\n    return {{'worker': {i}, 'path': request.path}}\n"
        r = admin.put(f"/v1/workers/many-{i}", json={"files": {"main.py": code}})
        assert r.status_code == 201, r.text
    for i in range(50):
        assert admin.get(f"/w/many-{i}/p").json() == {"worker": i, "path": "/p"}
    runtime = admin.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]
    assert runtime["state"] == "ready" and runtime["builds"] == 0  # no build on the way: only compiles
