"""Sandbox benchmark: create and exec latency over HTTP, beside the same commands run bare in the same run.

Baselines (the floor): ``subprocess.run`` of the same command on the host, and a bare
``bwrap --unshare-all ... true`` (what starting any bwrap sandbox costs here).

A cold-start table first: from the create call to the first executed Python statement
(the statement prints ``time.time()``; host and sandbox share the clock), with and without
the pool of pre-started sandboxes, beside bare ``bwrap`` and ``subprocess.run`` of
``python3 -c`` measured the same way.

A second table: other clients' ``/healthz`` latency while one sandbox sends 64 MB of
output to a slow reader (as events, and as one JSON result), against the same probe
with no stream, in the same run.

A fork table: ``POST /v1/sandboxes/{id}/fork`` time and the disk a fork takes, for
workspaces of 10 MB, 100 MB and 1 GB (1 MiB files), beside what the other ways to copy a
workspace cost on the same file system in the same run: ``cp -a``, ``cp --reflink=always``
and a hard-link farm.

A checkpoint table: on a two-node fleet, ``POST /v1/sandboxes/{id}/checkpoints`` of a
workspace of 200 files / 20 MB (random content, in 4 subdirectories): the first checkpoint,
one after changing one file, one after changing nothing, and the restore on the other node
(``POST /v1/sandboxes {"checkpoint": ...}``), with the bytes each sent; beside ``tar -c`` of the
same directory to a file and ``tar -x`` of it into an empty one, in the same run.

A cgroup table: create call to first exec finished, and the delete, on a node that puts
each sandbox in a cgroup of its own (``sandboxes.cgroups = auto``) beside one that does not
(``off``, rlimits only), runs interleaved in the same run.

    .venv/bin/python bench/sandboxes.py [--runs 100] [--only coldstart|fork|checkpoint|cgroups|exec]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgenode.sandboxes.bwrap import find_bwrap  # noqa: E402
from tests.support import NodeProcess  # noqa: E402

PY = "print(sum(range(1000)))"
LINES = "for i in $(seq 1 100); do echo line $i; done"
STREAM_BYTES = 64 * 1024 * 1024
#: 64 MB of 76-character lines.
BIG_OUTPUT = f"head -c {STREAM_BYTES * 3 // 4} /dev/zero | base64"


def timed(fn: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, values: list[float], floor: list[float] | None = None) -> str:
    p50, p99 = statistics.median(values), pct(values, 0.99)
    extra = ""
    if floor is not None:
        extra = f"{statistics.median(floor):9.2f} {p50 - statistics.median(floor):+10.2f}"
    return f"{name:<44}{p50:9.2f}{p99:9.2f} {extra}"


def probe_healthz(node: NodeProcess, during: Callable[[], None]) -> list[float]:
    """Latencies of back-to-back ``/healthz`` calls from another client while ``during()`` runs."""
    stop = threading.Event()
    out: list[float] = []

    def loop() -> None:
        with node.client(timeout=60) as c:
            while not stop.is_set():
                start = time.perf_counter()
                c.get("/healthz")
                out.append((time.perf_counter() - start) * 1000)
                time.sleep(0.01)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        during()
    finally:
        stop.set()
        thread.join()
    return out


def slow_read(node: NodeProcess, sid: str, accept: str) -> None:
    """Exec BIG_OUTPUT and read the answer slowly (a small receive buffer, a pause per read)."""
    body = json.dumps({"cmd": BIG_OUTPUT}).encode()
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=300) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"POST /v1/sandboxes/{sid}/exec HTTP/1.1\r\nHost: node\r\n"
                  f"Authorization: Bearer {node.admin_token}\r\nAccept: {accept}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + body)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
            time.sleep(0.002)
    assert received > STREAM_BYTES, received


FIRST_STATEMENT = "import time; print(repr(time.time()))"


def _first_statement_ms(began: float, stdout: str) -> float:
    return (float(stdout.strip().splitlines()[0]) - began) * 1000


def cold_start(runs: int, bare_bwrap: list[str]) -> None:
    """Create call to first Python statement: pool, no pool, bare bwrap, subprocess.run."""
    pooled: list[float] = []
    unpooled_code: list[float] = []
    unpooled_argv: list[float] = []
    create_only: list[float] = []
    spawn_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        for size in (2, 0):
            node = NodeProcess(Path(tmp) / f"pool{size}", env={"EDGENODE_SANDBOXES_POOL_SIZE": str(size)}).start()
            try:
                with node.client(timeout=60) as client:
                    def pool_ready() -> bool:
                        pool = client.get("/v1/status").json()["capabilities"]["sandboxes"]["pool"]
                        return bool(pool["ready"] == pool["size"])

                    def one(body: dict[str, object], into: list[float], want_pooled: bool, size: int = size) -> None:
                        # Not timed: the previous sandbox goes, and the pool is full again.
                        while size and not pool_ready():
                            time.sleep(0.02)
                        began = time.time()
                        created = client.post("/v1/sandboxes", json={}).json()
                        created_ms = (time.time() - began) * 1000
                        assert created["pooled"] is want_pooled, created
                        result = client.post(f"/v1/sandboxes/{created['id']}/exec", json=body).json()
                        into.append(_first_statement_ms(began, result["stdout"]))
                        if into is pooled:
                            create_only.append(created_ms)
                            spawn_ms.append(result["duration_ms"])
                        client.delete(f"/v1/sandboxes/{created['id']}")

                    client.post("/v1/sandboxes", json={})  # the first create starts the pool filling
                    for i in range(runs + 2):
                        if size:
                            one({"code": FIRST_STATEMENT}, pooled, True)
                        else:
                            one({"code": FIRST_STATEMENT}, unpooled_code, False)
                            one({"cmd": ["python3", "-c", FIRST_STATEMENT]}, unpooled_argv, False)
                        if i < 2:  # warm-up
                            for values in ((pooled, create_only, spawn_ms) if size
                                           else (unpooled_code, unpooled_argv)):
                                values.clear()
                    if size:
                        cost = client.get("/v1/status").json()["capabilities"]["sandboxes"]["pool"]
            finally:
                node.stop()

    def bare(argv: list[str]) -> Callable[[], float]:
        def go() -> float:
            began = time.time()
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            return _first_statement_ms(began, out)
        return go

    bwrap_py = [*bare_bwrap[:-1], "/usr/bin/python3", "-c", FIRST_STATEMENT]
    bare_bwrap_py = [bare(bwrap_py)() for _ in range(runs)]
    subprocess_py = [bare(["/usr/bin/python3", "-c", FIRST_STATEMENT])() for _ in range(runs)]
    print(f"create call to first Python statement, {runs} runs (ms)")
    print(f"{'measure':<56}{'p50':>9}{'p99':>9}")
    for name, values in (
        ("pool of 2: POST /v1/sandboxes + exec {code}", pooled),
        ("no pool: POST /v1/sandboxes + exec {code}", unpooled_code),
        ("no pool: POST /v1/sandboxes + exec python3 -c", unpooled_argv),
        ("  of which the create call (pool)", create_only),
        ("  of which the exec's own duration_ms (pool)", spawn_ms),
        ("bare bwrap --unshare-all python3 -c (no API)", bare_bwrap_py),
        ("subprocess.run python3 -c (no sandbox)", subprocess_py),
    ):
        print(f"{name:<56}{statistics.median(values):9.2f}{pct(values, 0.99):9.2f}")
    print(f"pool cost: {cost['rss_bytes'] / 2**20:.1f} MiB resident for {cost['ready']} ready sandboxes, "
          f"a refill start takes {cost['start_ms_p50']} ms (p50)")
    print()


def cgroup_bench(runs: int) -> None:
    """Create + first exec, and delete, with and without per-sandbox cgroups, interleaved."""
    modes = ("off", "auto")
    cold: dict[str, list[float]] = {m: [] for m in modes}
    gone: dict[str, list[float]] = {m: [] for m in modes}
    enforced: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        nodes = {m: NodeProcess(Path(tmp) / m, env={"EDGENODE_SANDBOXES_POOL_SIZE": "0",
                                                    "EDGENODE_SANDBOXES_CGROUPS": m}).start() for m in modes}
        try:
            clients = {m: nodes[m].client(timeout=60) for m in modes}
            for m in modes:
                enforced[m] = clients[m].get("/v1/status").json()["capabilities"]["sandboxes"]["limits"]
            for i in range(runs + 2):
                for m in modes:
                    c = clients[m]
                    began = time.perf_counter()
                    sid = c.post("/v1/sandboxes", json={}).json()["id"]
                    result = c.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]}).json()
                    created = (time.perf_counter() - began) * 1000
                    assert result["exit_code"] == 0, result
                    began = time.perf_counter()
                    assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
                    deleted = (time.perf_counter() - began) * 1000
                    if i >= 2:  # two warm-up rounds
                        cold[m].append(created)
                        gone[m].append(deleted)
            for c in clients.values():
                c.close()
        finally:
            for n in nodes.values():
                n.stop()
    print(f"sandbox create + first exec `true`, and delete, with and without a cgroup per sandbox, "
          f"{runs} runs each, interleaved (ms)")
    print(f"{'measure':<44}{'p50':>9}{'p99':>9} {'off p50':>9} {'overhead':>10}")
    for m in modes:
        label = f"cgroups={m}: {enforced[m].removesuffix('+disk-accounting')}"
        print(row(f"create+exec `true`, {label}", cold[m], cold["off"] if m != "off" else None))
        print(row(f"delete, {label}", gone[m], gone["off"] if m != "off" else None))
    print()


FORK_SIZES_MB = (10, 100, 1000)


def _tree_bytes(root: Path) -> int:
    from edgenode.sandboxes.limits import measure

    return measure(root).bytes


def _copy_costs(tmp: Path, size_mb: int) -> dict[str, str]:
    """cp -a, cp --reflink and a hard-link farm of a workspace of ``size_mb`` 1 MiB files, on this file system."""
    import os
    import shutil

    src = tmp / f"src{size_mb}"
    src.mkdir()
    block = b"\0" * (1 << 20)
    for i in range(size_mb):
        (src / f"f{i}").write_bytes(block)
    out: dict[str, str] = {}
    began = time.perf_counter()
    subprocess.run(["cp", "-a", str(src), str(tmp / "copy")], check=True)
    out["cp -a"] = f"{(time.perf_counter() - began) * 1000:.1f} ms, {_tree_bytes(tmp / 'copy') / 1e6:.0f} MB"
    shutil.rmtree(tmp / "copy")
    began = time.perf_counter()
    reflink = subprocess.run(["cp", "-a", "--reflink=always", str(src), str(tmp / "reflink")], capture_output=True)
    out["cp --reflink"] = (f"{(time.perf_counter() - began) * 1000:.1f} ms" if reflink.returncode == 0
                           else "not supported by this file system")
    shutil.rmtree(tmp / "reflink", ignore_errors=True)
    began = time.perf_counter()
    farm = tmp / "farm"
    farm.mkdir()
    for entry in os.scandir(src):
        os.link(entry.path, farm / entry.name)
    out["hard-link farm"] = f"{(time.perf_counter() - began) * 1000:.1f} ms, 0 MB (in-place writes leak to all)"
    shutil.rmtree(farm)
    shutil.rmtree(src)
    return out


def fork_bench(runs: int) -> None:
    """Fork time and disk per workspace size, beside cp -a, reflink and a hard-link farm."""
    rows: list[tuple[int, list[float], list[float], float, int, dict[str, str]]] = []
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        node = NodeProcess(Path(tmp) / "node", env={"EDGENODE_SANDBOXES_POOL_SIZE": "0"}).start()
        try:
            with node.client(timeout=600) as client:
                for size_mb in FORK_SIZES_MB:
                    sid = client.post("/v1/sandboxes", json={"limits": {"disk_mb": size_mb + 200}}).json()["id"]
                    fill = f"i=0; while [ $i -lt {size_mb} ]; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); done"
                    assert client.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": fill}).json()["exit_code"] == 0
                    os.sync()  # the fill's writeback is the fill's cost, not the forks'
                    began = time.perf_counter()
                    first = client.post(f"/v1/sandboxes/{sid}/fork", json={}).json()
                    first_ms = (time.perf_counter() - began) * 1000
                    assert first["source_released"] is True
                    calls: list[float] = []
                    own: list[float] = []
                    forks = [first["id"]]
                    for _ in range(runs):
                        began = time.perf_counter()
                        made = client.post(f"/v1/sandboxes/{sid}/fork", json={}).json()
                        calls.append((time.perf_counter() - began) * 1000)
                        own.append(made["fork_ms"])
                        forks.append(made["id"])
                    # What a fork holds of its own on disk: its upper and work directories (no copy).
                    base = node.data_dir / "sandboxes" / forks[-1]
                    fork_disk = _tree_bytes(base / "upper") + _tree_bytes(base / "work")
                    seen = client.get(f"/v1/sandboxes/{forks[-1]}").json()["disk_used_bytes"]
                    assert seen >= size_mb * (1 << 20), seen
                    rows.append((size_mb, calls, own, first_ms, fork_disk, _copy_costs(Path(tmp), size_mb)))
                    for other in [sid, *forks]:
                        client.delete(f"/v1/sandboxes/{other}")
        finally:
            node.stop()
    print(f"fork of a workspace of 1 MiB files, {runs} forks per size (ms; HTTP call and the node's own fork_ms)")
    print(f"{'size':>8} {'call p50':>9} {'call p99':>9} {'node p50':>9} {'1st fork':>9} {'fork disk':>10}  "
          "same tree on this file system")
    for size_mb, calls, own, first_ms, disk, copies in rows:
        print(f"{size_mb:>6}MB {statistics.median(calls):9.2f} {pct(calls, 0.99):9.2f} "
              f"{statistics.median(own):9.2f} {first_ms:9.2f} {disk / 1024:8.0f}KB  "
              + "; ".join(f"{k}: {v}" for k, v in copies.items()))
    print("1st fork: the source had written since its last fork, so its processes were released first")
    print()


CHECKPOINT_FILES = 200
CHECKPOINT_MB = 20


def checkpoint_bench(runs: int) -> None:
    """Checkpoint (first, incremental, unchanged) and restore of 200 files / 20 MB, beside tar -c and tar -x."""
    from tests.cluster.helpers import start_fleet, wait_members

    size = CHECKPOINT_MB * 1_000_000 // CHECKPOINT_FILES
    fill = (f"for d in 0 1 2 3; do mkdir -p d$d; done; i=0; while [ $i -lt {CHECKPOINT_FILES} ]; do "
            f"head -c {size} /dev/urandom > d$((i % 4))/f$i; i=$((i+1)); done")
    rows: dict[str, list[tuple[float, int]]] = {k: [] for k in ("first", "one changed", "unchanged", "restore",
                                                                "tar -c", "tar -x")}
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        nodes = start_fleet(Path(tmp) / "fleet", 2)
        try:
            wait_members(nodes)
            a, b = nodes
            with a.client(timeout=600) as ca, b.client(timeout=600) as cb:
                for _ in range(runs):
                    sid = ca.post("/v1/sandboxes", json={}).json()["id"]
                    r = ca.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": fill, "timeout_s": 300}).json()
                    assert r["exit_code"] == 0, r
                    os.sync()
                    for label, change in (("first", None), ("one changed", f"head -c {size} /dev/urandom > d0/f0"),
                                          ("unchanged", None)):
                        if change:
                            ca.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": change})
                        began = time.perf_counter()
                        made = ca.post(f"/v1/sandboxes/{sid}/checkpoints")
                        assert made.status_code == 201, made.text
                        rows[label].append(((time.perf_counter() - began) * 1000, made.json()["uploaded_bytes"]))
                    manifest = made.json()["manifest"]
                    while cb.get(f"/v1/sandboxes/{sid}/checkpoints").json().get("manifest") != manifest:
                        time.sleep(0.02)
                    began = time.perf_counter()
                    restored = cb.post("/v1/sandboxes", json={"checkpoint": sid})
                    assert restored.status_code == 201, restored.text
                    rows["restore"].append(((time.perf_counter() - began) * 1000, 0))
                    workspace = a.data_dir / "sandboxes" / sid / "workspace"
                    archive = Path(tmp) / "ws.tar"
                    began = time.perf_counter()
                    subprocess.run(["tar", "-cf", str(archive), "-C", str(workspace), "."], check=True)
                    rows["tar -c"].append(((time.perf_counter() - began) * 1000, archive.stat().st_size))
                    target = Path(tmp) / "untar"
                    target.mkdir()
                    began = time.perf_counter()
                    subprocess.run(["tar", "-xf", str(archive), "-C", str(target)], check=True)
                    os.sync()  # the restore syncs what it wrote; so does this
                    rows["tar -x"].append(((time.perf_counter() - began) * 1000, 0))
                    subprocess.run(["rm", "-rf", str(target), str(archive)], check=True)
                    ca.delete(f"/v1/sandboxes/{sid}")
                    cb.delete(f"/v1/sandboxes/{sid}")
        finally:
            for n in nodes:
                n.stop()
    print(f"checkpoint of {CHECKPOINT_FILES} files / {CHECKPOINT_MB} MB on a 2-node fleet, {runs} runs "
          "(ms over HTTP; MB sent to the fleet)")
    print(f"{'measure':<40}{'p50 ms':>9}{'max ms':>9}{'MB sent':>9}")
    for label, values in rows.items():
        times = [v[0] for v in values]
        sent = statistics.median(v[1] for v in values) / 1e6
        name = {"first": "checkpoint, first", "one changed": "checkpoint, one file changed",
                "unchanged": "checkpoint, nothing changed", "restore": "restore on the other node",
                "tar -c": "baseline: tar -c to a file", "tar -x": "baseline: tar -x + sync"}[label]
        print(f"{name:<40}{statistics.median(times):9.1f}{max(times):9.1f}{sent:9.2f}")
    print("tar rows: the same workspace on node A's disk, no network, no hashing (MB: the archive's size)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--only", choices=["coldstart", "fork", "checkpoint", "cgroups", "exec"], default=None)
    args = parser.parse_args()
    runs = args.runs
    bwrap = find_bwrap()
    bare_bwrap = [bwrap.path, "--new-session", "--die-with-parent", "--unshare-all", "--ro-bind", "/usr", "/usr",
                  "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                  "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"]
    if args.only in (None, "coldstart"):
        cold_start(max(10, runs // 3), bare_bwrap)
    if args.only in (None, "fork"):
        fork_bench(max(10, runs // 5))
    if args.only in (None, "checkpoint"):
        checkpoint_bench(max(3, runs // 20))
    if args.only in (None, "cgroups"):
        cgroup_bench(max(10, runs // 3))
    if args.only in ("coldstart", "fork", "checkpoint", "cgroups"):
        return

    with tempfile.TemporaryDirectory(prefix="edgenode-bench-") as tmp:
        # Output cap above the 64 MB the stream rows send.
        node = NodeProcess(Path(tmp) / "node",
                           env={"EDGENODE_SANDBOXES_MAX_OUTPUT_BYTES": str(2 * STREAM_BYTES),
                                "EDGENODE_SANDBOXES_POOL_SIZE": "0"}).start()
        try:
            client = node.client(timeout=60)
            created: list[str] = []

            def create() -> None:
                created.append(client.post("/v1/sandboxes", json={}).json()["id"])

            create_ms = timed(create, max(10, runs // 3), warmup=1)

            def cold() -> None:
                sid = client.post("/v1/sandboxes", json={}).json()["id"]
                client.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})
                created.append(sid)

            cold_ms = timed(cold, 10, warmup=1)
            bare_bwrap_ms = timed(lambda: subprocess.run(bare_bwrap, check=True), runs)
            # Keep one sandbox; the others' warm starts must not run under the exec measurements.
            sid = created.pop(0)
            for other in created:
                client.delete(f"/v1/sandboxes/{other}")
            created = [sid]
            client.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})

            def exec_(cmd: object) -> Callable[[], None]:
                def go() -> None:
                    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": cmd})
                    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
                return go

            true_ms = timed(exec_(["true"]), runs)
            true_floor = timed(lambda: subprocess.run(["true"], check=True), runs)
            sh_ms = timed(exec_("true"), runs)
            sh_floor = timed(lambda: subprocess.run(["/bin/sh", "-c", "true"], check=True), runs)
            py_ms = timed(exec_(["python3", "-c", PY]), max(10, runs // 3))
            py_floor = timed(lambda: subprocess.run(["/usr/bin/python3", "-c", PY], check=True, capture_output=True),
                             max(10, runs // 3))

            first: list[float] = []
            whole: list[float] = []

            def stream() -> None:
                start = time.perf_counter()
                got_first = False
                lines = 0
                with client.stream("POST", f"/v1/sandboxes/{sid}/exec", json={"cmd": LINES},
                                   headers={"accept": "text/event-stream"}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data:") and not got_first:
                            first.append((time.perf_counter() - start) * 1000)
                            got_first = True
                        if line.startswith("event: stdout"):
                            lines += 1
                        if line.startswith("event: exit"):
                            break
                whole.append((time.perf_counter() - start) * 1000)
                assert lines == 100, lines

            for _ in range(max(10, runs // 3)):
                stream()
            floor_first: list[float] = []
            floor_whole: list[float] = []
            for _ in range(max(10, runs // 3)):
                start = time.perf_counter()
                proc = subprocess.Popen(["/bin/sh", "-c", LINES], stdout=subprocess.PIPE)
                assert proc.stdout is not None
                proc.stdout.readline()
                floor_first.append((time.perf_counter() - start) * 1000)
                proc.stdout.read()
                proc.wait()
                floor_whole.append((time.perf_counter() - start) * 1000)

            healthz_idle = probe_healthz(node, lambda: time.sleep(5))
            healthz_events = probe_healthz(node, lambda: slow_read(node, sid, "text/event-stream"))
            healthz_json = probe_healthz(node, lambda: slow_read(node, sid, "application/json"))

            status = client.get("/v1/status").json()["capabilities"]["sandboxes"]
            for s in created:
                client.delete(f"/v1/sandboxes/{s}")
        finally:
            node.stop()

    print(f"bwrap {status['bwrap_version']} ({status['bwrap_source']}), limits: {status['limits']}, "
          f"{runs} runs; times in ms over HTTP on loopback")
    print(f"{'measure':<44}{'p50':>9}{'p99':>9} {'floor p50':>9} {'overhead':>10}")
    print(row("create sandbox (POST /v1/sandboxes)", create_ms, bare_bwrap_ms))
    print(row("create + first exec `true` (cold start)", cold_ms, bare_bwrap_ms))
    print(row("bare bwrap --unshare-all true", bare_bwrap_ms))
    print(row("exec argv `true`", true_ms, true_floor))
    print(row("exec shell `true`", sh_ms, sh_floor))
    print(row("exec python3 -c", py_ms, py_floor))
    print(row("stream 100 lines: first line", first, floor_first))
    print(row("stream 100 lines: all, with exit event", whole, floor_whole))
    print("floor: create rows vs bare bwrap; exec rows vs subprocess.run of the same command on the host")
    print()
    print("other clients' GET /healthz while one sandbox sends 64 MB to a slow reader (ms)")
    print(f"{'measure':<44}{'p50':>9}{'p99':>9} {'idle p99':>9} {'p99 delta':>10}")
    idle_p99 = pct(healthz_idle, 0.99)
    for name, values in (("/healthz, no stream (baseline)", healthz_idle),
                         ("/healthz while 64 MB stream as events", healthz_events),
                         ("/healthz while 64 MB come as one JSON", healthz_json)):
        p99 = pct(values, 0.99)
        print(f"{name:<44}{statistics.median(values):9.2f}{p99:9.2f} {idle_p99:9.2f} {p99 - idle_p99:+10.2f}")
    print(json.dumps({"create_p50_ms": round(statistics.median(create_ms), 2),
                      "exec_true_overhead_p50_ms": round(statistics.median(true_ms) - statistics.median(true_floor),
                                                         2)}))


if __name__ == "__main__":
    main()
