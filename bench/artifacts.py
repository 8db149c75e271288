"""Artifacts benchmark: clone and push through a node beside ``git http-backend``; ref propagation.

Run: ``python -m bench.artifacts [--files 1000] [--commits 200] [--runs 5] [--rounds 30]``.

- Baseline: git's own smart HTTP server, ``git http-backend``, run as CGI by a tiny threaded
  HTTP server on loopback, serving a bare repository that received the same push.
- Clone/push: the same 1,000-file, 200-commit repository, pushed to an empty repository on
  each server, then cloned; medians of several runs, plus warm clones of one repository.
  Two nodes: as shipped (git upload-pack answers clones, git index-pack takes pushes in
  quarantine) and forced onto the pure-dulwich fallback (``artifacts.upload_pack = "dulwich"``).
- Propagation: five nodes of one fleet; an API commit on one node, timed until each of the
  other four lists the new commit id; p50 and p99 over every (commit, node) pair.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import quantile  # noqa: E402
from tests.support import NodeProcess  # noqa: E402

GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Bench",
           "GIT_AUTHOR_EMAIL": "bench@example.com", "GIT_COMMITTER_NAME": "Bench",
           "GIT_COMMITTER_EMAIL": "bench@example.com"}


def git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV)
    env["HOME"] = str(cwd or Path.cwd())
    return subprocess.run(["git", *args], cwd=cwd, env=env, input=input, capture_output=True, check=True).stdout


def make_source(path: Path, files: int, commits: int, seed: int = 7) -> None:
    """A repository with ``files`` files and ``commits`` commits, written with git fast-import."""
    rng = random.Random(seed)
    git("init", "-q", "-b", "main", str(path))
    contents = {f"d{i % 20}/f{i}.txt": "".join(f"line {j} {rng.random()}\n" for j in range(30)) for i in range(files)}
    out: list[bytes] = []
    stamp = 1_700_000_000
    for c in range(commits):
        changed = list(contents) if c == 0 else rng.sample(list(contents), 5)
        if c:
            for p in changed:
                contents[p] += f"change {c}\n"
        msg = f"commit {c}\n".encode()
        out.append(b"commit refs/heads/main\n")
        out.append(f"committer Bench <bench@example.com> {stamp + c} +0000\n".encode())
        out.append(b"data %d\n" % len(msg) + msg)
        for p in changed:
            data = contents[p].encode()
            out.append(f"M 100644 inline {p}\n".encode() + b"data %d\n" % len(data) + data + b"\n")
    git("fast-import", "--quiet", cwd=path, input=b"".join(out))
    git("checkout", "-q", "main", cwd=path)


class _CgiHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` per request, as a CGI server would."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each answer would wait for a
    # delayed ACK (40 ms) and the baseline would look slower than git really is.
    disable_nagle_algorithm = True
    root = ""

    def log_message(self, *args: Any) -> None:
        pass

    def _run(self) -> None:
        path, _, query = self.path.partition("?")
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        env = {"GIT_PROJECT_ROOT": self.root, "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
               "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("content-type", ""),
               "CONTENT_LENGTH": str(len(body)), "PATH": os.environ["PATH"], "REMOTE_USER": "bench",
               "REMOTE_ADDR": "127.0.0.1", "GIT_PROTOCOL": self.headers.get("git-protocol", ""),
               "HTTP_CONTENT_ENCODING": self.headers.get("content-encoding", "")}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _run


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_transfer(work: Path, files: int, commits: int, runs: int) -> dict[str, Any]:
    src = work / "src"
    make_source(src, files, commits)
    objects = len(git("rev-list", "--all", "--objects", cwd=src).splitlines())

    cgi_root = work / "cgi"
    cgi_root.mkdir()
    handler = type("H", (_CgiHandler,), {"root": str(cgi_root)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cgi_url = f"http://127.0.0.1:{server.server_address[1]}"

    # The node as shipped (git upload-pack answers clones) and forced onto its dulwich fallback.
    nodes = {"node": NodeProcess(work / "node").start(),
             "node, dulwich": NodeProcess(work / "node-dulwich",
                                          env={"EDGENODE_ARTIFACTS_UPLOAD_PACK": "dulwich"}).start()}
    apis = {label: n.client() for label, n in nodes.items()}
    labels = [*nodes, "git http-backend"]
    results: dict[str, dict[str, list[float]]] = {label: {"push": [], "clone": [], "warm_clone": []}
                                                   for label in labels}

    def node_url(label: str, name: str, access: str) -> str:
        token = apis[label].post(f"/v1/repos/{name}/tokens", json={"access": access, "ttl_s": 3600}).json()["token"]
        return nodes[label].url.replace("http://", f"http://b:{token}@") + f"/git/default/{name}.git"

    try:
        for run in range(runs):
            name = f"r{run}"
            urls = {}
            for label, api in apis.items():
                assert api.post("/v1/repos", json={"name": name}).status_code == 201
                urls[label] = node_url(label, name, "write")
            # -b main: with git's default (master) HEAD would dangle and the baseline's clones
            # would skip the checkout the node's clones do.
            git("init", "-q", "--bare", "-b", "main", str(cgi_root / f"{name}.git"))
            git("config", "http.receivepack", "true", cwd=cgi_root / f"{name}.git")
            urls["git http-backend"] = f"{cgi_url}/{name}.git"
            # Rotate the order so no server always goes first.
            order = labels[run % 3:] + labels[:run % 3]
            for label in order:
                results[label]["push"].append(timed(lambda url=urls[label]: git("push", "-q", url, "main", cwd=src)))
            for label in order:
                dest = work / f"clone-{run}"
                results[label]["clone"].append(timed(lambda url=urls[label], dest=dest: git(
                    "clone", "-q", url, str(dest), cwd=work)))
                shutil.rmtree(dest)
        # Warm clones of one repository (the steady state of a busy repository), interleaved.
        warm_urls = {label: node_url(label, "r0", "read") for label in nodes}
        warm_urls["git http-backend"] = f"{cgi_url}/r0.git"
        for i in range(runs):
            for label in labels[i % 3:] + labels[:i % 3]:
                dest = work / f"warm-{i}"
                results[label]["warm_clone"].append(timed(lambda url=warm_urls[label], dest=dest: git(
                    "clone", "-q", url, str(dest), cwd=work)))
                shutil.rmtree(dest)
        assert apis["node"].get("/v1/status").json()["capabilities"]["artifacts"]["upload_pack"] == "git"
    finally:
        for label in nodes:
            apis[label].close()
            nodes[label].stop()
        server.shutdown()
    return {"objects": objects, "results": results}


def bench_propagation(work: Path, nodes: int, rounds: int) -> list[float]:
    env = {"EDGENODE_FLEET_SECRET": "bench-fleet-secret", "EDGENODE_ADMIN_TOKEN": "edn_admin_bench_token_0123456789abc",
           "EDGENODE_CLUSTER_HEARTBEAT_INTERVAL_S": "0.5"}
    fleet: list[NodeProcess] = []
    try:
        for i in range(nodes):
            fleet.append(NodeProcess(work / f"p{i}", env=env, args=[a for n in fleet for a in ("--peer", n.url)])
                         .start())
        clients = [httpx.Client(base_url=n.url, headers={"authorization": f"Bearer {env['EDGENODE_ADMIN_TOKEN']}"})
                   for n in fleet]

        def wait(pred: Any, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while not pred():
                if time.monotonic() > deadline:
                    raise TimeoutError("fleet did not converge")
                time.sleep(0.01)

        wait(lambda: all(len(c.get("/v1/cluster").json()["peers"]) >= nodes - 1 for c in clients))
        clients[0].post("/v1/repos", json={"name": "prop"})
        wait(lambda: all(c.get("/v1/repos/prop").status_code == 200 for c in clients))
        samples: list[float] = []
        rng = random.Random(3)
        for r in range(rounds):
            origin = rng.randrange(nodes)
            head = clients[origin].get("/v1/repos/prop/refs").json()["refs"].get("refs/heads/main")
            body = {"branch": "main", "message": f"round {r}", "files": {f"f{r}.txt": f"{r}\n"},
                    "parent": head or ""}
            started = time.perf_counter()
            response = clients[origin].post("/v1/repos/prop/commits", json=body)
            response.raise_for_status()
            sha = response.json()["commit"]
            pending = {i for i in range(nodes) if i != origin}
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                for i in list(pending):
                    refs = clients[i].get("/v1/repos/prop/refs").json()["refs"]
                    if refs.get("refs/heads/main") == sha:
                        samples.append(time.perf_counter() - started)
                        pending.discard(i)
                time.sleep(0.005)
            if pending:
                raise TimeoutError(f"round {r}: nodes {pending} never got {sha}")
        for c in clients:
            c.close()
        return samples
    finally:
        for n in fleet:
            n.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv or [])  # bench/run_all.py calls main() with its own argv in sys.argv
    with tempfile.TemporaryDirectory(prefix="edgenode-bench-artifacts-") as tmp:
        work = Path(tmp)
        transfer = bench_transfer(work / "transfer", args.files, args.commits, args.runs)
        samples = bench_propagation(work / "propagation", args.nodes, args.rounds)

    res = transfer["results"]
    print(f"\nrepository: {args.files} files, {args.commits} commits, {transfer['objects']} objects; "
          f"{args.runs} runs, medians in ms; ratio = node / git http-backend")
    print(f"{'operation':<12}{'node':>8}{'node, dulwich':>15}{'git http-backend':>18}{'ratio':>7}{'dulwich':>9}")
    for op, label in (("push", "push"), ("clone", "cold clone"), ("warm_clone", "warm clone")):
        mine, fallback, base = (statistics.median(res[k][op]) * 1000 for k in ("node", "node, dulwich",
                                                                              "git http-backend"))
        print(f"{label:<12}{mine:>8.0f}{fallback:>15.0f}{base:>18.0f}{mine / base:>7.2f}{fallback / base:>9.2f}")
    print("(node: git upload-pack answers clones, git index-pack takes pushes; node, dulwich: the fallback, "
          "artifacts.upload_pack = \"dulwich\")")
    print(f"\nref propagation across {args.nodes} nodes ({len(samples)} samples: {args.rounds} commits x "
          f"{args.nodes - 1} peers)")
    print(f"{'p50':<6}{quantile(samples, 0.5) * 1000:>8.0f} ms")
    print(f"{'p99':<6}{quantile(samples, 0.99) * 1000:>8.0f} ms   (target < 2000 ms)")
    print(f"{'max':<6}{max(samples) * 1000:>8.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
