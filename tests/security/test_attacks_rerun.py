"""An outside review's attacks, rerun against a real node: alice and strangers against bob and the host.

One node for the module (public sandbox ports on); each test is one attack class and its variants.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from tests.support import MIN_WAIT_S, NodeProcess

#: A public worker that tells which request headers it saw and answers every header that would act
#: on the node's whole origin or host if the node passed it on.
ECHO = '''
from edgenode_guest import Response

ORIGIN_WIDE = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Alt-Svc": 'h2="evil.example:443"',
    "NEL": '{"report_to": "x", "max_age": 31536000, "include_subdomains": true}',
    "Report-To": '{"group": "x", "max_age": 31536000, "endpoints": [{"url": "https://evil.example/r"}]}',
    "Reporting-Endpoints": 'x="https://evil.example/r"',
    "Accept-CH": "Sec-CH-UA-Full-Version-List",
    "Set-Cookie": "sid=alice; Path=/",
    "Clear-Site-Data": '"*"',
    "X-Guest": "yes",
}


def handle(request):
    seen = {k: v for k, v in request.headers.items() if k in ("authorization", "cookie", "x-edgenode-tenant")}
    return Response.json(seen, headers=ORIGIN_WIDE)
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("rerun"), env={"EDGENODE_SANDBOXES_PUBLIC_PORTS": "true",
                                                               "EDGENODE_STATE_MAX_NAMESPACES_PER_TENANT": "3"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def _as(node: NodeProcess, admin: httpx.Client, tenant: str) -> httpx.Client:
    created = admin.post("/v1/tokens", json={"tenant": tenant})
    assert created.status_code == 201, created.text
    return node.client(created.json()["token"])


@pytest.fixture(scope="module")
def bob(node: NodeProcess, admin: httpx.Client) -> Iterator[httpx.Client]:
    with _as(node, admin, "bob") as c:
        yield c


@pytest.fixture(scope="module")
def alice(node: NodeProcess, admin: httpx.Client) -> Iterator[httpx.Client]:
    with _as(node, admin, "alice") as c:
        yield c


def _error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


def test_a_stranger_cannot_tell_a_private_worker_from_a_missing_one(node: NodeProcess, bob: httpx.Client) -> None:
    deployed = bob.put("/v1/workers/secret-name", json={"files": {"main.py": ECHO}})
    assert deployed.status_code == 201, deployed.text
    with httpx.Client(base_url=node.url) as stranger:
        private = _error(stranger.get("/p/bob/secret-name/x"))
        missing = _error(stranger.get("/p/bob/other-name/x"))
    assert private[:2] == missing[:2] == (404, "worker_not_found")
    assert private[2].replace("secret-name", "NAME") == missing[2].replace("other-name", "NAME")


def test_a_stranger_cannot_tell_a_sandbox_from_a_missing_one(node: NodeProcess, bob: httpx.Client) -> None:
    box = bob.post("/v1/sandboxes", json={})
    assert box.status_code == 201, box.text
    sid = box.json()["id"]
    try:
        # A port exposed to its owner only, a port not exposed at all, and a sandbox that does not exist.
        assert bob.post(f"/v1/sandboxes/{sid}/ports", json={"port": 8000}).status_code == 201
        with httpx.Client(base_url=node.url) as stranger:
            answers = {_error(stranger.get(path)) for path in
                       (f"/sp/{sid}/8000/", f"/sp/{sid}/8001/", "/sp/sb_0123456789abcdef/8000/")}
        assert answers == {(404, "port_not_exposed", "port 8000 of this sandbox is not exposed"),
                           (404, "port_not_exposed", "port 8001 of this sandbox is not exposed")}
    finally:
        bob.delete(f"/v1/sandboxes/{sid}")


def test_a_public_worker_gets_no_node_credentials_and_sets_no_origin_wide_policy(
        node: NodeProcess, admin: httpx.Client, alice: httpx.Client, bob: httpx.Client) -> None:
    deployed = alice.put("/v1/workers/open", json={"files": {"main.py": ECHO}, "public": True})
    assert deployed.status_code == 201, deployed.text
    bob_token = str(bob.headers["authorization"]).removeprefix("Bearer ")
    basic = base64.b64encode(f"git:{bob_token}".encode()).decode()
    with httpx.Client(base_url=node.url) as browser:
        for credentials in (f"Bearer {bob_token}", f"Basic {basic}", f"token {bob_token}"):
            r = browser.get("/p/alice/open/x", headers={"authorization": credentials, "cookie": "node_sid=bob",
                                                        "x-edgenode-tenant": "bob"})
            assert r.status_code == 200, r.text
            assert r.json() == {}, credentials  # the guest saw none of them
        # A credential of the worker's own passes: only the node's tokens are held back.
        own = browser.get("/p/alice/open/x", headers={"authorization": "Bearer key-of-alices-api"})
        assert own.json() == {"authorization": "Bearer key-of-alices-api"}
    assert own.headers["x-guest"] == "yes" and own.headers.get_list("content-security-policy") == ["sandbox"]
    for name in ("strict-transport-security", "alt-svc", "nel", "report-to", "reporting-endpoints", "accept-ch",
                 "set-cookie", "clear-site-data"):
        assert name not in own.headers, name


def test_a_deploy_cannot_learn_that_another_tenant_deployed_the_same_code(
        admin: httpx.Client, alice: httpx.Client, bob: httpx.Client) -> None:
    # A cache hit answers in milliseconds, a compile in hundreds: the bytecode cache is per tenant.
    def compiled() -> int:
        return int(admin.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]["programs_compiled"])

    code = {"main.py": "def handle(request):\n    return 'the same code'\n"}
    before = compiled()
    assert bob.put("/v1/workers/same", json={"files": code}).status_code == 201
    assert bob.put("/v1/workers/same-again", json={"files": code}).status_code == 201
    assert compiled() == before + 1  # bob's second deploy found his own bytecode
    assert alice.put("/v1/workers/same", json={"files": code}).status_code == 201
    assert compiled() == before + 2  # alice's did not find bob's
    assert alice.get("/w/same").text == bob.get("/w/same").text == "the same code"


@pytest.mark.parametrize("name", ["laptop\n", "a\x00b", "\x1b]0;owned\x07", "tab\there", "c1\x85"])
def test_token_names_with_control_characters_are_refused(admin: httpx.Client, name: str) -> None:
    r = admin.post("/v1/tokens", json={"tenant": "bob", "name": name})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["field"]) == (400, "validation_failed", "name")
    assert name not in [t["name"] for t in admin.get("/v1/tokens").json()["tokens"]]
    assert admin.post("/v1/tokens", json={"tenant": "bob", "name": "laptop ünïcode"}).status_code == 201


def test_the_agents_page_runs_its_own_script_only(node: NodeProcess) -> None:
    # 'self' would admit any script served on the node's origin, a public worker's among them.
    nonces = []
    for _ in range(2):
        page = httpx.get(node.url + "/v1/agents/ui/")
        policy = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
        nonce = policy["script-src"].removeprefix("'nonce-").removesuffix("'")
        assert policy["script-src"] == f"'nonce-{nonce}'" and len(nonce) >= 16
        assert f'<script nonce="{nonce}" src="ui.js"></script>' in page.text
        nonces.append(nonce)
    assert nonces[0] != nonces[1]
    script = httpx.get(node.url + "/v1/agents/ui/ui.js")
    assert script.status_code == 200 and "script-src 'none'" in script.headers["content-security-policy"]


HEADERS = '''
from edgenode_guest import Response

BAD = {"name": ("x-caf\\u00e9", "v"), "value": ("x", "\\u2028v"), "nul": ("x", "a\\x00b"),
       "space": ("set-cookie ", "a=b"), "crlf": ("x", "a\\r\\nset-cookie: a=b"), "fine": ("x-latin", "caf\\u00e9")}


def handle(request):
    name, value = BAD[request.path.strip("/")]
    return Response("<b>hi</b>", headers={name: value})
'''


@pytest.mark.parametrize("case", ["name", "value", "nul", "space", "crlf"])
def test_a_guest_header_that_is_not_http_is_a_clear_error(node: NodeProcess, alice: httpx.Client, case: str) -> None:
    assert alice.put("/v1/workers/headers", json={"files": {"main.py": HEADERS}, "public": True}).status_code == 201
    for r in (httpx.get(f"{node.url}/p/alice/headers/{case}"), alice.get(f"/w/headers/{case}")):
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_response", r.text
        assert "set-cookie" not in r.headers
    fine = alice.get("/w/headers/fine")
    assert fine.status_code == 200 and fine.headers["x-latin"].encode("latin-1") == "caf\u00e9".encode("latin-1")


def test_a_deleted_tenants_public_port_and_public_worker_stop_serving(node: NodeProcess, admin: httpx.Client) -> None:
    with _as(node, admin, "erin") as erin:
        sid = erin.post("/v1/sandboxes", json={}).json()["id"]
        server = erin.post(f"/v1/sandboxes/{sid}/processes", json={"cmd": ["python3", "-m", "http.server", "8000"]})
        assert server.status_code == 201, server.text
        ready = erin.post(f"/v1/sandboxes/{sid}/exec", json={
            "cmd": "curl -s --retry 50 --retry-delay 0 --retry-connrefused -o /dev/null -w '%{http_code}' "
                   "http://127.0.0.1:8000/"}).json()
        assert ready["stdout"] == "200", ready
        exposed = erin.post(f"/v1/sandboxes/{sid}/ports", json={"port": 8000, "public": True}).json()
        assert erin.put("/v1/workers/open", json={"files": {"main.py": ECHO}, "public": True}).status_code == 201
    public_port = node.url + exposed["public_path"]
    with httpx.Client() as stranger:
        page = stranger.get(public_port)
        assert page.status_code == 200 and page.headers["content-security-policy"] == "sandbox"
        assert "set-cookie" not in page.headers
        assert stranger.get(f"{node.url}/p/erin/open/x").status_code == 200
        assert admin.delete("/v1/tenants/erin").status_code == 204
        gone = stranger.get(public_port)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "port_not_exposed", gone.text
        assert stranger.get(f"{node.url}/p/erin/open/x").status_code == 404


#: A server that answers its first line, then the rest only once the test has seen that line.
TRICKLE = '''
import http.server, os, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"first\\n")
        self.wfile.flush()
        deadline = time.time() + 300
        while not os.path.exists("go") and time.time() < deadline:
            time.sleep(0.05)
        self.wfile.write(b"rest\\n")

http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
'''


#: Waits (within the exec's own time limit) until the sandbox's server accepts connections.
LISTENING = """
import socket, time
while True:
    try:
        socket.create_connection(("127.0.0.1", 8000)).close()
        break
    except OSError:
        time.sleep(0.05)
print("listening")
"""


def test_a_sandbox_ports_answer_is_streamed_not_held_in_the_nodes_memory(node: NodeProcess,
                                                                         alice: httpx.Client) -> None:
    # Held whole, an endless answer from alice's server would take the node's memory (and bob's service).
    sid = alice.post("/v1/sandboxes", json={}).json()["id"]
    try:
        assert alice.put(f"/v1/sandboxes/{sid}/files/trickle.py", content=TRICKLE).status_code == 201
        assert alice.post(f"/v1/sandboxes/{sid}/processes", json={"cmd": ["python3", "trickle.py"]}).status_code == 201
        ready = alice.post(f"/v1/sandboxes/{sid}/exec", json={"code": LISTENING}).json()
        assert ready["stdout"] == "listening\n", ready
        assert alice.post(f"/v1/sandboxes/{sid}/ports", json={"port": 8000, "public": True}).status_code == 201
        with httpx.Client(timeout=MIN_WAIT_S) as stranger, \
                stranger.stream("GET", f"{node.url}/sp/{sid}/8000/") as answer:
            assert answer.status_code == 200 and answer.headers["content-security-policy"] == "sandbox"
            lines = answer.iter_lines()
            assert next(lines) == "first"  # before the server has finished its answer
            assert alice.put(f"/v1/sandboxes/{sid}/files/go", content=b"").status_code == 201
            assert next(lines) == "rest"
    finally:
        alice.delete(f"/v1/sandboxes/{sid}")


def test_compiled_components_and_wasi_modules_are_not_shared_between_tenants(
        node: NodeProcess, alice: httpx.Client, bob: httpx.Client) -> None:
    from tests.isolates.conftest import DATA, hello_component

    compiled = node.data_dir / "workers" / "compiled"

    def count() -> int:
        return len(list(compiled.glob("*.cwasm"))) if compiled.exists() else 0

    wasm = {"content": hello_component(), "headers": {"content-type": "application/wasm"}}
    before = count()
    assert bob.put("/v1/workers/hello", **wasm).status_code == 201
    assert bob.put("/v1/workers/hello-again", **wasm).status_code == 201
    assert count() == before + 1  # bob's second deploy found his own compiled code
    assert alice.put("/v1/workers/hello", **wasm).status_code == 201
    assert count() == before + 2  # alice's did not find bob's
    assert alice.get("/w/hello/x").text == bob.get("/w/hello/x").text == "hello from wat"

    module = {"module_b64": base64.b64encode((DATA / "brotli.wasm").read_bytes()).decode(), "args": ["brotli", "-V"]}
    for caller, expected in ((bob, before + 3), (bob, before + 3), (alice, before + 4)):
        ran = caller.post("/v1/wasi/run", json=module)
        assert ran.status_code == 200, ran.text
        assert count() == expected


def test_a_tenant_cannot_fill_the_disk_with_namespaces(alice: httpx.Client, bob: httpx.Client) -> None:
    # Each namespace is a database file: without a cap, one tenant could make millions of them.
    for ns in ("one", "two", "three"):
        assert alice.put(f"/v1/kv/{ns}/k", content=b"v").status_code == 200
    for refused in (alice.put("/v1/kv/four/k", content=b"v"),
                    alice.post("/v1/sql/five", json={"sql": "CREATE TABLE t (x)"})):
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "tenant_quota_exceeded", refused.text
        assert refused.headers["retry-after"] == "60"
    assert alice.get("/v1/kv/four/k").status_code == 404  # reading a missing one creates nothing
    assert alice.put("/v1/kv/one/other", content=b"v").status_code == 200  # her own namespaces still take writes
    assert bob.put("/v1/kv/four/k", content=b"v").status_code == 200  # and bob has his own count
