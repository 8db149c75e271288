"""Workers on the shared Python runtime: new code to first answer, memory per worker, latency, throughput.

Every figure is printed beside a baseline measured in the same run, on loopback:

1. New code to its first answer: ``POST /v1/run`` with snippets the node has never seen,
   beside the per-program path (componentize-py builds a component for the snippet,
   wasmtime compiles it, one request runs it) and a CPython subprocess per request.
   Deploying a new worker and its first request are timed too.
2. Resident memory of a fresh node with 1, 10 and 100 distinct workers deployed and
   invoked once each, and the growth per additional worker between 10 and 100.
3. In-process: a fresh instance of the shared runtime plus ``handle`` (as ``Workers``
   runs it), split into its steps, beside instantiating a hand-written (WAT) component
   and an empty core module, and the per-program component of part 1.
4. End to end: a Python worker through a real node, beside the same handler as a plain
   Starlette route (the floor) and as a CPython subprocess per request.

Set ``EDGENODE_BENCH_BUILDS`` to the number of per-program builds to time (default 3,
0 skips them: each takes many seconds), and ``EDGENODE_BENCH_PROFILE=1`` to print a
profile of the in-process shared-runtime path.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import quantile  # noqa: E402
from tests.support import NodeProcess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HANDLER = textwrap.dedent(
    """
    def handle(request):
        return {"path": request.path, "total": sum(range(100)), "hello": request.query.get("name", "world")}
    """
)
WORKER_MAIN = "from edgenode_guest import Response\n" + HANDLER
NEW_SNIPPETS = 50
DEPLOYS = (1, 10, 100)
INSTANTIATIONS = 300
SEQUENTIAL = 300
CONCURRENCY = 8
RPS_SECONDS = 4.0
RPS_ROUNDS = 4
BUILDS = int(os.environ.get("EDGENODE_BENCH_BUILDS", "3"))
PROFILE = os.environ.get("EDGENODE_BENCH_PROFILE", "") not in ("", "0")

#: The per-program path's entry module: the snippet's handle behind the worker world's export.
ENTRY = textwrap.dedent(
    """
    import wit_world
    from edgenode_guest._worker import handle_with
    import main

    class WitWorld(wit_world.WitWorld):
        def handle(self, req):
            return handle_with(main.handle, req)
    """
)

#: Appended to a handler to make it a program of its own (request as JSON on stdin, or in argv[1]).
CHILD_MAIN = """
import json, sys
class Req:
    def __init__(self, path, query, body=b""):
        self.path, self.query, self.body = path, query, body
    def json(self):
        return json.loads(self.body)
data = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.load(sys.stdin)
print(json.dumps(handle(Req(data["path"], data["query"], data.get("body", "").encode()))))
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

Row = tuple[str, str, str, str]


# -- small helpers ----------------------------------------------------------------


def ms_row(label: str, samples: list[float], extra: str = "") -> Row:
    """A table row of p50/p99 milliseconds."""
    return label, f"{quantile(samples, 0.5):.2f}", f"{quantile(samples, 0.99):.2f}", extra


def print_table(title: str, rows: list[Row], heads: tuple[str, str, str] = ("p50 ms", "p99 ms", "")) -> None:
    """Print rows under a title, columns aligned."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"  {'measure':<{width}}  {heads[0]:>9}  {heads[1]:>9}  {heads[2]}".rstrip())
    for label, a, b, c in rows:
        print(f"  {label:<{width}}  {a:>9}  {b:>9}  {c}".rstrip())


def rss(pid: int) -> dict[str, int]:
    """Resident memory of a process in KiB: VmRSS and its anonymous, file-backed and shared-memory parts."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0])
    return fields


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def snippet(i: int) -> str:
    """A handler the node has never seen: its constants differ per call, so its source does too."""
    tag = uuid.uuid4().hex
    return textwrap.dedent(
        f"""
        def handle(request):
            data = request.json() if request.body else {{}}
            return {{"snippet": {i}, "value": data.get("x", 0) * {i + 3}, "tag": "{tag}"}}
        """
    )


def node_pid(node: NodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def wait_runtime_ready(client: httpx.Client, timeout: float = 120.0) -> None:
    """Wait until the node has its shared Python runtime loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]["state"]
        if state == "ready":
            return
        if state == "failed":
            raise RuntimeError("the node's Python runtime failed to load")
        time.sleep(0.05)
    raise TimeoutError("the node's Python runtime did not become ready")


def start_node(directory: Path) -> NodeProcess:
    """A fresh node with its own data and cache (the shared runtime comes from the user's runtime directory)."""
    return NodeProcess(directory, env={"EDGENODE_LOG_LEVEL": "warning"}).start(timeout=60)


# -- 1. new code to first answer --------------------------------------------------


def new_code_figures(client: httpx.Client) -> list[Row]:
    """NEW_SNIPPETS never-seen snippets: each through ``POST /v1/run``, then as a CPython subprocess.

    The two alternate, so both see the same load on a shared machine.
    """
    client.post("/v1/run", json={"code": snippet(-1), "input": {"x": 1}}).raise_for_status()  # runtime loaded
    run, child = [], []
    request = '{"path": "/", "query": {}, "body": "{\\"x\\": 2}"}'
    for i in range(NEW_SNIPPETS):
        code = snippet(i)
        started = time.perf_counter()
        r = client.post("/v1/run", json={"code": code, "input": {"x": 2}})
        run.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200 and r.json()["json"]["value"] == 2 * (i + 3), r.text
        code = snippet(i)  # new to the child too (no bytecode on disk for -c, but keep it fair)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code + CHILD_MAIN, request], capture_output=True, check=True)
        child.append((time.perf_counter() - started) * 1000)
        assert b'"value": ' + str(2 * (i + 3)).encode() in out.stdout, out
    return [
        ms_row(f"POST /v1/run, new code ({NEW_SNIPPETS} distinct snippets)", run),
        ms_row(f"baseline: CPython subprocess per request, python -c (same {NEW_SNIPPETS})", child, "not via HTTP"),
    ]


class InProcess:
    """The isolate objects built as ``Workers`` builds them, on one engine, for in-process figures."""

    def __init__(self, directory: Path) -> None:
        from edgenode.isolates import AllowList, CompiledCache, Grants, HostFunctions, IsolateEngine, Limits, Runtime
        from edgenode.isolates.python import PythonRuntime, default_runtime_dir

        self.engine = IsolateEngine()
        self.engine.start()
        self.runtime = Runtime(self.engine, HostFunctions(lambda: None),
                               CompiledCache(self.engine, directory / "compiled"), max_response_bytes=1 << 20)
        self.python = PythonRuntime(self.engine, self.runtime.linker, runtime_dir=default_runtime_dir(),
                                    fallback_dir=directory / "runtime", cache_dir=directory)
        self.limits = Limits(cpu_ms=1000, memory_mb=128, wall_ms=5000, subrequests=0)
        self.grants = Grants("bench", None, AllowList())

    def invoke(self, component: Any, request: Any, program: Any = None) -> Any:
        """One request in a fresh instance, exactly as ``Workers.invoke`` runs it."""
        from edgenode.isolates import Invocation

        invocation = Invocation(self.grants, "bench", time.monotonic() + 5)
        outcome = self.runtime.invoke(component, request, invocation, self.limits, program)
        assert outcome.error is None, outcome.error
        return outcome

    def close(self) -> None:
        self.engine.stop()
        self.runtime.host.close()


def per_program_figures(ip: InProcess, work: Path) -> tuple[list[Row], Any]:
    """The per-program path for BUILDS never-seen snippets: componentize-py, wasmtime compile, one request.

    Returns the rows and the last compiled component (for the in-process comparison).
    """
    from wasmtime.component import Component

    from edgenode.isolates import GuestRequest
    from edgenode.isolates.builder import GUEST_DIR, componentize

    builds, compiles, firsts, totals = [], [], [], []
    component = None
    size = 0
    for i in range(BUILDS):
        app = work / f"app{i}"
        app.mkdir(parents=True)
        (app / "main.py").write_text(snippet(i))
        (app / "bench_entry.py").write_text(ENTRY)
        out = work / f"program{i}.wasm"
        started = time.perf_counter()
        componentize([app, GUEST_DIR], "bench_entry", "worker", out, timeout_s=900)
        built = time.perf_counter()
        size = out.stat().st_size
        component = Component.from_file(ip.engine.engine, str(out))
        compiled = time.perf_counter()
        request = GuestRequest("POST", "/", [], [("content-type", "application/json")], b'{"x": 2}')
        outcome = ip.invoke(component, request)
        done = time.perf_counter()
        assert outcome.response is not None and f'"value":{2 * (i + 3)}'.encode() in outcome.response.body, outcome
        builds.append((built - started) * 1000)
        compiles.append((compiled - built) * 1000)
        firsts.append((done - compiled) * 1000)
        totals.append((done - started) * 1000)
    if not BUILDS:
        return [("baseline: per-program componentize-py path", "skipped", "", "EDGENODE_BENCH_BUILDS=0")], None
    return [
        ms_row(f"baseline: per-program path, total ({BUILDS} snippets)", totals,
               f"{quantile(totals, 0.5) / 1000:.1f} s p50: seconds, not ms"),
        ms_row("  of which componentize-py build", builds, f"{size / 2**20:.0f} MiB component"),
        ms_row("  of which wasmtime compile", compiles),
        ms_row("  of which first request", firsts),
    ], component


# -- 2. memory per deployed worker ------------------------------------------------


def memory_figures(work: Path) -> tuple[list[Row], list[Row]]:
    """A fresh node: RSS idle, then with 1, 10 and 100 distinct workers deployed and invoked once each.

    Also returns the deploy and first-request latencies of those new workers.
    """
    node = start_node(work / "memory-node")
    rows: list[Row] = []
    deploys, firsts = [], []
    try:
        pid = node_pid(node)
        with node.client(timeout=120) as client:
            wait_runtime_ready(client)
            idle = rss(pid)
            rows.append(_rss_row("node idle, runtime loaded", idle))
            at: dict[int, dict[str, int]] = {}
            for i in range(max(DEPLOYS)):
                name = f"w{i}"
                started = time.perf_counter()
                r = client.put(f"/v1/workers/{name}", json={"files": {"main.py": snippet(i)}})
                deployed = time.perf_counter()
                assert r.status_code == 201, r.text
                r = client.post(f"/w/{name}/", json={"x": 2})
                answered = time.perf_counter()
                assert r.status_code == 200 and r.json()["value"] == 2 * (i + 3), r.text
                deploys.append((deployed - started) * 1000)
                firsts.append((answered - deployed) * 1000)
                if i + 1 in DEPLOYS:
                    at[i + 1] = rss(pid)
            for n in DEPLOYS:
                rows.append(_rss_row(f"{n} worker{'s' if n > 1 else ''} deployed, each invoked once", at[n]))
            lo, hi = min(n for n in DEPLOYS if n > 1), max(DEPLOYS)
            growth = (at[hi]["VmRSS"] - at[lo]["VmRSS"]) / (hi - lo) / 1024
            anon = (at[hi]["RssAnon"] - at[lo]["RssAnon"]) / (hi - lo) / 1024
            first = (at[1]["VmRSS"] - idle["VmRSS"]) / 1024
            rows.append((f"growth per additional worker, {lo} -> {hi}", f"{growth:.3f}", f"{anon:.3f}",
                         "MiB (VmRSS, RssAnon); target <= 1 MiB"))
            rows.append(("growth idle -> first worker", f"{first:.1f}", "", "MiB VmRSS"))
    finally:
        node.stop()
    latency = [
        ms_row(f"deploy a new worker (PUT, compiles its files; {len(deploys)} workers)", deploys),
        ms_row("first request to a just-deployed worker", firsts),
        ms_row("deploy + first request", [a + b for a, b in zip(deploys, firsts, strict=True)]),
    ]
    return rows, latency


def _rss_row(label: str, fields: dict[str, int]) -> Row:
    return (label, f"{fields['VmRSS'] / 1024:.1f}", f"{fields['RssAnon'] / 1024:.1f}",
            f"file {fields['RssFile'] / 1024:.1f}")


# -- 3. instantiate + handle in-process -------------------------------------------


def instantiate_figures(ip: InProcess, per_program: Any) -> tuple[list[Row], list[Row]]:
    """p50/p99 of a fresh shared-runtime instance plus ``handle``, its steps, and the baselines.

    One loop takes a sample of each in turn, so every figure sees the same load.
    """
    import wasmtime

    from edgenode.isolates import Budget, GuestRequest

    component = ip.python.component()
    program = ip.python.program({"main.py": WORKER_MAIN}, "main.py", "worker",
                                budget=Budget(cpu_s=30, wall_s=60), memory_bytes=256 << 20)
    request = GuestRequest("GET", "/x", [("name", "bench")], [], b"")
    wat = wasmtime.component.Component(ip.engine.engine, (ROOT / "tests/isolates/data/hello.wat").read_text())
    empty = wasmtime.Module(ip.engine.engine, '(module (func (export "f")))')
    linker = wasmtime.Linker(ip.engine.engine)
    old_request = GuestRequest("POST", "/", [], [], b'{"x": 2}')
    for _ in range(20):
        ip.invoke(component, request, program)
        ip.invoke(wat, request)
    names = ("invoke", "instantiate", "wat", "wat_instantiate", "core", "old")
    samples: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[float]] = {}
    for i in range(INSTANTIATIONS):
        started = time.perf_counter()
        outcome = ip.invoke(component, request, program)
        samples["invoke"].append((time.perf_counter() - started) * 1000)
        samples["instantiate"].append(outcome.usage.instantiate_ms)
        started = time.perf_counter()
        outcome = ip.invoke(wat, request)
        samples["wat"].append((time.perf_counter() - started) * 1000)
        samples["wat_instantiate"].append(outcome.usage.instantiate_ms)
        started = time.perf_counter()
        store = wasmtime.Store(ip.engine.engine)
        store.set_epoch_deadline(1000)
        linker.instantiate(store, empty)
        samples["core"].append((time.perf_counter() - started) * 1000)
        del store
        for step, value in split_once(ip, component, program, request).items():
            steps.setdefault(step, []).append(value)
        if per_program is not None and i % 6 == 0:
            started = time.perf_counter()
            ip.invoke(per_program, old_request)
            samples["old"].append((time.perf_counter() - started) * 1000)
    rows = [
        ms_row("shared runtime: instantiate (fresh instance)", samples["instantiate"]),
        ms_row("shared runtime: instantiate + handle (Runtime.invoke)", samples["invoke"]),
        ms_row("baseline: WAT component, instantiate", samples["wat_instantiate"]),
        ms_row("baseline: WAT component, instantiate + handle", samples["wat"]),
        ms_row("baseline: empty core module, instantiate", samples["core"]),
    ]
    if samples["old"]:
        rows.append(ms_row("baseline: per-program component, instantiate + handle", samples["old"],
                           f"{len(samples['old'])} runs"))
    split = [ms_row(step, values) if not step.startswith("page faults") else
             (step, f"{quantile(values, 0.5):.0f}", f"{quantile(values, 0.99):.0f}", "")
             for step, values in steps.items()]
    return rows, split


SPLIT_STEPS = ("store + WASI setup", "instantiate", "get_func", "handle call (guest boot + handler)",
               "post_return", "store teardown (del store)")


def split_once(ip: InProcess, component: Any, program: Any, request: Any) -> dict[str, float]:
    """One shared-runtime request with a clock (and the thread's minor page faults) between its steps.

    Mirrors ``Runtime.invoke``: same store, WASI, bindings and calls. The guest's own work (boot:
    load and execute the program; then the handler) is the ``handle`` call.
    """
    import resource

    import wasmtime

    from edgenode.isolates import Budget, Invocation
    from edgenode.isolates.capabilities import bound
    from edgenode.isolates.engine import running
    from edgenode.isolates.python import binding

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    invocation = Invocation(ip.grants, "bench", time.monotonic() + 5)
    budget = Budget(cpu_s=1, wall_s=5)
    f0 = faults()
    t0 = time.perf_counter()
    wasi = wasmtime.WasiConfig()
    wasi.stdout_custom = lambda data: None
    wasi.stderr_custom = lambda data: None
    store = ip.engine.store(budget, memory_bytes=ip.limits.memory_mb << 20)
    store.set_wasi(wasi)
    with running(budget), bound(invocation), binding(program):
        f1 = faults()
        t1 = time.perf_counter()
        instance = ip.runtime.linker().instantiate(store, component)
        t2 = time.perf_counter()
        f2 = faults()
        handle = instance.get_func(store, "handle")
        assert handle is not None
        t3 = time.perf_counter()
        f3 = faults()
        handle(store, request.to_record())
        t4 = time.perf_counter()
        f4 = faults()
        handle.post_return(store)
    f5 = faults()
    t5 = time.perf_counter()
    del handle, instance, store
    t6 = time.perf_counter()
    f6 = faults()
    ends = (t0, t1, t2, t3, t4, t5, t6)
    out = {step: (ends[k + 1] - ends[k]) * 1000 for k, step in enumerate(SPLIT_STEPS)}
    out["sum"] = (t6 - t0) * 1000
    out["page faults: instantiate"] = f2 - f1
    out["page faults: handle call"] = f4 - f3
    out["page faults: teardown"] = f6 - f5
    out["page faults: whole request"] = f6 - f0
    return out


def profile(ip: InProcess) -> str:
    """cProfile of Runtime.invoke on the shared runtime (EDGENODE_BENCH_PROFILE=1)."""
    from edgenode.isolates import Budget, GuestRequest

    component = ip.python.component()
    program = ip.python.program({"main.py": WORKER_MAIN}, "main.py", "worker",
                                budget=Budget(cpu_s=30, wall_s=60), memory_bytes=256 << 20)
    request = GuestRequest("GET", "/x", [("name", "bench")], [], b"")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(INSTANTIATIONS):
        ip.invoke(component, request, program)
    profiler.disable()
    out = io.StringIO()
    out.write(f"\nprofile of {INSTANTIATIONS} x Runtime.invoke (shared runtime), by own time:\n")
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


# -- 4. end to end ----------------------------------------------------------------


def get(client: httpx.Client, path: str) -> float:
    """One request's latency in ms."""
    started = time.perf_counter()
    r = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert r.status_code == 200, r.text
    return elapsed


async def _count(base_url: str, path: str, headers: dict[str, str], seconds: float) -> int:
    """Requests answered by CONCURRENCY concurrent clients in ``seconds``."""
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


def throughput(targets: list[tuple[str, str, dict[str, str]]], seconds: float, rounds: int) -> list[float]:
    """Requests per second of each (base URL, path, headers), in ``rounds`` alternating slices of ``seconds``."""
    counts = [0] * len(targets)
    elapsed = [0.0] * len(targets)
    for _ in range(rounds):
        for k, (base, path, headers) in enumerate(targets):
            started = time.monotonic()
            counts[k] += asyncio.run(_count(base, path, headers, seconds / rounds))
            elapsed[k] += time.monotonic() - started
    return [c / e for c, e in zip(counts, elapsed, strict=True)]


def end_to_end_figures(node: NodeProcess, client: httpx.Client, work: Path) -> tuple[list[Row], str]:
    """A Python worker through the node, the plain Starlette floor and a subprocess per request, interleaved."""
    url_file = work / "baseline-url"
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE_APP, str(url_file), HANDLER, CHILD_MAIN])
    try:
        r = client.put("/v1/workers/bench", json={"files": {"main.py": WORKER_MAIN}})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while not (url_file.exists() and url_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        base = url_file.read_text()
        worker, floor, sub = [], [], []
        with httpx.Client(base_url=base, timeout=30) as plain:
            for _ in range(20):
                get(client, "/w/bench/x?name=warm")
                get(plain, "/native/x?name=warm")
            for i in range(SEQUENTIAL):
                worker.append(get(client, "/w/bench/x?name=bench"))
                floor.append(get(plain, "/native/x?name=bench"))
                if i % 8 == 0:
                    sub.append(get(plain, "/subprocess/x?name=bench"))
        worker_rps, floor_rps, sub_rps = throughput([
            (node.url, "/w/bench/x?name=bench", dict(client.headers)),
            (base, "/native/x?name=bench", {}),
            (base, "/subprocess/x?name=bench", {}),
        ], RPS_SECONDS, RPS_ROUNDS)
    finally:
        baseline.terminate()
        baseline.wait(10)
    rows = [
        ms_row("Python worker via node (GET /w/bench/...)", worker, f"{worker_rps:.0f}"),
        ms_row("floor: same handler, plain Starlette route", floor, f"{floor_rps:.0f}"),
        ms_row("baseline: CPython subprocess per request", sub, f"{sub_rps:.0f}"),
    ]
    summary = (f"  overhead over the floor: p50 {quantile(worker, 0.5) - quantile(floor, 0.5):+.2f} ms, "
               f"p99 {quantile(worker, 0.99) - quantile(floor, 0.99):+.2f} ms (target p50 <= 1 ms)\n"
               f"  throughput vs the subprocess baseline: worker {worker_rps / max(sub_rps, 1e-9):.1f}x "
               f"(target >= 20x), floor {floor_rps / max(sub_rps, 1e-9):.1f}x; worker/floor "
               f"{worker_rps / max(floor_rps, 1e-9):.2f}\n"
               f"  (latency: {SEQUENTIAL} requests each, alternating, subprocess every 8th; throughput: "
               f"{CONCURRENCY} concurrent clients, {RPS_SECONDS:.0f} s each in {RPS_ROUNDS} alternating slices; "
               "the load generator shares the host)")
    return rows, summary


# -- main -------------------------------------------------------------------------


def speedups(rows: list[Row]) -> str:
    """How many times faster ``/v1/run`` answers new code than each baseline (p50 over p50)."""
    p50 = {label: float(a) for label, a, _, _ in rows if a.replace(".", "", 1).isdigit()}
    run = next(v for k, v in p50.items() if k.startswith("POST /v1/run"))
    parts = [f"{name} {v / run:.0f}x" for k, v in p50.items()
             for prefix, name in (("baseline: CPython", "subprocess"), ("baseline: per-program path", "per-program"))
             if k.startswith(prefix)]
    return "  /v1/run p50 is faster than: " + ", ".join(parts)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    """Run one part, noting how long it took (on stderr, to keep the tables together)."""
    started = time.perf_counter()
    result = fn()
    print(f"[{label}: {time.perf_counter() - started:.1f} s, load {loadavg()}]", file=sys.stderr, flush=True)
    return result


def main() -> None:
    """Measure everything, then print the tables."""
    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        work = Path(tmp)
        ip = InProcess(work / "inproc")
        try:
            ip.python.component()
            memory, deploy_latency = timed("memory", lambda: memory_figures(work))
            node = start_node(work / "node")
            try:
                with node.client(timeout=120) as client:
                    wait_runtime_ready(client)
                    new_code = timed("new code", lambda: new_code_figures(client))
                    end_to_end, summary = timed("end to end", lambda: end_to_end_figures(node, client, work))
            finally:
                node.stop()
            new_code += deploy_latency
            builds, per_program = timed("per-program builds", lambda: per_program_figures(ip, work / "builds"))
            new_code += builds
            instantiate, split = timed("in-process", lambda: instantiate_figures(ip, per_program))
            profiled = profile(ip) if PROFILE else ""
        finally:
            ip.close()
    print_table("1. new code to first answer (through a real node unless marked)", new_code)
    print(speedups(new_code))
    print_table("2. resident memory of a fresh node (MiB)", memory, ("VmRSS", "RssAnon", ""))
    print_table("3. in-process: fresh instance + handle", instantiate)
    print_table("   the shared-runtime request, step by step (same steps as Runtime.invoke)", split)
    print_table("4. end to end (loopback)", end_to_end, ("p50 ms", "p99 ms", "req/s"))
    print(summary)
    print(profiled, end="")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
