"""Deleting a tenant removes what it owns: its public workers stop, a new tenant of its name starts empty."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.agents.helpers import FAST, deploy, start, wait_status
from tests.isolates.conftest import hello_component
from tests.support import NodeProcess


def _token(admin: httpx.Client, tenant: str) -> str:
    r = admin.post("/v1/tokens", json={"tenant": tenant})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_a_deleted_tenant_leaves_nothing_behind(make_node: Callable[..., NodeProcess]) -> None:
    node = make_node(env=FAST)
    with node.client(timeout=120) as admin:
        old = _token(admin, "alice")
        with node.client(old, timeout=120) as alice:
            r = alice.put("/v1/workers/open?public=true", content=hello_component(),
                          headers={"content-type": "application/wasm"})
            assert r.status_code == 201, r.text
            assert httpx.get(node.url + "/p/alice/open/x").text == "hello from wat"
            assert alice.put("/v1/kv/notes/secret", content=b"old data").status_code in (200, 201, 204)
            assert alice.post("/v1/repos", json={"name": "site"}).status_code == 201
            box = alice.post("/v1/sandboxes", json={"name": "box"}).json()["id"]
            assert alice.put(f"/v1/sandboxes/{box}/files/note.txt", content=b"old").status_code in (200, 201)
            deploy(alice, "helper", """
                def run(ctx, input):
                    ctx.kv.put("k", "v")
                    ctx.set_state({"n": 1})
                    return 1
            """)
            run = start(alice, "helper")
            assert wait_status(alice, run["id"], "completed")["output"] == 1

        assert admin.delete("/v1/tenants/alice").status_code == 204
        assert admin.delete("/v1/tenants/alice").status_code == 404
        # Nothing of alice's serves or answers any more.
        assert httpx.get(node.url + "/p/alice/open/x").status_code == 404
        with node.client(old) as stale:
            assert stale.get("/v1/whoami").status_code == 401

        # A new tenant of the same name starts empty.
        with node.client(_token(admin, "alice")) as again:
            empty: dict[str, Any] = {
                "/v1/workers": "workers", "/v1/repos": "repos", "/v1/sandboxes": "sandboxes", "/v1/agents": "agents",
            }
            for path, key in empty.items():
                r = again.get(path)
                assert r.status_code == 200 and r.json()[key] == [], (path, r.text)
            assert again.get("/v1/kv/notes/secret").status_code == 404
            assert again.get("/v1/agents/runs").json()["runs"] == []
            assert again.get(f"/v1/sandboxes/{box}").status_code == 404
