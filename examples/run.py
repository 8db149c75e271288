"""`make run`: start a node, deploy every example in examples/, print what to try, wait.

Usage: python examples/run.py --data DIR --listen HOST:PORT

Each example is a directory with an ``example.json``::

    {"kind": "worker", "name": "optional, default the directory name",
     "settings": {... sent with the deploy ...},
     "try": [{"method": "GET", "path": "/w/NAME/", "body": "optional", "note": "optional"}]}

``kind`` picks a deploy step from ``DEPLOYERS``; add a function there to teach this
script a new kind of example. In settings, ``$NODE_URL`` and ``$NODE_HOSTPORT`` are
replaced with the node's address, and ``$AGENT_MODEL`` with the model agents should use:
``$EXAMPLE_MODEL`` from the environment (e.g. ``openai:gpt-4o-mini``, once the node has a
key such as ``EDGENODE_AGENTS_OPENAI_API_KEY``), else a ``scripted:`` model. An agent's
``"repos": {"NAME": "subdir"}`` setting seeds artifacts repository NAME from that
subdirectory (left out of the agent's code). The node runs in the foreground: Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

EXAMPLES = Path(__file__).resolve().parent


def read_files(directory: Path, suffix: str = ".py", exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file with ``suffix`` under ``directory`` (but not under ``exclude``), keyed by relative path."""
    return {p.relative_to(directory).as_posix(): p.read_text() for p in sorted(directory.rglob(f"*{suffix}"))
            if "__pycache__" not in p.parts and p.relative_to(directory).parts[0] not in exclude}


def seed_repo(client: httpx.Client, name: str, directory: Path) -> None:
    """Create artifacts repository ``name`` holding the files of ``directory`` (kept if it exists)."""
    r = client.post("/v1/repos", json={"name": name})
    if r.status_code == 409:
        return
    if r.status_code != 201:
        raise RuntimeError(f"creating repository {name} failed: {r.status_code} {r.text}")
    files = {p.relative_to(directory).as_posix(): p.read_text() for p in sorted(directory.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts}
    r = client.post(f"/v1/repos/{name}/commits", json={"branch": "main", "message": f"Seed {name}", "files": files})
    if r.status_code not in (200, 201):
        raise RuntimeError(f"seeding repository {name} failed: {r.status_code} {r.text}")


def deploy_worker(client: httpx.Client, directory: Path, name: str, settings: dict[str, Any]) -> str:
    """Deploy a Python worker directory (main.py plus modules) as worker ``name``."""
    r = client.put(f"/v1/workers/{name}", json={"files": read_files(directory), **settings})
    if r.status_code != 201:
        raise RuntimeError(f"deploying {name} failed: {r.status_code} {r.text}")
    body = r.json()
    return f"worker {name} version {body['version']}"


def deploy_agent(client: httpx.Client, directory: Path, name: str, settings: dict[str, Any]) -> str:
    """Deploy a durable agent directory (main.py defines run(ctx, input)) as agent ``name``."""
    repos: dict[str, str] = settings.pop("repos", {})
    for repo, subdir in repos.items():
        seed_repo(client, repo, directory / subdir)
    files = read_files(directory, exclude=tuple(repos.values()))
    r = client.put(f"/v1/agents/{name}", json={"files": files, **settings}, timeout=600)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"deploying agent {name} failed: {r.status_code} {r.text}")
    return f"agent {name} version {r.json()['version']}"


#: Deploy steps by example kind: (client, example dir, name, settings) -> a one-line summary.
DEPLOYERS: dict[str, Callable[[httpx.Client, Path, str, dict[str, Any]], str]] = {
    "worker": deploy_worker,
    "agent": deploy_agent,
}


def substitute(value: Any, names: dict[str, str]) -> Any:
    """Replace ``$NAME`` placeholders in every string of ``value``."""
    if isinstance(value, str):
        for key, replacement in names.items():
            value = value.replace(f"${key}", replacement)
        return value
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def examples() -> list[tuple[Path, dict[str, Any]]]:
    """Every example directory with its parsed example.json, sorted by name."""
    found = []
    for spec_file in sorted(EXAMPLES.glob("*/example.json")):
        found.append((spec_file.parent, json.loads(spec_file.read_text())))
    return found


def wait_for_url(data: Path, child: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The node's URL once it is ready (it writes DATA/url)."""
    url_file = data / "url"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the node exited with status {child.returncode}")
        if url_file.exists() and url_file.read_text().strip():
            return url_file.read_text().strip()
        time.sleep(0.1)
    raise SystemExit(f"the node did not write {url_file} within {timeout:.0f} s")


def curl_line(url: str, token: str, step: dict[str, Any]) -> str:
    """A curl command for one ``try`` step."""
    method = step.get("method", "GET")
    parts = ["curl", "-s"]
    if method != "GET":
        parts += ["-X", method]
    parts += ["-H", f"'Authorization: Bearer {token}'"]
    if step.get("body") is not None:
        body = str(step["body"])
        if body.lstrip().startswith(("{", "[")):  # curl --data would otherwise say form-urlencoded
            parts += ["-H", "'content-type: application/json'"]
        parts += ["--data", "'" + body.replace("'", "'\\''") + "'"]
    parts.append(f"'{url}{step['path']}'")
    line = " ".join(parts)
    return f"{line}   # {step['note']}" if step.get("note") else line


def main() -> int:
    """Start the node, deploy the examples, then wait on the node."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="edgenode-data", type=Path, help="the node's data directory")
    parser.add_argument("--listen", default="127.0.0.1:8787", help="HOST:PORT to serve on")
    args = parser.parse_args()
    data: Path = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    (data / "url").unlink(missing_ok=True)  # a node killed earlier may have left it
    # The fetch example calls this node itself, on loopback, which a node's egress policy refuses
    # unless the operator allows the network: this demo node does.
    env = {"EDGENODE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8", **os.environ}
    child = subprocess.Popen([sys.executable, "-m", "edgenode", "serve", "--data", str(data),
                              "--listen", args.listen, "--log-format", "text"], env=env)

    def forward(signum: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        url = wait_for_url(data, child)
        token = os.environ.get("EDGENODE_ADMIN_TOKEN") or (data / "admin-token").read_text().strip()
        hostport = url.split("://", 1)[1]
        names = {"NODE_URL": url, "NODE_HOSTPORT": f"http://{hostport}",
                 "AGENT_MODEL": os.environ.get("EXAMPLE_MODEL") or "scripted:example"}
        lines: list[str] = []
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=300) as client:
            for directory, spec in examples():
                kind = spec.get("kind", "worker")
                deployer = DEPLOYERS.get(kind)
                if deployer is None:
                    print(f"skipping {directory.name}: no deploy step for kind {kind!r}", file=sys.stderr)
                    continue
                name = spec.get("name", directory.name)
                print(f"deploying {directory.name} ({kind}) ...", file=sys.stderr, flush=True)
                try:
                    summary = deployer(client, directory, name, substitute(spec.get("settings", {}), names))
                except (RuntimeError, httpx.HTTPError) as exc:
                    print(f"  failed: {exc}", file=sys.stderr)
                    continue
                lines.append(f"# {directory.name}: {summary}")
                lines += [curl_line(url, token, substitute(step, names)) for step in spec.get("try", [])]
        print("\nedgenode is running at " + url + "  (Ctrl-C to stop)")
        where = "EDGENODE_ADMIN_TOKEN" if os.environ.get("EDGENODE_ADMIN_TOKEN") else str(data / "admin-token")
        print(f"admin token: {where}    data: {data}")
        print(f"approvals page: {url}/v1/agents/ui/  (paste the admin token when it asks)")
        print(f'the command line: export PATH="$PWD/.venv/bin:$PATH" EDGENODE_URL={url} '
              f'EDGENODE_TOKEN=$(cat {data / "admin-token"})\n')
        print("\n".join(lines) + "\n", flush=True)
    except BaseException:
        if child.poll() is None:
            child.terminate()
        child.wait()
        raise
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # the handler forwards; keep waiting for the child to drain
            continue


if __name__ == "__main__":
    sys.exit(main())
