"""Workers: isolate instantiate latency, end-to-end request latency and throughput.

Measured in one run, on loopback, against baselines:

- instantiate a fresh isolate of the cached Python component, beside instantiating an
  empty core module and a hand-written (WAT) component on the same engine;
- a Python worker through a real node (``GET /w/bench/...``), beside the same handler
  as a plain Starlette route under hypercorn (the floor), and the same handler run as
  a CPython subprocess per request from a Starlette route (what one does without isolates).

The Python component build is cached in ``$TMPDIR/edgenode-bench-cache`` across runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import NodeProcess  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "edgenode-bench-cache"
HANDLER = textwrap.dedent(
    """
    def handle(request):
        return {"path": request.path, "total": sum(range(100)), "hello": request.query.get("name", "world")}
    """
)
WORKER_MAIN = "from edgenode_guest import Response\n" + HANDLER
INSTANTIATIONS = 300
SEQUENTIAL = 300
CONCURRENCY = 8
RPS_SECONDS = 4.0

#: Appended to the handler to make the per-request child program (reads JSON on stdin).
CHILD_MAIN = """
import json, sys
class Req:
    def __init__(self, path, query):
        self.path, self.query = path, query
data = json.load(sys.stdin)
print(json.dumps(handle(Req(data["path"], data["query"]))))
"""

BASELINE_APP = textwrap.dedent(
    """
    import asyncio, json, socket, sys
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    HANDLER = sys.argv[2]
    namespace = {}
    exec(HANDLER, namespace)

    class Req:
        def __init__(self, path, query):
            self.path, self.query = path, query

    async def native(request):
        return JSONResponse(namespace["handle"](Req("/" + request.path_params["p"], dict(request.query_params))))

    CHILD = HANDLER + sys.argv[3]

    async def subprocess_route(request):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        payload = json.dumps({"path": "/" + request.path_params["p"], "query": dict(request.query_params)})
        out, _ = await proc.communicate(payload.encode())
        return Response(out, media_type="application/json")

    app = Starlette(routes=[Route("/native/{p:path}", native), Route("/subprocess/{p:path}", subprocess_route)])
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
    open(sys.argv[1], "w").write(f"http://127.0.0.1:{sock.getsockname()[1]}")
    config = Config(); config.bind = [f"fd://{sock.fileno()}"]; config.accesslog = None
    asyncio.run(serve(app, config))
    """
)


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def instantiate_figures() -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of instantiating each kind of isolate, from compiled code."""
    import wasmtime

    from edgenode.isolates import (
        AllowList,
        Builder,
        CompiledCache,
        Grants,
        GuestRequest,
        HostFunctions,
        Invocation,
        IsolateEngine,
        Limits,
        Runtime,
        Source,
    )

    engine = IsolateEngine()
    engine.start()
    builder = Builder(CACHE)
    key, path = asyncio.run(builder.build(Source.parse({"main.py": WORKER_MAIN}, max_bytes=1 << 20)))
    cache = CompiledCache(engine, CACHE / "compiled")
    runtime = Runtime(engine, HostFunctions(lambda: None), cache, max_response_bytes=1 << 20)
    component = cache.get(key, path)
    limits = Limits(cpu_ms=1000, memory_mb=128, wall_ms=5000, subrequests=0)
    grants = Grants("bench", None, AllowList())
    request = GuestRequest("GET", "/x", [("name", "bench")], [], b"")
    instantiate, invoke = [], []
    for _ in range(INSTANTIATIONS):
        started = time.perf_counter()
        outcome = runtime.invoke(component, request, Invocation(grants, "bench", time.monotonic() + 5), limits)
        invoke.append((time.perf_counter() - started) * 1000)
        instantiate.append(outcome.usage.instantiate_ms)
        assert outcome.error is None, outcome.error
    empty = wasmtime.Module(engine.engine, "(module (func (export \"f\")))")
    linker = wasmtime.Linker(engine.engine)
    core = []
    for _ in range(INSTANTIATIONS):
        started = time.perf_counter()
        store = wasmtime.Store(engine.engine)
        store.set_epoch_deadline(1000)
        linker.instantiate(store, empty)
        core.append((time.perf_counter() - started) * 1000)
    wat = wasmtime.component.Component(
        engine.engine, (Path(__file__).resolve().parent.parent / "tests/isolates/data/hello.wat").read_text()
    )
    wat_inst = []
    for _ in range(INSTANTIATIONS):
        outcome = runtime.invoke(wat, request, Invocation(grants, "wat", time.monotonic() + 5), limits)
        wat_inst.append(outcome.usage.instantiate_ms)
    engine.stop()
    runtime.host.close()
    return {
        "instantiate: Python component (fresh isolate)": (pct(instantiate, 0.5), pct(instantiate, 0.99)),
        "instantiate + handle(): Python component": (pct(invoke, 0.5), pct(invoke, 0.99)),
        "baseline: instantiate WAT component": (pct(wat_inst, 0.5), pct(wat_inst, 0.99)),
        "baseline: instantiate empty core module": (pct(core, 0.5), pct(core, 0.99)),
    }


def sequential(client: httpx.Client, path: str, n: int) -> tuple[float, float]:
    """p50/p99 latency (ms) of n requests one after another."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.text
    return pct(samples, 0.5), pct(samples, 0.99)


def throughput(base_url: str, path: str, headers: dict[str, str], seconds: float) -> float:
    """Requests per second with CONCURRENCY concurrent clients for ``seconds``."""

    async def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30,
                                     limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
            async def loop() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    r = await client.get(path)
                    assert r.status_code == 200, r.text
                    done += 1

            await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        return done

    started = time.monotonic()
    count = asyncio.run(run())
    return count / (time.monotonic() - started)


def main() -> None:
    """Measure and print the table."""
    rows: list[tuple[str, str, str, str]] = []
    for label, (p50, p99) in instantiate_figures().items():
        rows.append((label, f"{p50:.3f}", f"{p99:.3f}", ""))
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        node = NodeProcess(Path(tmp) / "node", env={"EDGENODE_WORKERS_CACHE_DIR": str(CACHE),
                                                    "EDGENODE_LOG_LEVEL": "warning"}).start(timeout=60)
        url_file = Path(tmp) / "baseline-url"
        baseline = subprocess.Popen([sys.executable, "-c", BASELINE_APP, str(url_file), HANDLER, CHILD_MAIN])
        try:
            with node.client(timeout=120) as client:
                r = client.put("/v1/workers/bench", json={"files": {"main.py": WORKER_MAIN}})
                assert r.status_code == 201, r.text
                sequential(client, "/w/bench/x?name=warm", 20)
                p50, p99 = sequential(client, "/w/bench/x?name=bench", SEQUENTIAL)
                rps = throughput(node.url, "/w/bench/x?name=bench", dict(client.headers), RPS_SECONDS)
                rows.append(("end-to-end: Python worker via node", f"{p50:.3f}", f"{p99:.3f}", f"{rps:.0f}"))
                worker_rps = rps
            deadline = time.monotonic() + 30
            while not (url_file.exists() and url_file.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
            base = url_file.read_text()
            with httpx.Client(base_url=base, timeout=30) as client:
                sequential(client, "/native/x", 20)
                p50, p99 = sequential(client, "/native/x?name=bench", SEQUENTIAL)
                floor_rps = throughput(base, "/native/x?name=bench", {}, RPS_SECONDS)
                rows.append(("floor: same handler, plain Starlette route", f"{p50:.3f}", f"{p99:.3f}",
                             f"{floor_rps:.0f}"))
                p50, p99 = sequential(client, "/subprocess/x?name=bench", 40)
                sub_rps = throughput(base, "/subprocess/x?name=bench", {}, RPS_SECONDS)
                rows.append(("baseline: CPython subprocess per request", f"{p50:.3f}", f"{p99:.3f}",
                             f"{sub_rps:.0f}"))
        finally:
            node.stop()
            baseline.terminate()
            baseline.wait(10)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/s':>7}")
    for label, p50s, p99s, rps_s in rows:
        print(f"{label:<{width}}  {p50s:>8}  {p99s:>8}  {rps_s:>7}")
    print(f"throughput vs subprocess baseline: worker {worker_rps / max(sub_rps, 1e-9):.1f}x, "
          f"plain Starlette floor {floor_rps / max(sub_rps, 1e-9):.1f}x "
          f"({CONCURRENCY} concurrent clients, {RPS_SECONDS:.0f} s each; the load generator shares the host)")


if __name__ == "__main__":
    main()
