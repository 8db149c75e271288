"""Bad input never answers 5xx: every route of the app's route table gets each class of bad input.

The routes come from the route table (``edgenode.api.app.ROUTE_MODULES``), so a new route is
covered without editing this file: it gets the generic bad bodies, odd query parameters (those
its source reads, and a few common ones), bad path parameters and odd headers. ``EXAMPLES`` gives
some routes a valid body whose fields are then spoiled one at a time, to reach code past the
first check. Each answer must be below 500, a JSON error when it is 4xx, on a connection that is
either kept (the next request on it works) or closed after ``Connection: close``; the node keeps
serving and logs no unhandled error.
"""

from __future__ import annotations

import http.client
import inspect
import json
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import wasmtime
from starlette.routing import Route

from edgenode.api.app import ROUTE_MODULES
from tests.agents.helpers import FAST
from tests.support import NodeProcess, wait_for

BODY_METHODS = {"POST", "PUT", "PATCH"}

ROUTES: list[tuple[str, str, Any]] = sorted(
    {(method, route.path, route.endpoint) for module in ROUTE_MODULES for route in module.routes
     if isinstance(route, Route) for method in (route.methods or {"GET"}) - {"HEAD"}},
    key=lambda r: (r[0] == "DELETE", r[1], r[0]),  # deletions last: they remove what others use
)

DEEP = "[" * 5000 + "]" * 5000
#: Bodies every route that takes one is sent (raw bytes, content type JSON).
GENERIC_BODIES: dict[str, bytes] = {
    "deep-array": DEEP.encode(),
    "deep-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "deep-in-field": b'{"input":' + DEEP.encode() + b',"payload":1}',
    "lone-surrogate": b'{"name":"\\ud800","path":"\\udfff","code":"\\ud800"}',
    "surrogate-key": b'{"\\ud800":1}',
    "nan": b'{"ttl_s":NaN,"version":NaN,"input":NaN}',
    "infinity": b'{"ttl_s":Infinity,"limits":{"cpu_ms":-Infinity}}',
    "1e999": b'{"ttl_s":1e999,"version":1e999}',
    "2**64": b'{"version":18446744073709551616,"ttl_s":18446744073709551616}',
    "5000-digits": b'{"version":' + b"9" * 5000 + b"}",
    "invalid-utf8": b'{"name":"\xff\xfe","path":"\xc0\xaf"}',
    "encoded-surrogate": b'{"name":"\xed\xa0\x80"}',
    "raw-nul": b'{"name":"a\x00b"}',
    "escaped-nul": b'{"name":"a\\u0000b","path":"a\\u0000b","cmd":"a\\u0000b"}',
    "100k-string": json.dumps({"name": "x" * 100_000, "path": "x" * 100_000}).encode(),
    "array": b"[]",
    "string": b'"s"',
    "null": b"null",
    "empty": b"",
    "malformed": b"{",
    "trailing": b"{} x",
    "bom": b"\xef\xbb\xbf{}",
    "utf16": "{}".encode("utf-16"),
}
#: Bodies that are JSON routes' to refuse (a JSON route answers the malformed one with a 4xx).
REFUSED_BODIES = {"deep-array", "deep-object", "deep-in-field", "lone-surrogate", "surrogate-key", "nan", "infinity",
                  "1e999", "2**64", "5000-digits", "invalid-utf8", "encoded-surrogate", "raw-nul", "malformed"}

#: Values each field of an example body is replaced with, one at a time.
BAD_VALUES: dict[str, Any] = {
    "null": None, "true": True, "zero": 0, "minus-one": -1, "int64-max": 2**63 - 1, "int64-min": -(2**63),
    "2**64": 2**64, "fraction": 1.5, "huge-float": 1e308, "nan": float("nan"), "infinity": float("inf"),
    "empty": "", "100k": "x" * 100_000, "nul": "a\x00b", "surrogate": "\ud800", "dotdot": "../../etc/passwd",
    "absolute": "/etc/passwd", "long-name": "\u00e9" * 200, "long-path": "a/" * 2100, "array": [], "nulls": [None],
    "object": {}, "nested": {"a": {"b": [1]}}, "deep": DEEP,
}
#: Values spoiled positions below the top level get (a shorter list: there are many positions).
NESTED_VALUES = ["null", "true", "minus-one", "int64-max", "2**64", "nan", "empty", "100k", "nul", "surrogate",
                 "dotdot", "long-path", "array", "object"]
#: Fields whose every string is a build of new code (seconds each): they get the non-string values only;
#: builds have their own tests.
BUILDS = {("POST", "/v1/run", "code"), ("POST", "/v1/run", "files"), ("PUT", "/v1/workers/{name}", "files")}
#: Objects whose keys the user names (file names, variable names): their keys are spoiled too.
USER_KEYED = {"files", "env", "params"}
#: Values keys of user-named objects (files, env) are replaced with.
BAD_KEYS = {"empty": "", "100k": "x" * 100_000, "nul": "a\x00b", "surrogate": "\ud800", "dotdot": "../x",
            "absolute": "/x", "long-name": "\u00e9" * 200}

#: Query values every query parameter of a route is tried with (already URL-encoded).
BAD_QUERY = ["99999999999999999999", "-1", "1e999", "NaN", "abc", "", "%00", "%FF%FE", "%ED%A0%80", "x" * 60_000,
             "%E2%80%AE", "1&{name}=2"]
COMMON_QUERY = ["limit", "offset", "tenant"]

#: Path parameter values (URL-encoded) each parameter is tried with.
BAD_PATH = ["%00", "%FF", "x" * 300, "%C3%A9" * 200, "..", "%2e%2e", "x" * 60_000, "a%2F" * 2100, "a%00b"]

#: Header sets each route is tried with (values as raw bytes where they are odd).
BAD_HEADERS: dict[str, dict[str, Any]] = {
    "empty-bearer": {"authorization": "Bearer "},
    "bare-bearer": {"authorization": "Bearer"},
    "basic-garbage": {"authorization": "Basic !!!"},
    "basic-not-utf8": {"authorization": "Basic /w=="},
    "non-ascii-bearer": {"authorization": b"Bearer \xff\xfe"},
    "tenant-bad": {"x-edgenode-tenant": "../Bad Tenant"},
    "tenant-long": {"x-edgenode-tenant": "a" * 10_000},
    "odd-content-type": {"content-type": "application/json; charset=latin-1"},
    "gzip-lie": {"content-encoding": "gzip"},
    "git-protocol": {"git-protocol": "version=999:" + "x" * 5000},
    "if-match": {"if-match": "W/" + '"' * 50},
    "accept-events": {"accept": "text/event-stream"},
}

AGENT = textwrap.dedent("""
    def run(ctx, input):
        while True:
            ctx.wait_for_event("never")
""")
WORKER = "def main(input):\n    return {'got': input}\n"
WASI = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))'))


@dataclass
class Resources:
    """What the routes' path parameters name: real objects, so requests reach past the lookups."""

    sandbox: str = ""
    pid: str = ""
    run: str = ""
    token: str = ""
    repo_token: str = ""
    values: dict[str, dict[str, str]] = field(default_factory=dict)

    def param(self, template: str, name: str) -> str:
        """The value of ``{name}`` in ``template``: the longest matching prefix's, else "x"."""
        best: str | None = None
        for prefix in self.values:
            if template.startswith(prefix) and name in self.values[prefix] and len(prefix) > len(best or ""):
                best = prefix
            elif best is None and template.startswith(prefix) and name in self.values[prefix]:
                best = prefix
        return self.values[best][name] if best is not None else "x"


#: Second shapes some routes take (another form of the same request), spoiled like the examples.
OTHER_SHAPES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/v1/sandboxes"): [{"network": {"allow": ["example.com", "*.example.org:443"]}, "limits": {"pids": 64}}],
    ("POST", "/v1/sandboxes/{id}/exec"): [{"cmd": "echo hi", "stdin_b64": "aGk=", "cwd": "d"}],
    ("POST", "/v1/sql/{namespace}"): [{"batch": [{"sql": "SELECT :a", "params": {"a": 1}}, {"sql": "SELECT 1"}]}],
    ("POST", "/v1/wasi/run"): [{"name": "fuzz-wasi", "args": ["x"]}],
    ("POST", "/v1/repos/{name}/commits"): [{"branch": "side", "message": "m", "parent": "", "files": {"d/f": None}}],
    ("POST", "/v1/repos"): [{"name": "fuzz-import", "import": {"url": "http://127.0.0.1:9/x.git", "branch": "main",
                                                               "depth": 1}}],
    ("POST", "/v1/tokens"): [{"tenant": "fuzz", "admin": True, "ttl_s": 0.5}],
    ("PUT", "/v1/workers/{name}"): [{"files": {"main.py": WORKER}, "public": True, "limits": {"wall_ms": 1000}}],
    ("POST", "/v1/run"): [{"files": {"main.py": WORKER}, "method": "GET", "path": "/x?y=1", "env": {"A": "b"}}],
}


def _example_bodies(r: Resources) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {key: [body] for key, body in _first_shapes(r).items()}


def _first_shapes(r: Resources) -> dict[tuple[str, str], dict[str, Any]]:
    run_files = {"main.py": WORKER}
    return {
        ("POST", "/v1/tenants"): {"name": "fuzz-tenant"},
        ("POST", "/v1/tokens"): {"tenant": "fuzz", "name": "t", "ttl_s": 60, "admin": False},
        ("POST", "/v1/repos"): {"name": "fuzz-new", "default_branch": "main"},
        ("POST", "/v1/repos/{name}/fork"): {"name": "fuzz-fork", "default_branch_only": True},
        ("POST", "/v1/repos/{name}/commits"): {
            "branch": "main", "message": "m", "author": {"name": "a", "email": "a@example.com"},
            "files": {"f.txt": "x", "b.bin": {"base64": "eA=="}}},
        ("POST", "/v1/repos/{name}/tokens"): {"access": "read", "ttl_s": 60},
        ("PUT", "/v1/agents/{name}"): {"files": {"main.py": AGENT}, "entry": "main.py", "allowed_hosts": []},
        ("POST", "/v1/agents/{name}/runs"): {"input": {"x": 1}, "id": "fuzz-run-new", "version": 1},
        ("POST", "/v1/agents/runs/{run_id}/events"): {"type": "other", "payload": {"a": 1}},
        ("POST", "/v1/agents/runs/{run_id}/approve"): {"comment": "ok"},
        ("POST", "/v1/agents/runs/{run_id}/reject"): {"comment": "no"},
        ("POST", "/v1/agents/runs/{run_id}/move"): {"version": 1},
        ("POST", "/v1/agents/schedules"): {"name": "fuzz-sched", "agent": "fuzz-agent", "cron": "0 0 1 1 *",
                                           "input": {"a": 1}},
        ("POST", "/v1/agents/models/chat"): {"model": "scripted:x", "messages": [{"role": "user", "content": "hi"}],
                                             "tools": [], "options": {"replies": ["hello"]}},
        ("PUT", "/v1/agents/secrets/{name}"): {"value": "s3cret"},
        ("POST", "/v1/sandboxes"): {"name": "fuzz-sb", "network": "none", "limits": {"memory_mb": 256}},
        ("POST", "/v1/sandboxes/{id}/exec"): {"cmd": ["true"], "cwd": "/workspace", "env": {"A": "b"}, "stdin": "",
                                              "timeout_s": 10, "max_output_bytes": 1000},
        ("POST", "/v1/sandboxes/{id}/mkdir"): {"path": "d/e", "parents": True},
        ("POST", "/v1/sandboxes/{id}/move"): {"from": "m1.txt", "to": "m2.txt", "overwrite": True},
        ("POST", "/v1/sandboxes/{id}/processes"): {"cmd": ["true"]},
        ("POST", "/v1/sandboxes/{id}/processes/{pid}/signal"): {"signal": "USR1"},
        ("POST", "/v1/sql/{namespace}"): {"sql": "SELECT ?", "params": [1]},
        ("PUT", "/v1/workers/{name}"): {"files": run_files, "limits": {"cpu_ms": 100, "memory_mb": 64},
                                        "allowed_hosts": [], "env": {"A": "b"}, "public": False},
        ("POST", "/v1/workers/{name}/rollback"): {"version": 1},
        ("POST", "/v1/run"): {"code": WORKER, "input": [1, 2], "method": "POST", "path": "/",
                              "limits": {"cpu_ms": 200}},
        ("POST", "/v1/wasi/run"): {"module_b64": _b64(WASI), "args": ["a"], "stdin_b64": "", "env": {"A": "b"},
                                   "files": {"in.txt": "eA=="}, "limits": {"cpu_ms": 200}},
    }


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# -- sending -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Prober:
    """Sends one request per connection and checks the connection's fate (kept or closed cleanly)."""

    def __init__(self, node: NodeProcess) -> None:
        url = urlsplit(node.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.token = node.admin_token
        self.sent = 0

    def send(self, method: str, target: str, body: bytes | None = None,
             headers: dict[str, Any] | None = None, what: str = "") -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        sent = {"authorization": f"Bearer {self.token}"}
        if body is not None:
            sent["content-type"] = "application/json"
        sent.update(headers or {})
        label = f"{method} {target[:120]} [{what}]"
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for key, value in sent.items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            if response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream"):
                # A live stream (a run's events) does not end: its answer is the status and type.
                conn.close()
                self.sent += 1
                return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, b"")
            data = response.read()
        except (http.client.HTTPException, OSError) as exc:
            raise AssertionError(f"{label}: the connection broke: {exc!r}") from None
        self.sent += 1
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        assert answer.status < 500, f"{label}: {answer.status} {data[:400]!r}"
        if answer.status >= 400:
            assert answer.headers.get("content-type", "").startswith("application/json"), \
                f"{label}: {answer.status} without a JSON error: {data[:200]!r}"
            error = json.loads(data)["error"]
            assert error["code"] and error["message"] and error["id"], f"{label}: {data[:300]!r}"
        if "close" in answer.headers.get("connection", "").lower():
            conn.close()
            return answer
        sock = conn.sock
        try:
            conn.request("GET", "/healthz")
            again = conn.getresponse()
            again.read()
        except (http.client.HTTPException, OSError) as exc:
            raise AssertionError(f"{label}: kept-alive connection broke on the next request: {exc!r}") from None
        assert again.status == 200 and conn.sock is sock, f"{label}: the connection was not kept"
        conn.close()
        return answer


def _encode(body: Any) -> bytes:
    """``body`` as JSON, with the DEEP marker string spliced in as raw nesting."""
    text = json.dumps(body, allow_nan=True)
    return text.replace(json.dumps(DEEP), DEEP).encode()


def _target(template: str, r: Resources, override: tuple[str, str] | None = None, query: str = "") -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if override is not None and override[0] == name:
            return override[1]
        return quote(r.param(template, name), safe="/")

    path = re.sub(r"{([A-Za-z_]\w*)(?::\w+)?}", sub, template)
    return path + (f"?{query}" if query else "")


def _query_names(endpoint: Any) -> list[str]:
    source = inspect.getsource(endpoint)
    found = re.findall(r'\(request, "([\w-]+)"', source) + re.findall(r'query_params(?:\.get|\.getlist)?[(\[]"(\w+)"',
                                                                         source)
    found += re.findall(r'\bq(?:\.get|\.getlist)?[(\[]"(\w+)"', source)
    return sorted(set(found) | set(COMMON_QUERY))


def _mutations(method: str, template: str, example: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """The example with one value spoiled at a time (every position down to three levels), keys of
    user-named objects spoiled, and each top-level field left out."""
    for path, value in _positions(example):
        labels = BAD_VALUES if len(path) == 1 else NESTED_VALUES
        if (method, template, path[0]) in BUILDS:
            labels = [label for label in labels if not isinstance(BAD_VALUES[label], str)]
        for label in labels:
            yield f"{_dotted(path)}={label}", _encode(_replace(example, path, BAD_VALUES[label]))
        if path[-1] in USER_KEYED and isinstance(value, dict) and value:
            first = next(iter(value))
            for label, bad_key in BAD_KEYS.items():
                spoiled = {bad_key if k == first else k: v for k, v in value.items()}
                yield f"{_dotted(path)} key={label}", _encode(_replace(example, path, spoiled))
    for key in example:
        yield f"without {key}", _encode({k: v for k, v in example.items() if k != key})


def _positions(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if len(path) >= 3:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value[:1]) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key), child
        yield from _positions(child, (*path, key))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: _replace(v, rest, new) if k == head else v for k, v in value.items()}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


def _dotted(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("fuzz"), env=FAST).start(timeout=60)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def resources(fuzz_node: NodeProcess) -> Resources:
    r = Resources()
    with fuzz_node.client(timeout=120) as c:
        assert c.post("/v1/repos", json={"name": "fuzz-repo"}).status_code == 201
        commit = c.post("/v1/repos/fuzz-repo/commits", json={"branch": "main", "message": "first",
                                                             "files": {"README.md": "hello\n"}})
        assert commit.status_code == 201, commit.text
        r.repo_token = c.post("/v1/repos/fuzz-repo/tokens", json={"access": "read"}).json()["id"]
        r.token = c.post("/v1/tokens", json={"tenant": "fuzz", "name": "t"}).json()["id"]
        deployed = c.put("/v1/workers/fuzz-worker", json={"files": {"main.py": WORKER}})
        assert deployed.status_code == 201, deployed.text
        assert c.put("/v1/agents/fuzz-agent", json={"files": {"main.py": AGENT}}).status_code in (200, 201)
        assert c.post("/v1/agents/schedules", json={"name": "fuzz-sched", "agent": "fuzz-agent",
                                                    "cron": "0 0 1 1 *"}).status_code == 201
        assert c.put("/v1/kv/fuzz-ns/k", content=b"v").status_code == 200
        wasi = c.put("/v1/workers/fuzz-wasi", content=WASI, headers={"content-type": "application/wasm"})
        assert wasi.status_code == 201, wasi.text
    refresh(fuzz_node, r)
    r.values = {
        "": {"name": "fuzz-repo", "tenant": "default", "id": r.sandbox, "namespace": "fuzz-ns", "key": "k",
             "path": "a.txt", "rest": "main/README.md", "file": "index.html", "run_id": r.run, "pid": r.pid},
        "/v1/tenants/": {"name": "fuzz"},
        "/v1/tokens/": {"id": r.token},
        "/v1/repos/{name}/tokens/": {"id": r.repo_token},
        "/v1/workers/": {"name": "fuzz-worker"},
        "/w/": {"name": "fuzz-worker"},
        "/p/": {"name": "fuzz-worker"},
        "/v1/agents/": {"name": "fuzz-agent"},
        "/v1/agents/schedules/": {"name": "fuzz-sched"},
        "/v1/agents/secrets/": {"name": "FUZZ_SECRET"},
    }
    return r


def refresh(node: NodeProcess, r: Resources) -> None:
    """Bring back what earlier requests used up: the sandbox, its files and process, a live run."""
    with node.client(timeout=120) as c:
        if not r.sandbox or c.get(f"/v1/sandboxes/{r.sandbox}").status_code != 200:
            created = c.post("/v1/sandboxes", json={})
            assert created.status_code == 201, created.text
            r.sandbox = created.json()["id"]
            r.pid = ""
        for name in ("a.txt", "m1.txt"):
            assert c.put(f"/v1/sandboxes/{r.sandbox}/files/{name}", content=b"x").status_code == 201
        proc = c.get(f"/v1/sandboxes/{r.sandbox}/processes/{r.pid}") if r.pid else None
        if proc is None or proc.status_code != 200 or proc.json().get("state") != "running":
            started = c.post(f"/v1/sandboxes/{r.sandbox}/processes", json={"cmd": ["sleep", "3600"]})
            assert started.status_code == 201, started.text
            r.pid = str(started.json()["id"] if "id" in started.json() else started.json()["pid"])
        run = c.get(f"/v1/agents/runs/{r.run}") if r.run else None
        if run is None or run.status_code != 200 or run.json()["status"] in ("cancelled", "terminated", "failed",
                                                                                "completed"):
            started = c.post("/v1/agents/fuzz-agent/runs", json={"input": None})
            assert started.status_code in (200, 201), started.text
            r.run = started.json()["id"]
            wait_for(lambda: (c.get(f"/v1/agents/runs/{r.run}").json().get("waiting") or None), timeout=60,
                     message="the fuzz run to wait")
    if r.values:
        r.values[""].update({"id": r.sandbox, "run_id": r.run, "pid": r.pid})


@pytest.fixture(scope="module")
def prober(fuzz_node: NodeProcess) -> Iterator[Prober]:
    p = Prober(fuzz_node)
    yield p
    assert fuzz_node.proc is not None and fuzz_node.proc.poll() is None, "the node died"
    log = fuzz_node.log()
    assert "unhandled error" not in log, log[log.index("unhandled error") - 2000:][:6000]


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("method", "template", "endpoint"), ROUTES, ids=[f"{m} {t}" for m, t, _ in ROUTES])
def test_bad_input_is_a_4xx_on_every_route(fuzz_node: NodeProcess, resources: Resources, prober: Prober,
                                           method: str, template: str, endpoint: Any) -> None:
    refresh(fuzz_node, resources)
    started = time.monotonic()
    target = _target(template, resources)
    if method in BODY_METHODS:
        malformed = prober.send(method, target, GENERIC_BODIES["malformed"], what="malformed")
        json_route = 400 <= malformed.status < 500 and json.loads(malformed.body)["error"]["code"] == "invalid_json"
        for label, body in GENERIC_BODIES.items():
            answer = prober.send(method, target, body, what=label)
            if json_route and label in REFUSED_BODIES:
                assert 400 <= answer.status < 500, f"{method} {template} [{label}]: {answer.status} {answer.body!r}"
        for example in [*_example_bodies(resources).get((method, template), []),
                        *OTHER_SHAPES.get((method, template), [])]:
            # The example itself must get past the lookups, or its mutations test only a 404.
            answer = prober.send(method, target, _encode(example), what="example")
            assert answer.status != 404, f"{method} {template}: the example body got {answer.body[:300]!r}"
            print(f"{method} {template}: example answered {answer.status}")
            for label, body in _mutations(method, template, example):
                prober.send(method, target, body, what=label)
    for name in _query_names(endpoint):
        for value in BAD_QUERY:
            prober.send(method, _target(template, resources, query=f"{name}={value.format(name=name)}"),
                        b"{}" if method in BODY_METHODS else None, what=f"?{name}")
    for name in re.findall(r"{([A-Za-z_]\w*)", template):
        for value in BAD_PATH:
            prober.send(method, _target(template, resources, override=(name, value)),
                        b"{}" if method in BODY_METHODS else None, what=f"{{{name}}}")
    for label, headers in BAD_HEADERS.items():
        prober.send(method, target, b"{}" if method in BODY_METHODS else None, headers=headers, what=label)
    prober.send("GET", "/healthz", what="still serving")
    print(f"{method} {template}: {time.monotonic() - started:.1f}s")


def test_a_100k_url_and_query_are_refused_cleanly(prober: Prober) -> None:
    prober.send("GET", "/v1/sandboxes/x/files/" + "a" * 100_000, what="100k path")
    prober.send("GET", "/v1/agents/runs?limit=" + "9" * 100_000, what="100k query")
