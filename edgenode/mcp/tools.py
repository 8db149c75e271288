"""What each MCP tool does: the node's capability methods, called for the caller's principal.

Every function here takes the node and the authenticated principal and returns JSON-ready
data, or raises an ``edgenode.errors`` type, exactly as the HTTP routes do; ``server.py``
turns both into MCP tool results. Nothing here loops back over HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import stat
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from edgenode.api.workers import _usage, _with_context
from edgenode.artifacts import history
from edgenode.auth import Principal
from edgenode.errors import Conflict, PayloadTooLarge, Unavailable, ValidationFailed
from edgenode.isolates import GuestRequest
from edgenode.sandboxes import parse_exec

# The same usage shape and error context (logs, usage) POST /v1/run answers with.
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.node import Node

#: Files a tool reads inline (sandbox or repository) are at most this large; use the HTTP API beyond.
MAX_INLINE_BYTES = 1024 * 1024


def _capability(node: Node, name: str) -> Any:
    cap = getattr(node, name, None)
    if cap is None:
        raise Unavailable(f"this node has no {name} capability")
    return cap


def _content(data: bytes) -> dict[str, Any]:
    """File content as text when it is UTF-8, else as base64."""
    try:
        return {"text": data.decode(), "size": len(data)}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode(), "size": len(data)}


# -- code mode -------------------------------------------------------------------


async def run_code(node: Node, who: Principal, code: str, input: Any = None,
                   limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``code`` once in a fresh isolate (``main(input)`` or ``handle(request)``), as ``POST /v1/run``."""
    workers = node.workers
    settings = workers.parse_settings({"limits": limits, "public": False})
    payload = b"" if input is None else json.dumps(input).encode()
    request = GuestRequest("POST", "/", [], [("content-type", "application/json")], payload)
    outcome = await workers.run_once(who.tenant, {"main.py": code}, request, settings)
    if outcome.error is not None:
        raise _with_context(outcome, public=False)
    assert outcome.response is not None
    out = outcome.response
    reply: dict[str, Any] = {"status": out.status, **_content(out.body)}
    reply.pop("size")
    if dict(out.headers).get("content-type", "").startswith("application/json") and "text" in reply:
        try:
            reply["json"] = json.loads(reply["text"]) if reply["text"] else None
        except ValueError:
            pass
    reply.update({"logs": outcome.logs, "output": outcome.output, "usage": _usage(outcome)})
    return reply


# -- sandboxes -------------------------------------------------------------------


async def sandbox_create(node: Node, who: Principal, name: str | None = None, network: Any = None,
                         limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a sandbox, as ``POST /v1/sandboxes``."""
    data: dict[str, Any] = {"name": name, "limits": limits}
    if network is not None:
        data["network"] = network
    result: dict[str, Any] = await _capability(node, "sandboxes").create(
        who, {k: v for k, v in data.items() if v is not None})
    return result


async def sandbox_exec(node: Node, who: Principal, sandbox: str, cmd: str | list[str], cwd: str | None = None,
                       stdin: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Run a command to its end, as ``POST /v1/sandboxes/{id}/exec``."""
    data = {"cmd": cmd, "cwd": cwd, "stdin": stdin, "timeout_s": timeout_s}
    spec = parse_exec({k: v for k, v in data.items() if v is not None},
                      max_stdin=node.config.http.max_body_bytes)
    execution = await _capability(node, "sandboxes").exec(who, sandbox, spec)
    result: dict[str, Any] = await execution.collect()
    return result


async def sandbox_write_file(node: Node, who: Principal, sandbox: str, path: str, text: str | None = None,
                             base64_data: str | None = None) -> dict[str, Any]:
    """Write a file (text, or bytes as base64), creating its parent directories."""
    if (text is None) == (base64_data is None):
        raise ValidationFailed("give exactly one of 'text' and 'base64'", field="text")
    if text is not None:
        data = text.encode()
    else:
        try:
            data = base64.b64decode(base64_data or "", validate=True)
        except ValueError as exc:
            raise ValidationFailed(f"base64 is not valid base64: {exc}", field="base64") from None
    sandboxes = _capability(node, "sandboxes")
    parent = posixpath.dirname(path.strip("/"))
    if parent:
        workspace, _ = await sandboxes.workspace(who, sandbox)
        await FILES.run(workspace.mkdir, parent, parents=True)

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    size: int = await sandboxes.write_file(who, sandbox, path, chunks(), declared=len(data))
    return {"path": path, "size": size}


async def sandbox_read_file(node: Node, who: Principal, sandbox: str, path: str) -> dict[str, Any]:
    """A file's content (text or base64, at most 1 MiB), or a directory's entries."""
    workspace, _ = await _capability(node, "sandboxes").workspace(who, sandbox)
    return await FILES.run(_read_workspace, workspace, path)


def _read_workspace(workspace: Any, path: str) -> dict[str, Any]:
    # O_NONBLOCK: a FIFO planted in the workspace must not hang a node thread (as the route does).
    fd = workspace.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return {"path": path, "type": "directory", "entries": workspace.list(path)}
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{path!r} is not a regular file or directory")
        if st.st_size > MAX_INLINE_BYTES:
            raise PayloadTooLarge(f"{path!r} is larger than {MAX_INLINE_BYTES} bytes; read it over HTTP",
                                  limit=MAX_INLINE_BYTES)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return {"path": path, "type": "file", **_content(b"".join(chunks)[:MAX_INLINE_BYTES])}
    finally:
        os.close(fd)


# -- repositories ----------------------------------------------------------------


async def repo_create(node: Node, who: Principal, name: str, default_branch: str = "main") -> dict[str, Any]:
    """Create an empty repository, as ``POST /v1/repos``."""
    from edgenode.artifacts.repos import validate_repo_name

    artifacts = _capability(node, "artifacts")
    info = await artifacts.create(who.tenant, validate_repo_name(name), default_branch=default_branch)
    result: dict[str, Any] = await artifacts.describe(who.tenant, info.name)
    return result


async def repo_commit(node: Node, who: Principal, repo: str, branch: str, message: str,
                      files: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    """Commit files (``path: text``, ``{"base64"}`` or ``null`` to delete), as ``POST /v1/repos/{name}/commits``."""
    result: dict[str, Any] = await _capability(node, "artifacts").commit(
        who.tenant, repo, branch=branch, message=message, author=None, files=files, parent=parent)
    return result


async def repo_read_file(node: Node, who: Principal, repo: str, path: str, ref: str | None = None) -> dict[str, Any]:
    """A file at ``ref`` (default: the default branch), as text or base64."""
    artifacts = _capability(node, "artifacts")
    if not ref:
        ref = (await artifacts.get(who.tenant, repo)).default_branch
    data: bytes = await artifacts.read(who.tenant, repo, history.blob, ref, path)
    if len(data) > MAX_INLINE_BYTES:
        raise PayloadTooLarge(f"{path!r} is larger than {MAX_INLINE_BYTES} bytes; read it over HTTP",
                              limit=MAX_INLINE_BYTES)
    return {"repo": repo, "ref": ref, "path": path, **_content(data)}


async def repo_refs(node: Node, who: Principal, repo: str) -> dict[str, Any]:
    """Every ref of the repository and HEAD, as ``GET /v1/repos/{name}/refs``."""
    result: dict[str, Any] = await _capability(node, "artifacts").read(who.tenant, repo, history.refs)
    return result


# -- agent runs ------------------------------------------------------------------


async def agent_start(node: Node, who: Principal, agent: str, input: Any = None,
                      id: str | None = None) -> dict[str, Any]:
    """Start a run (``id`` makes the start idempotent), as ``POST /v1/agents/{name}/runs``."""
    run, created = await _capability(node, "agents").start_run(who.tenant, agent, input, run_id=id)
    return {**run, "created": created}


async def agent_run_status(node: Node, who: Principal, run_id: str) -> dict[str, Any]:
    """A run's status, output or error, and what it waits for."""
    result: dict[str, Any] = await _capability(node, "agents").get_run(who, run_id)
    return result


async def agent_decide(node: Node, who: Principal, run_id: str, approved: bool, comment: str = "") -> dict[str, Any]:
    """Approve or reject the approval a run waits for."""
    from edgenode.agents import controls

    result: dict[str, Any] = await controls.decide(_capability(node, "agents"), who, run_id, approved, comment)
    return result
