"""Node core: latency and throughput of /healthz and of an authenticated store write, over loopback.

Baseline in the same run: hypercorn serving a bare Starlette app (no auth, metrics or
logs) whose write route inserts into a SQLite WAL file with the same durability
(synchronous=FULL). Also reports the idle resident memory of a node.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import NodeProcess, wait_for  # noqa: E402

N = 1500
CONCURRENCY = 8

BARE_APP = textwrap.dedent(
    """
    import asyncio, socket, sqlite3, sys
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (name TEXT PRIMARY KEY, created_at REAL)")

    async def healthz(request):
        return JSONResponse({"status": "ok", "node": "bare", "version": "0"})

    async def write(request):
        body = await request.json()
        db.execute("INSERT OR IGNORE INTO t VALUES (?, 0)", (body["name"],))
        return JSONResponse({"name": body["name"]}, status_code=201)

    app = Starlette(routes=[Route("/healthz", healthz), Route("/v1/tenants", write, methods=["POST"])])
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
    open(sys.argv[1], "w").write(f"http://127.0.0.1:{sock.getsockname()[1]}")
    config = Config(); config.bind = [f"fd://{sock.fileno()}"]; config.accesslog = None
    asyncio.run(serve(app, config))
    """
)


def _run(client_factory, method: str, path: str, body_fn=None) -> tuple[list[float], float]:
    """N requests from CONCURRENCY threads; per-request latencies and wall time."""
    samples: list[float] = []
    lock = threading.Lock()
    per_thread = N // CONCURRENCY

    def worker(w: int) -> None:
        mine = []
        with client_factory() as c:
            for i in range(per_thread):
                kwargs = {"json": body_fn(w, i)} if body_fn else {}
                t = time.perf_counter()
                r = c.request(method, path, **kwargs)
                mine.append(time.perf_counter() - t)
                assert r.status_code < 300, r.text
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(CONCURRENCY)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - started


def _row(name: str, result: tuple[list[float], float]) -> str:
    samples, wall = result
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99)] * 1000
    return f"{name:<44} {p50:>8.2f} {p99:>8.2f} {len(samples) / wall:>8.0f}"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Print the comparison table and the node's idle memory."""
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "bare-url"
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(url_file), str(Path(tmp) / "bare.db")],
                                stderr=subprocess.DEVNULL)
        node = NodeProcess(Path(tmp) / "node").start()
        try:
            time.sleep(1.0)
            assert node.proc is not None
            idle_rss = _rss_mib(node.proc.pid)
            bare_url = wait_for(lambda: url_file.exists() and url_file.read_text(), message="bare server")
            bare_client = lambda: httpx.Client(base_url=bare_url)  # noqa: E731
            rows = [
                _row("baseline bare starlette: GET /healthz", _run(bare_client, "GET", "/healthz")),
                _row("edgenode: GET /healthz", _run(lambda: httpx.Client(base_url=node.url), "GET", "/healthz")),
                _row("baseline bare starlette: sqlite insert", _run(
                    bare_client, "POST", "/v1/tenants", lambda w, i: {"name": f"b{w}-{i}"})),
                _row("edgenode: POST /v1/tenants (auth, store)", _run(
                    node.client, "POST", "/v1/tenants", lambda w, i: {"name": f"e{w}-{i}"})),
            ]
            loaded_rss = _rss_mib(node.proc.pid)
        finally:
            node.stop()
            bare.terminate()
            bare.wait()
    print(f"{N} requests per row from {CONCURRENCY} keep-alive clients on loopback; writes are synchronous=FULL")
    print(f"{'server and route':<44} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for row in rows:
        print(row)
    print(f"node resident memory: idle {idle_rss:.1f} MiB, after the run {loaded_rss:.1f} MiB")


if __name__ == "__main__":
    main()
