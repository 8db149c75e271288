"""Node core: request latency through the full stack (auth, metrics, logs) vs. a bare hypercorn app.

Both servers run as real processes on loopback and are driven by the same httpx
client, so the difference is what edgenode's middleware, auth and routing cost.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import NodeProcess, wait_for  # noqa: E402

N = 2000

BARE_APP = textwrap.dedent(
    """
    import asyncio, socket, sys
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request):
        return JSONResponse({"tenant": "default", "admin": True, "token_id": "admin"})

    app = Starlette(routes=[Route("/v1/whoami", whoami)])
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
    open(sys.argv[1], "w").write(f"http://127.0.0.1:{sock.getsockname()[1]}")
    config = Config(); config.bind = [f"fd://{sock.fileno()}"]; config.accesslog = None
    asyncio.run(serve(app, config))
    """
)


def _measure(client: httpx.Client, path: str) -> list[float]:
    for _ in range(100):
        client.get(path)
    samples = []
    for _ in range(N):
        t = time.perf_counter()
        r = client.get(path)
        samples.append(time.perf_counter() - t)
        assert r.status_code == 200
    return samples


def _row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99)] * 1000
    rps = len(samples) / sum(samples)
    return f"{name:<38} {p50:>8.3f} {p99:>8.3f} {rps:>9.0f}"


def main() -> None:
    """Print p50/p99 latency and sequential throughput for both servers."""
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "bare-url"
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(url_file)])
        node = NodeProcess(Path(tmp) / "node").start()
        try:
            bare_url = wait_for(lambda: url_file.exists() and url_file.read_text(), message="bare server")
            with httpx.Client(base_url=bare_url) as c:
                baseline = _measure(c, "/v1/whoami")
            with node.client() as c:
                ours = _measure(c, "/v1/whoami")
            with httpx.Client(base_url=node.url) as c:
                health = _measure(c, "/healthz")
        finally:
            node.stop()
            bare.terminate()
            bare.wait()
    print(f"{N} sequential keep-alive requests per row, loopback")
    print(f"{'server':<38} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    print(_row("baseline: bare starlette+hypercorn", baseline))
    print(_row("edgenode GET /v1/whoami (auth+metrics)", ours))
    print(_row("edgenode GET /healthz (no auth)", health))
    overhead = statistics.median(ours) - statistics.median(baseline)
    print(f"edgenode overhead per request (median): {overhead * 1e6:.0f} us")


if __name__ == "__main__":
    main()
