"""Below its free-space reserve a node refuses large writes early (507), keeps small ones, and says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.store.disk import fill, free_bytes, small_disk
from tests.support import NodeProcess

AGENT = "def run(ctx, input):\n    return 1\n"


def _large_writes(node: NodeProcess, c: httpx.Client) -> dict[str, Callable[[], httpx.Response]]:
    return {
        "sandbox": lambda: c.post("/v1/sandboxes", json={"name": "big"}),
        "worker deploy": lambda: c.put("/v1/workers/w", json={"files": {"main.py": "def handle(r):\n    return 1\n"}}),
        "agent deploy": lambda: c.put("/v1/agents/a", json={"files": {"main.py": AGENT}}),
        "git push": lambda: httpx.post(f"{node.url}/git/default/r.git/git-receive-pack", content=b"0000",
                                       auth=("x", node.admin_token), timeout=60,
                                       headers={"content-type": "application/x-git-receive-pack-request"}),
    }


def test_below_the_reserve_large_writes_get_507_small_ones_pass_and_status_says_so(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 64) as disk:
        node = NodeProcess(disk / "data", env={
            "EDGENODE_STORE_MIN_FREE_MB": "32", "EDGENODE_STORE_MIN_FREE_PERCENT": "100",
            "EDGENODE_WORKERS_CACHE_DIR": str(tmp_path / "cache"),
        }).start()
        try:
            with node.client(timeout=60) as c:
                assert c.post("/v1/repos", json={"name": "r"}).status_code == 201
                assert c.get("/healthz").json()["status"] == "ok"
                fill(disk / "filler", leave_bytes=24 << 20)  # under the 32 MiB reserve, far from full

                for name, write in _large_writes(node, c).items():
                    r = write()
                    assert r.status_code == 507, (name, r.status_code, r.text)
                    error = r.json()["error"]
                    assert error["code"] == "insufficient_storage", (name, error)
                    assert error["reserve_bytes"] == 32 << 20 and 0 < error["free_bytes"] < 32 << 20, (name, error)
                # Small metadata writes still go through.
                assert c.put("/v1/kv/app/k", content=b"v").status_code == 200
                assert c.post("/v1/tokens", json={"tenant": "default", "name": "small"}).status_code == 201
                health = c.get("/healthz")
                assert health.status_code == 200 and health.json()["status"] == "degraded"
                assert health.json()["store"]["space"]["low"] is True
                assert c.get("/v1/status").json()["store"]["space"]["low"] is True
                assert "edgenode_store_low_space 1.0" in c.get("/metrics").text

                (disk / "filler").unlink()
                assert free_bytes(disk) > 32 << 20
                assert c.get("/healthz").json()["status"] == "ok"
                assert "edgenode_store_low_space 0.0" in c.get("/metrics").text
                r = c.post("/v1/sandboxes", json={"name": "after"})
                assert r.status_code == 201, r.text
                r = _large_writes(node, c)["git push"]()
                assert r.status_code != 507, r.text
        finally:
            node.stop()
