"""Helpers for driving the real ``git`` binary against a node."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support import NodeProcess

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Tester",
    "GIT_AUTHOR_EMAIL": "tester@example.com",
    "GIT_COMMITTER_NAME": "Tester",
    "GIT_COMMITTER_EMAIL": "tester@example.com",
}


def git(*args: str, cwd: Path | str | None = None, check: bool = True, input: bytes | None = None,
        home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run git with no prompts, no user config and a fixed identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV)
    env["HOME"] = str(home or Path(cwd or ".").resolve())
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=input is None,
                            input=input, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def git_url(node: NodeProcess, repo: str, password: str | None, *, tenant: str = "default") -> str:
    """The node's Git URL for ``repo``, with ``password`` as basic-auth password."""
    base = node.url
    if password is not None:
        base = base.replace("http://", f"http://agent:{password}@")
    return f"{base}/git/{tenant}/{repo}.git"


def create_repo(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/repos", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def repo_token(client: httpx.Client, name: str, access: str = "write", ttl_s: float = 600) -> str:
    response = client.post(f"/v1/repos/{name}/tokens", json={"access": access, "ttl_s": ttl_s})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def api_commit(client: httpx.Client, name: str, files: dict[str, Any], *, branch: str = "main",
               message: str = "api commit", parent: str | None = None) -> str:
    body: dict[str, Any] = {"branch": branch, "message": message, "files": files}
    if parent is not None:
        body["parent"] = parent
    response = client.post(f"/v1/repos/{name}/commits", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["commit"])


def refs_of(client: httpx.Client, name: str) -> dict[str, str]:
    response = client.get(f"/v1/repos/{name}/refs")
    assert response.status_code == 200, response.text
    return dict(response.json()["refs"])


def repo_dir(node: NodeProcess, name: str, tenant: str = "default") -> Path:
    return node.data_dir / "artifacts" / tenant / f"{name}.git"


def object_files(node: NodeProcess, name: str) -> set[str]:
    """Every file under the repository's objects directory (relative), to spot leftovers."""
    root = repo_dir(node, name) / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
