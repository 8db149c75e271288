"""kill -9 in the middle of a stream of writes loses no acknowledged write."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.support import NodeProcess, wait_for


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with node.client(timeout=5) as c:
            i = 0
            while not stop.is_set():
                name = f"w{w}-{i}"
                try:
                    r = c.post("/v1/tenants", json={"name": name})
                except httpx.HTTPError:
                    return  # the node died mid-request: this write was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acknowledged.append(name)
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= 300, timeout=60, message="300 acknowledged writes")
    node.kill()  # SIGKILL while the writers are still sending
    stop.set()
    for t in threads:
        t.join()
    node.start()
    with node.client() as c:
        stored = {t["name"] for t in c.get("/v1/tenants").json()["tenants"]}
    missing = sorted(set(acknowledged) - stored)
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    node.stop()
