"""Restarts keep deployments without recompiling them; a full pool answers 503 with Retry-After."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx

from tests.isolates.conftest import error_code, start_node
from tests.support import wait_for


def test_restart_keeps_deployments_and_does_not_recompile(tmp_path: Path, worker_cache: Path,
                                                          kitchen_files: dict[str, str]) -> None:
    node = start_node(tmp_path / "data", worker_cache)
    try:
        with node.client(timeout=120) as c:
            assert c.put("/v1/workers/keep", json={"files": kitchen_files}).status_code == 201
            assert c.get("/w/keep/counter").json() == {"hits": 1}
    finally:
        node.stop()
    node.start(timeout=60)
    try:
        with node.client(timeout=120) as c:
            assert c.get("/w/keep/counter").json() == {"hits": 2}
            runtime = c.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]
            # The bytecode compiled at deploy time is read back from disk, not compiled again.
            assert (runtime["programs_compiled"], runtime["program_loads"], runtime["builds"]) == (0, 1, 0)
    finally:
        node.stop()


def test_overload_answers_503_with_retry_after(tmp_path: Path, worker_cache: Path,
                                               kitchen_files: dict[str, str]) -> None:
    node = start_node(tmp_path / "busy", worker_cache, EDGENODE_WORKERS_POOL_SIZE="1",
                      EDGENODE_WORKERS_QUEUE_DEPTH="0")
    try:
        with node.client(timeout=120) as c:
            r = c.put("/v1/workers/slow", json={"files": kitchen_files, "limits": {"cpu_ms": 3000}})
            assert r.status_code == 201
            results: list[httpx.Response] = []

            def occupy() -> None:
                with node.client() as hc:
                    results.append(hc.get("/w/slow/loop"))

            hog = threading.Thread(target=occupy)
            hog.start()
            wait_for(lambda: c.get("/v1/status").json()["capabilities"]["workers"]["in_flight"] == 1,
                     timeout=30, message="the slow request to occupy the pool")
            busy = c.get("/w/slow/text")
            assert (busy.status_code, error_code(busy)) == (503, "overloaded")
            assert busy.headers["retry-after"] == "1"
            hog.join(30)
            assert results and error_code(results[0]) == "cpu_limit"
            ok = c.get("/w/slow/text")
            assert (ok.status_code, ok.text) == (200, "HELLO!")
            assert "edgenode_worker_rejected_total 1.0" in httpx.get(node.url + "/metrics").text
    finally:
        node.stop()


def test_stopping_interrupts_a_spinning_guest(tmp_path: Path, worker_cache: Path,
                                              kitchen_files: dict[str, str]) -> None:
    node = start_node(tmp_path / "stop", worker_cache, EDGENODE_HTTP_SHUTDOWN_TIMEOUT_S="1")
    with node.client(timeout=120) as c:
        r = c.put("/v1/workers/spin", json={"files": kitchen_files, "limits": {"cpu_ms": 30000, "wall_ms": 120000}})
        assert r.status_code == 201

        def spin() -> None:
            with node.client() as hc:
                try:
                    hc.get("/w/spin/loop")
                except httpx.HTTPError:
                    pass  # the node closes the connection as it stops

        hog = threading.Thread(target=spin)
        hog.start()
        wait_for(lambda: c.get("/v1/status").json()["capabilities"]["workers"]["in_flight"] == 1,
                 timeout=30, message="the spinning request to start")
    # Without interruption the guest would hold the process for its 30 s of CPU and stop() would kill it.
    assert node.stop(timeout=20) == 0
    hog.join(10)
    assert "node stopped" in node.log()


def test_a_node_stopped_while_building_the_runtime_stops_at_once(tmp_path: Path, worker_cache: Path) -> None:
    # An empty runtime directory: the node builds the runtime in the background when it starts.
    node = start_node(tmp_path / "build", worker_cache, EDGENODE_WORKERS_RUNTIME_DIR=str(tmp_path / "runtime"))
    with node.client(timeout=120) as c:
        wait_for(lambda: c.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]["state"]
                 == "building", timeout=60, message="the runtime build to start")
    # The build is killed, not waited for: a clean exit well inside the test's generous bound.
    assert node.proc is not None
    group = node.proc.pid  # the node leads its own process group; the build ran inside it
    assert node.stop(timeout=60) == 0
    listing = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True).stdout
    assert not [line for line in listing.splitlines() if line.split(None, 1)[0] == str(group)]
    assert not list((tmp_path / "runtime").glob("python-*.wasm"))
