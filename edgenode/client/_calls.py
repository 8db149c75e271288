"""The client's requests, described once: what to send and how to read the reply.

Both ``Client`` and ``AsyncClient`` send these ``Call`` values and differ only in how
(blocking or awaited); every path, body and reply shape lives here.
"""

from __future__ import annotations

import json as _json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from edgenode.client.errors import NodeUnreachable, error_for, node_error, raise_for_error, transport_error
from edgenode.client.results import ExecEvent, ExecResult, RunEvent, RunResult, SqlResult

T = TypeVar("T")

#: What a deploy skips when it reads a directory.
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request to the node and the function that turns its (successful) reply into ``T``."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Statuses that are an answer, not an error (kv get's 404 is "absent").
    accept: frozenset[int] = frozenset()
    #: Only the node's own JSON errors raise; any other status is the answer (a worker's reply).
    node_errors_only: bool = False
    #: The node bounds how long this call takes (guest wall limits, exec timeouts), so the
    #: client sets no read timeout of its own: a long command is not a dead node.
    node_bounded: bool = False

    def timeout(self, default: httpx.Timeout) -> httpx.Timeout:
        """The client's timeout, without its read bound for a call the node bounds itself."""
        if not self.node_bounded:
            return default
        return httpx.Timeout(connect=default.connect, read=None, write=default.write, pool=default.pool)

    def check(self, response: httpx.Response) -> None:
        """Raise the node's error the response carries, unless this call takes it as an answer."""
        if not response.is_error or response.status_code in self.accept:
            return
        if not self.node_errors_only:
            raise_for_error(response)
        exc = node_error(response)
        if exc is not None:
            raise exc

    def failure(self, url: str, exc: httpx.TransportError, default: httpx.Timeout) -> NodeUnreachable:
        """The exception for this call getting no answer (``default``: the client's timeout)."""
        return transport_error(url, exc, f"{self.method} {self.path}", self.timeout(default).read)

    def request_kwargs(self, default: httpx.Timeout) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request`` (``default``: the client's timeout)."""
        kwargs: dict[str, Any] = {"params": self.params, "headers": self.headers, "timeout": self.timeout(default)}
        if self.content is not None:
            kwargs["content"] = self.content
        elif self.json is not None:
            kwargs["json"] = self.json
        return kwargs


def seg(value: str) -> str:
    """One path segment, escaped."""
    return quote(value, safe="")


def wpath(value: str) -> str:
    """A path inside a workspace or repository, escaped segment by segment."""
    return quote(value.strip("/"), safe="/")


def _json_body(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def _dict(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    assert isinstance(data, dict), f"expected a JSON object from {response.request.url}"
    return data


def _none(response: httpx.Response) -> None:
    return None


def _key(name: str) -> Callable[[httpx.Response], Any]:
    return lambda response: _dict(response)[name]


def compact(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys whose value is None (the node's defaults apply to them)."""
    return {k: v for k, v in data.items() if v is not None}


def files_from_path(path: str | Path) -> dict[str, str]:
    """A deployment's files from a directory (every text file under it) or one file (as ``main.py``)."""
    root = Path(path)
    if root.is_file():
        return {"main.py": root.read_text()}
    if not root.is_dir():
        raise FileNotFoundError(f"no file or directory at {root}")
    files: dict[str, str] = {}
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if file.is_dir() or any(part in _SKIP_DIRS for part in rel.parts) or file.suffix == ".pyc":
            continue
        files[rel.as_posix()] = file.read_text()
    return files


def deploy_files(files: dict[str, str] | None, path: str | Path | None) -> dict[str, str]:
    """Exactly one of ``files`` and ``path``, as the files to deploy."""
    if (files is None) == (path is None):
        raise TypeError("give exactly one of files= and path=")
    return dict(files) if files is not None else files_from_path(path)  # type: ignore[arg-type]


# -- code mode and workers -------------------------------------------------------


def run(code: str | None, files: dict[str, str] | None, input: Any, limits: dict[str, Any],
        options: dict[str, Any]) -> Call[RunResult]:
    """``POST /v1/run``."""
    body = compact({"code": code, "files": files, "input": input, "limits": limits or None, **options})
    return Call("POST", "/v1/run", lambda r: RunResult.from_json(_dict(r)), json=body, node_bounded=True)


def worker_deploy(name: str, files: dict[str, str], options: dict[str, Any]) -> Call[dict[str, Any]]:
    """``PUT /v1/workers/{name}``."""
    return Call("PUT", f"/v1/workers/{seg(name)}", _dict, json=compact({"files": files, **options}))


def worker_list() -> Call[list[dict[str, Any]]]:
    """``GET /v1/workers``."""
    return Call("GET", "/v1/workers", _key("workers"))


def worker_get(name: str) -> Call[dict[str, Any]]:
    """``GET /v1/workers/{name}``."""
    return Call("GET", f"/v1/workers/{seg(name)}", _dict)


def worker_delete(name: str) -> Call[None]:
    """``DELETE /v1/workers/{name}``."""
    return Call("DELETE", f"/v1/workers/{seg(name)}", _none)


def worker_invoke(name: str, path: str, method: str, *, content: bytes | None, json: Any,
                  params: dict[str, Any] | None, headers: dict[str, str] | None) -> Call[httpx.Response]:
    """``ANY /w/{name}/{path}``: the worker's own response, whatever its status."""
    if json is not None and content is None:
        content = _json.dumps(json).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    return Call(method.upper(), f"/w/{seg(name)}/{wpath(path)}", lambda r: r, content=content, params=params,
                headers=dict(headers or {}), node_errors_only=True, node_bounded=True)


# -- sandboxes -------------------------------------------------------------------


def sandbox_create(data: dict[str, Any]) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes``."""
    return Call("POST", "/v1/sandboxes", _dict, json=compact(data))


def sandbox_get(ref: str) -> Call[dict[str, Any]]:
    """``GET /v1/sandboxes/{id}``."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}", _dict)


def sandbox_list() -> Call[list[dict[str, Any]]]:
    """``GET /v1/sandboxes``."""
    return Call("GET", "/v1/sandboxes", _key("sandboxes"))


def sandbox_delete(ref: str) -> Call[None]:
    """``DELETE /v1/sandboxes/{id}``."""
    return Call("DELETE", f"/v1/sandboxes/{seg(ref)}", _none)


def sandbox_checkpoint(ref: str) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes/{id}/checkpoints``: checkpoint the workspace into the fleet now."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/checkpoints", _dict)


def sandbox_checkpoint_get(ref: str) -> Call[dict[str, Any]]:
    """``GET /v1/sandboxes/{id}/checkpoints``: the sandbox's latest checkpoint in the fleet."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/checkpoints", _dict)


def sandbox_checkpoint_delete(ref: str) -> Call[None]:
    """``DELETE /v1/sandboxes/{id}/checkpoints``: forget the sandbox's checkpoint fleet-wide."""
    return Call("DELETE", f"/v1/sandboxes/{seg(ref)}/checkpoints", _none)


def sandbox_restore(ref: str) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes`` with ``{"checkpoint": ref}``: the sandbox again, here, from its latest checkpoint."""
    return Call("POST", "/v1/sandboxes", _dict, json={"checkpoint": ref})


def sandbox_fork(ref: str, name: str | None) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes/{id}/fork``: a copy-on-write copy of the workspace as a new sandbox."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/fork", _dict, json=compact({"name": name}))


def port_expose(ref: str, port: int, public: bool) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes/{id}/ports``."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/ports", _dict, json={"port": port, "public": public})


def port_list(ref: str) -> Call[list[dict[str, Any]]]:
    """``GET /v1/sandboxes/{id}/ports``."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/ports", _key("ports"))


def port_unexpose(ref: str, port: int) -> Call[None]:
    """``DELETE /v1/sandboxes/{id}/ports/{port}``."""
    return Call("DELETE", f"/v1/sandboxes/{seg(ref)}/ports/{port}", _none)


def git_checkout(ref: str, url: str, branch: str | None, depth: int | None, path: str | None) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes/{id}/git/checkout``: clone a repository (this node's by name) into the workspace."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/git/checkout", _dict,
                json=compact({"url": url, "branch": branch, "depth": depth, "path": path}), node_bounded=True)


def exec_body(cmd: str | list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The body of an exec or a background process."""
    return compact({"cmd": cmd, **options})


def sandbox_exec(ref: str, body: dict[str, Any], *, stream: bool = False) -> Call[ExecResult]:
    """``POST /v1/sandboxes/{id}/exec`` (``stream``: the same, as server-sent events)."""
    headers = {"accept": "text/event-stream"} if stream else {}
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/exec", lambda r: ExecResult.from_json(_dict(r)), json=body,
                headers=headers, node_bounded=True)


def file_mkdir(ref: str, path: str) -> Call[None]:
    """``POST /v1/sandboxes/{id}/mkdir`` with parents."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/mkdir", _none, json={"path": path, "parents": True})


def file_parent(path: str) -> str:
    """The directory a workspace path lives in ("" for the workspace itself)."""
    return posixpath.dirname(path.strip("/"))


def file_write(ref: str, path: str, data: bytes | str) -> Call[dict[str, Any]]:
    """``PUT /v1/sandboxes/{id}/files/{path}``."""
    content = data.encode() if isinstance(data, str) else bytes(data)
    return Call("PUT", f"/v1/sandboxes/{seg(ref)}/files/{wpath(path)}", _dict, content=content,
                headers={"content-type": "application/octet-stream"})


def file_read(ref: str, path: str) -> Call[bytes]:
    """``GET /v1/sandboxes/{id}/files/{path}`` of a file."""
    def parse(response: httpx.Response) -> bytes:
        if response.headers.get("content-type", "").startswith("application/json"):
            raise IsADirectoryError(f"{path!r} is a directory; use files.list")
        return response.content
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/files/{wpath(path)}", parse)


def file_list(ref: str, path: str) -> Call[list[dict[str, Any]]]:
    """``GET /v1/sandboxes/{id}/files/{path}`` of a directory: its entries."""
    def parse(response: httpx.Response) -> list[dict[str, Any]]:
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise NotADirectoryError(f"{path!r} is a file; use files.read")
        entries: list[dict[str, Any]] = _dict(response)["entries"]
        return entries
    suffix = f"/{wpath(path)}" if path.strip("/") else ""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/files{suffix}", parse)


def file_delete(ref: str, path: str, recursive: bool) -> Call[None]:
    """``DELETE /v1/sandboxes/{id}/files/{path}``."""
    return Call("DELETE", f"/v1/sandboxes/{seg(ref)}/files/{wpath(path)}", _none,
                params={"recursive": "true"} if recursive else None)


def process_start(ref: str, body: dict[str, Any]) -> Call[dict[str, Any]]:
    """``POST /v1/sandboxes/{id}/processes``."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/processes", _dict, json=body)


def process_list(ref: str) -> Call[list[dict[str, Any]]]:
    """``GET /v1/sandboxes/{id}/processes``."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/processes", _key("processes"))


def process_get(ref: str, pid: int) -> Call[dict[str, Any]]:
    """``GET /v1/sandboxes/{id}/processes/{n}``."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/processes/{pid}", _dict)


def process_logs(ref: str, pid: int, follow: bool) -> Call[str]:
    """``GET .../processes/{n}/logs`` (``follow``: until the process exits)."""
    return Call("GET", f"/v1/sandboxes/{seg(ref)}/processes/{pid}/logs", lambda r: r.text,
                params={"follow": "true"} if follow else None, node_bounded=follow)


def process_signal(ref: str, pid: int, signal: str | int) -> Call[dict[str, Any]]:
    """``POST .../processes/{n}/signal``."""
    return Call("POST", f"/v1/sandboxes/{seg(ref)}/processes/{pid}/signal", _dict, json={"signal": signal})


class SseParser:
    """Server-sent events from lines: ``feed`` each line, get an ``ExecEvent`` when one is complete."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> ExecEvent | None:
        """Take one line (without its end); the event it completes, if any."""
        if line == "":
            if not self.data:
                return None
            event, payload = self.event, _json.loads("\n".join(self.data))
            self.event, self.data = "message", []
            if event == "exit":
                return ExecEvent("exit", result=ExecResult.from_json(payload))
            return ExecEvent(event, line=payload.get("line", ""), partial=bool(payload.get("partial")))
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


# -- repositories ----------------------------------------------------------------


def repo_create(name: str, default_branch: str) -> Call[dict[str, Any]]:
    """``POST /v1/repos``."""
    return Call("POST", "/v1/repos", _dict, json={"name": name, "default_branch": default_branch})


def repo_list() -> Call[list[dict[str, Any]]]:
    """``GET /v1/repos``."""
    return Call("GET", "/v1/repos", _key("repos"))


def repo_get(name: str) -> Call[dict[str, Any]]:
    """``GET /v1/repos/{name}``."""
    return Call("GET", f"/v1/repos/{seg(name)}", _dict)


def repo_delete(name: str) -> Call[None]:
    """``DELETE /v1/repos/{name}``."""
    return Call("DELETE", f"/v1/repos/{seg(name)}", _none)


def repo_commit(name: str, files: dict[str, Any], branch: str, message: str, parent: str | None,
                author: dict[str, str] | None) -> Call[str]:
    """``POST /v1/repos/{name}/commits``: the new commit's id."""
    body = compact({"files": files, "branch": branch, "message": message, "parent": parent, "author": author})
    return Call("POST", f"/v1/repos/{seg(name)}/commits", _key("commit"), json=body)


def repo_read_file(name: str, path: str, ref: str) -> Call[bytes]:
    """``GET /v1/repos/{name}/blob/{ref}/{path}``."""
    return Call("GET", f"/v1/repos/{seg(name)}/blob/{wpath(ref)}/{wpath(path)}", lambda r: r.content)


def repo_refs(name: str) -> Call[dict[str, Any]]:
    """``GET /v1/repos/{name}/refs``."""
    return Call("GET", f"/v1/repos/{seg(name)}/refs", _dict)


def repo_log(name: str, ref: str | None, limit: int) -> Call[list[dict[str, Any]]]:
    """``GET /v1/repos/{name}/log``."""
    return Call("GET", f"/v1/repos/{seg(name)}/log", _key("commits"), params=compact({"ref": ref, "limit": limit}))


def repo_import(name: str, url: str, branch: str | None, depth: int | None) -> Call[dict[str, Any]]:
    """``POST /v1/repos`` with ``import``, asked to answer with a job (``Prefer: respond-async``)."""
    source = compact({"url": url, "branch": branch, "depth": depth})
    return Call("POST", "/v1/repos", _dict, json={"name": name, "import": source}, headers=dict(PREFER_JOB))


# -- jobs ------------------------------------------------------------------------

#: The header that asks a long route to answer 202 with a job instead of holding the request.
PREFER_JOB = {"prefer": "respond-async"}
#: How long one ``GET /v1/jobs/{id}?wait=`` holds, in seconds (the node allows up to 30).
JOB_WAIT_S = 10


def job_get(job_id: str, wait_s: int = 0) -> Call[dict[str, Any]]:
    """``GET /v1/jobs/{id}?wait=S``: the job, once finished or after S seconds."""
    return Call("GET", f"/v1/jobs/{seg(job_id)}", _dict, params={"wait": wait_s} if wait_s else None,
                node_bounded=wait_s > 0)


def job_outcome(job: dict[str, Any]) -> Any:
    """A finished job's result, or its error raised as the exception for its code."""
    if job["status"] == "succeeded":
        return job["result"]
    error = job.get("error") or {}
    code, status = str(error.get("code") or "internal"), int(job.get("result_status") or 500)
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    raise error_for(code, status)(str(error.get("message") or "the job failed"), code=code, status=status,
                                  request_id=job["id"], details=details)


def is_job(response_json: Any) -> bool:
    """Whether a reply is a job to follow (a 202 body)."""
    return isinstance(response_json, dict) and str(response_json.get("id", "")).startswith("job_") \
        and "status" in response_json


# -- state -----------------------------------------------------------------------


def kv_get(ns: str, key: str) -> Call[bytes | None]:
    """``GET /v1/kv/{ns}/{key}``: the value, or None when the key is absent."""
    return Call("GET", f"/v1/kv/{seg(ns)}/{wpath(key)}", lambda r: None if r.status_code == 404 else r.content,
                accept=frozenset({404}))


def kv_put(ns: str, key: str, value: bytes | str, if_match: str | None, create_only: bool) -> Call[str]:
    """``PUT /v1/kv/{ns}/{key}``: the new version."""
    headers = {"content-type": "application/octet-stream"}
    if if_match is not None:
        headers["if-match"] = "*" if if_match == "*" else f'"{if_match}"'
    if create_only:
        headers["if-none-match"] = "*"
    content = value.encode() if isinstance(value, str) else bytes(value)
    return Call("PUT", f"/v1/kv/{seg(ns)}/{wpath(key)}", _key("version"), content=content, headers=headers)


def kv_delete(ns: str, key: str) -> Call[None]:
    """``DELETE /v1/kv/{ns}/{key}``."""
    return Call("DELETE", f"/v1/kv/{seg(ns)}/{wpath(key)}", _none)


def kv_list(ns: str, prefix: str, cursor: str | None, limit: int) -> Call[dict[str, Any]]:
    """``GET /v1/kv/{ns}``: one page, ``{"keys", "cursor"}``."""
    return Call("GET", f"/v1/kv/{seg(ns)}", _dict, params=compact({"prefix": prefix, "cursor": cursor,
                                                                   "limit": limit}))


def sql(ns: str, query: str, params: list[Any] | dict[str, Any] | None) -> Call[SqlResult]:
    """``POST /v1/sql/{ns}``."""
    return Call("POST", f"/v1/sql/{seg(ns)}", lambda r: SqlResult.from_json(_dict(r)),
                json=compact({"sql": query, "params": params}))


# -- agents ----------------------------------------------------------------------


def agent_deploy(name: str, files: dict[str, str], entry: str | None,
                 allowed_hosts: list[str] | None) -> Call[dict[str, Any]]:
    """``PUT /v1/agents/{name}``."""
    return Call("PUT", f"/v1/agents/{seg(name)}", _dict,
                json=compact({"files": files, "entry": entry, "allowed_hosts": allowed_hosts}))


def agent_list() -> Call[list[dict[str, Any]]]:
    """``GET /v1/agents``."""
    return Call("GET", "/v1/agents", _key("agents"))


def agent_start(name: str, input: Any, run_id: str | None, version: int | None) -> Call[dict[str, Any]]:
    """``POST /v1/agents/{name}/runs``."""
    body = {"input": input, **compact({"id": run_id, "version": version})}
    return Call("POST", f"/v1/agents/{seg(name)}/runs", _dict, json=body)


def run_get(run_id: str) -> Call[dict[str, Any]]:
    """``GET /v1/agents/runs/{id}``."""
    return Call("GET", f"/v1/agents/runs/{seg(run_id)}", _dict)


def run_history(run_id: str) -> Call[dict[str, Any]]:
    """``GET /v1/agents/runs/{id}/history``: the run, its journal and events."""
    return Call("GET", f"/v1/agents/runs/{seg(run_id)}/history", _dict)


def run_events(run_id: str, after: str | None) -> Call[None]:
    """``GET /v1/agents/runs/{id}/events``: server-sent events, resumed after event id ``after``."""
    headers = {"accept": "text/event-stream", **({"last-event-id": after} if after else {})}
    return Call("GET", f"/v1/agents/runs/{seg(run_id)}/events", lambda r: None, headers=headers, node_bounded=True)


def run_restart(run_id: str, from_step: int, new_id: str | None, version: int | None) -> Call[dict[str, Any]]:
    """``POST /v1/agents/runs/{id}/restart``: a new run replaying the journal before ``from_step``."""
    body = {"from_step": from_step, **compact({"id": new_id, "version": version})}
    return Call("POST", f"/v1/agents/runs/{seg(run_id)}/restart", _dict, json=body)


class RunEventParser:
    """A run's server-sent events from lines: ``feed`` each line, get a ``RunEvent`` when one is complete."""

    def __init__(self) -> None:
        self.id = ""
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> RunEvent | None:
        """Take one line (without its end); the event it completes, if any (comments are keep-alives)."""
        if line == "":
            if not self.data:
                return None
            event = RunEvent(self.event, _json.loads("\n".join(self.data)), self.id)
            self.event, self.data = "message", []
            return event
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self.id = value
        elif name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def run_control(run_id: str, action: str, body: dict[str, Any] | None = None) -> Call[dict[str, Any]]:
    """``POST /v1/agents/runs/{id}/{approve|reject|pause|resume|cancel|terminate|events}``."""
    return Call("POST", f"/v1/agents/runs/{seg(run_id)}/{action}", _dict, json=body or {})


__all__ = ["Call", "SseParser", "deploy_files", "files_from_path"]


def next_delay(delay: float) -> float:
    """The next polling interval: doubling from 50 ms up to one second."""
    return min(1.0, max(0.05, delay * 2))


DEFAULT_URL = "http://127.0.0.1:8787"


def base_url(url: str | None) -> str:
    """``url``, else ``$EDGENODE_URL``, else a local node's default address."""
    import os

    return (url or os.environ.get("EDGENODE_URL") or DEFAULT_URL).rstrip("/")


def auth_headers(token: str | None, tenant: str | None) -> dict[str, str]:
    """The headers every request carries: the bearer token (``token`` or ``$EDGENODE_TOKEN``), the tenant."""
    import os

    from edgenode import __version__

    headers = {"user-agent": f"edgenode-client/{__version__}"}
    token = token or os.environ.get("EDGENODE_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    if tenant:
        headers["x-edgenode-tenant"] = tenant
    return headers


def awaiting_approval(run: dict[str, Any]) -> bool:
    """Whether a run (as JSON) waits for a human decision."""
    waiting = run.get("waiting") or {}
    return run.get("status") in ("waiting", "paused") and waiting.get("kind") == "approval"
