"""Sandbox routes: create, inspect, destroy, exec (JSON or server-sent events), files, processes."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json as _json
import os
import signal as _signal
import stat
from collections.abc import AsyncIterator, Coroutine
from json.encoder import encode_basestring as _json_text
from json.encoder import encode_basestring_ascii as _json_string
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import httpcore
from pydantic import Field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from edgenode.api.common import TENANT_HEADER, admin, json, node_of, principal
from edgenode.api.parsing import INT_MAX, PATH_MAX, check_path, dumps, parse_json, query_bool, query_int, query_str
from edgenode.api.schema import Base64, Body, NoNul, Raw, Reply, Stream, operation, read_model, read_validated
from edgenode.auth import Principal
from edgenode.errors import Conflict, EdgenodeError, SandboxPortUnreachable, ValidationFailed
from edgenode.sandboxes import Sandboxes, parse_exec
from edgenode.sandboxes.execution import Execution
from edgenode.sandboxes.ports import _Stream as _PortStream
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.node import Node

T = TypeVar("T")
#: Public sandbox ports check nothing but the port's own ``public`` flag (and the node's setting).
public = ("/sp/",)
READ_CHUNK = 256 * 1024
#: Bytes of server-sent events gathered into one write.
SSE_WRITE_BYTES = 64 * 1024
_PARTIAL = ',"partial":true'
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_SIGNALS = {"HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT"}


# -- models ------------------------------------------------------------------------

FilePath = Annotated[str, Field(pattern="^[^\\x00]*$", max_length=PATH_MAX)]
#: A sandbox's or an image's name.
SandboxName = Annotated[str, Field(pattern="^[a-z0-9][a-z0-9_.-]{0,62}$")]
ImageName = SandboxName
EnvName = Annotated[str, Field(pattern="^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Host = Annotated[str, Field(pattern="^(?:node|(?:\\*\\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                                    "(?:\\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::[1-9][0-9]{0,4})?)$")]


class NetworkAllow(Body, extra="forbid"):
    """Hosts a sandbox may reach through its egress proxy (``node`` for this node's own API)."""

    allow: list[Host] = Field([], max_length=256)


class SandboxLimits(Body, extra="forbid"):
    """Limits, each at most the node's maximum (defaults: the node's)."""

    memory_mb: int | None = Field(None, ge=64, le=INT_MAX)
    pids: int | None = Field(None, ge=8, le=INT_MAX)
    cpu_s: int | None = Field(None, ge=1, le=INT_MAX)
    timeout_s: int | None = Field(None, ge=1, le=INT_MAX)
    disk_mb: int | None = Field(None, ge=1, le=INT_MAX)
    open_files: int | None = Field(None, ge=32, le=INT_MAX)


class CreateSandbox(Body, extra="forbid"):
    """A new sandbox: a name, its network policy and limits; or one restored from its fleet checkpoint."""

    name: str | None = Field(None, pattern="^(?!sb_)[a-z0-9][a-z0-9_.-]{0,62}$")
    network: Literal["none"] | NetworkAllow | None = None
    limits: SandboxLimits | None = None
    image: ImageName | None = Field(None, description="A sandbox image (GET /v1/sandbox-images); default the node's")
    checkpoint: Annotated[str, Field(min_length=1, max_length=255, pattern="^[a-z0-9][a-z0-9_.-]*$")] | None = Field(
        None, description="Restore this sandbox (its id or name) of the tenant from its latest checkpoint in the "
                          "fleet, with its id, name, network, limits and image; alone, without the other fields. "
                          "Files come back, processes do not.")


class Sandbox(Reply):
    """A sandbox: its state, limits and use."""

    id: str
    state: str


class SandboxList(Reply):
    """The caller's sandboxes."""

    sandboxes: list[Sandbox]


class Exec(Body, extra="forbid"):
    """A command: a shell string or argv, or Python source (``code``, not with ``cmd``), with its directory,
    variables, input and bounds."""

    requires_one_of = ("cmd", "code")

    cmd: (Annotated[str, Field(pattern="^[^\\x00]*[^\\s\\x00][^\\x00]*$")]
          | Annotated[list[NoNul], Field(min_length=1)] | None) = None
    code: NoNul | None = Field(None, description="Python source, run as python3 -c would (not with cmd)")
    cwd: NoNul | None = None
    env: dict[EnvName, NoNul] | None = None
    stdin: str | None = None
    stdin_b64: Base64 | None = None
    timeout_s: float | None = Field(None, gt=0)
    max_output_bytes: int | None = Field(None, gt=0, le=INT_MAX)
    session: NoNul | None = Field(None, description="A session's id: its cwd and env are the defaults")


class ExecResult(Reply):
    """How a command ended, with its output."""

    exit_code: int | None
    signal: int | None
    duration_ms: float
    timed_out: bool
    truncated: dict[str, bool]
    stopped_by: str | None = None
    error: str | None = None
    memory_limit_hit: bool = Field(False, description="a process of the sandbox was killed at its memory limit "
                                   "while this ran (per-sandbox cgroups only)")
    oom_kills: int = 0
    stdout: str
    stderr: str


class ExecLine(Reply):
    """One line of output (event ``stdout`` or ``stderr``); the last event, ``exit``, is an ExecResult without
    the output."""

    line: str
    partial: bool = False


class Listing(Reply):
    """A directory's entries."""

    path: str
    type: Literal["directory"]
    entries: list[dict[str, Any]]


class Written(Reply):
    """A file written."""

    path: str
    size: int


class Mkdir(Body):
    """A directory to create."""

    path: FilePath
    parents: bool = True


class Made(Reply):
    """The directory made."""

    path: str


class Move(Body):
    """A rename."""

    from_: FilePath = Field(alias="from")
    to: FilePath
    overwrite: bool = False


class Moved(Reply):
    """The rename done."""

    from_: str = Field(alias="from")
    to: str


class Process(Reply):
    """A background process."""


class ProcessList(Reply):
    """Background processes."""

    processes: list[dict[str, Any]]


_SIGNAL_NAMES = "|".join(sorted(_SIGNALS))


class Signal(Body):
    """A signal, by number or name (``TERM``, ``SIGTERM``; any case)."""

    signal: Annotated[int, Field(ge=1, le=64)] | Annotated[str, Field(pattern=f"^(?i:(?:sig)?(?:{_SIGNAL_NAMES}))$")] \
        = "TERM"


_ID = {"id": Annotated[str, Field(min_length=1, max_length=255)]}
_PROC = {**_ID, "pid": Annotated[str, Field(pattern="^[0-9]{1,18}$")]}
_FILE = {**_ID, "path": str}


def _sandboxes(request: Request) -> Sandboxes:
    caps: Sandboxes = node_of(request).sandboxes
    return caps


def _wants_events(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


@operation(body=CreateSandbox, responses={201: Sandbox}, errors=(400, 404, 409, 413, 422, 429, 503))
async def create(request: Request) -> Response:
    """Create a sandbox: ``{"name"?, "network": "none" | {"allow": [...]}, "limits": {...}}``, or restore one:
    ``{"checkpoint": id or name}``."""
    _, data = await read_validated(request, CreateSandbox)
    return json(await _sandboxes(request).create(principal(request), data), status=201)


@operation(responses={200: SandboxList})
async def list_sandboxes(request: Request) -> Response:
    """The caller's sandboxes."""
    return json({"sandboxes": await _sandboxes(request).list_sandboxes(principal(request))})


@operation(responses={200: Sandbox}, errors=(404,), path=_ID)
async def get(request: Request) -> Response:
    """One sandbox, with its state, limits, disk use and egress counters."""
    return json(await _sandboxes(request).get(principal(request), request.path_params["id"]))


@operation(responses={204: None}, errors=(404,), path=_ID)
async def delete(request: Request) -> Response:
    """Destroy a sandbox and its workspace."""
    await _sandboxes(request).delete(principal(request), request.path_params["id"])
    return Response(status_code=204)


@operation(responses={204: None}, errors=(404,), path=_ID)
async def release(request: Request) -> Response:
    """Release the sandbox's processes now; files stay."""
    await _sandboxes(request).release(principal(request), request.path_params["id"])
    return Response(status_code=204)


async def _spec(request: Request) -> Any:
    _, data = await read_validated(request, Exec)
    return parse_exec(data, max_stdin=node_of(request).config.http.max_body_bytes)


@operation(body=Exec, responses={200: (ExecResult, Stream("text/event-stream", "sse", ExecLine,
                                                           "with Accept: text/event-stream"))},
           errors=(400, 404, 409), path=_ID)
async def exec_command(request: Request) -> Response:
    """Run a command; JSON result, or with ``Accept: text/event-stream`` its output line by line."""
    spec = await _spec(request)
    execution = await _sandboxes(request).exec(principal(request), request.path_params["id"], spec)
    if not _wants_events(request):
        chunks = await _unless_client_leaves(request, execution.collect_chunks())
        assert execution.result is not None
        pieces = await _result_json(execution.result.as_dict(), chunks)
        return StreamingResponse(_pieces(pieces), media_type="application/json",
                                 headers={"content-length": str(sum(map(len, pieces)))})
    return StreamingResponse(_events(execution), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _result_json(fields: dict[str, Any], chunks: dict[str, list[bytes]]) -> list[bytes]:
    """``fields`` plus ``stdout`` and ``stderr`` as one JSON object, as ``json()`` would write it, in pieces.

    Output may be many megabytes: it is decoded and escaped chunk by chunk, with a turn of
    the event loop between chunks, rather than in one call that holds the loop.
    """
    assert fields, "an exec result always has its exit fields"
    # The object without its closing brace, then each stream's text as a string member.
    pieces = [_json.dumps(fields, separators=(",", ":"), ensure_ascii=False, default=str)[:-1].encode()]
    for name in ("stdout", "stderr"):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces.append(f',"{name}":"'.encode())
        for chunk in [*chunks[name], b""]:
            text = decoder.decode(chunk, final=not chunk)
            if text:
                pieces.append(_json_text(text)[1:-1].encode())
                await asyncio.sleep(0)
        pieces.append(b'"')
    pieces.append(b"}")
    return pieces


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client goes away first (then ClientDisconnect).

    A cancelled exec stops its command's process group, as a closed event stream does.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (its body is already read: only the disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(execution: Execution) -> AsyncIterator[bytes]:
    """The exec's lines as server-sent events, written in pieces of at most about ``SSE_WRITE_BYTES``.

    One write per piece rather than per line, and a turn of the event loop between pieces:
    a command printing many megabytes of short lines must not starve other requests.
    """
    async for batch in execution.lines():
        piece: list[str] = []
        size = 0
        for stream, line, partial in batch:
            # The same JSON as _sse() gives, built without a json.dumps per line (10 times the cost).
            event = f'event: {stream}\ndata: {{"line":{_json_string(line)}{_PARTIAL if partial else ""}}}\n\n'
            piece.append(event)
            size += len(event)
            if size >= SSE_WRITE_BYTES:
                yield "".join(piece).encode()
                piece, size = [], 0
                await asyncio.sleep(0)
        if piece:
            yield "".join(piece).encode()
        await asyncio.sleep(0)
    assert execution.result is not None
    yield _sse("exit", execution.result.as_dict())


# -- files ---------------------------------------------------------------------


@operation(responses={200: (Listing, Raw())}, errors=(400, 404, 409), path=_FILE)
async def read_file(request: Request) -> Response:
    """A file's bytes (streamed), or a directory's entries as JSON."""
    path = request.path_params.get("path", "")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    # O_NONBLOCK: opening a FIFO planted in the workspace must not hang a node thread.
    fd = await FILES.run(ws.open, path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            entries = await FILES.run(ws.list, path)
            os.close(fd)
            return json({"path": path, "type": "directory", "entries": entries})
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{path!r} is not a regular file or directory")
    except BaseException:
        os.close(fd)
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await FILES.run(os.read, fd, READ_CHUNK):
                yield chunk
        finally:
            os.close(fd)

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"content-length": str(st.st_size)})


@operation(body=Raw(), body_required=False, responses={201: Written}, errors=(400, 404, 409, 413), path=_FILE)
async def write_file(request: Request) -> Response:
    """Write a file from the request body, streamed; parents must exist (see mkdir)."""
    path = request.path_params.get("path", "")
    declared = request.headers.get("content-length", "")
    size = await _sandboxes(request).write_file(principal(request), request.path_params["id"], path,
                                                request.stream(),
                                                declared=int(declared) if declared.isascii() and declared.isdigit()
                                                else None)
    return json({"path": path, "size": size}, status=201)


@operation(responses={204: None}, errors=(400, 404, 409), path=_FILE, query={"recursive": bool | None})
async def delete_file(request: Request) -> Response:
    """Delete a file or directory (``?recursive=true`` for a non-empty one)."""
    path = request.path_params.get("path", "")
    recursive = query_bool(request, "recursive")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    await FILES.run(ws.delete, path, recursive=recursive)
    return Response(status_code=204)


@operation(body=Mkdir, responses={201: Made}, errors=(400, 404, 409), path=_ID)
async def mkdir(request: Request) -> Response:
    """Create a directory: ``{"path", "parents": true}``."""
    body = await read_model(request, Mkdir)
    path = check_path(body.path, "path")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    await FILES.run(ws.mkdir, path, parents=body.parents)
    return json({"path": path}, status=201)


@operation(body=Move, responses={200: Moved}, errors=(400, 404, 409), path=_ID)
async def move(request: Request) -> Response:
    """Rename a file or directory: ``{"from", "to", "overwrite": false}``."""
    body = await read_model(request, Move)
    source, destination = check_path(body.from_, "from"), check_path(body.to, "to")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    await FILES.run(ws.move, source, destination, overwrite=body.overwrite)
    return json({"from": source, "to": destination})


# -- background processes -------------------------------------------------------


def _proc_id(request: Request) -> int:
    raw = request.path_params["pid"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) > INT_MAX:
        raise ValidationFailed("process id must be a number", field="pid")
    return int(raw)


@operation(body=Exec, responses={201: Process}, errors=(400, 404, 409), path=_ID)
async def start_process(request: Request) -> Response:
    """Start a background process: the same body as exec; output goes to its log."""
    spec = await _spec(request)
    proc = await _sandboxes(request).start_process(principal(request), request.path_params["id"], spec)
    return json(proc, status=201)


@operation(responses={200: ProcessList}, errors=(404,), path=_ID)
async def list_processes(request: Request) -> Response:
    """Background processes started since the sandbox's processes last started."""
    procs = await _sandboxes(request).list_processes(principal(request), request.path_params["id"])
    return json({"processes": procs})


@operation(responses={200: Process}, errors=(400, 404), path=_PROC)
async def get_process(request: Request) -> Response:
    """One background process."""
    proc = await _sandboxes(request).get_process(principal(request), request.path_params["id"], _proc_id(request))
    return json(proc.as_dict())


@operation(responses={200: Stream("text/plain", "text", description="until the process exits with ?follow=true")},
           errors=(400, 404), path=_PROC,
           query={"follow": bool | None, "offset": Annotated[int, Field(ge=0, le=INT_MAX)] | None})
async def process_logs(request: Request) -> Response:
    """A process's output; ``?follow=true`` streams until it exits; ``?offset=N`` skips bytes."""
    follow = query_bool(request, "follow")
    offset = query_int(request, "offset", 0, lo=0, hi=INT_MAX)
    logs = await _sandboxes(request).process_logs(principal(request), request.path_params["id"], _proc_id(request),
                                                  follow=follow, offset=offset)
    return StreamingResponse(logs, media_type="text/plain; charset=utf-8")


def _parse_signal(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65:
        return value
    if isinstance(value, str):
        name = value.upper().removeprefix("SIG")
        if name in _SIGNALS:
            return int(getattr(_signal, "SIG" + name))
    raise ValidationFailed(f"unknown signal {value!r}; use a number or one of {', '.join(sorted(_SIGNALS))}",
                           field="signal")


@operation(body=Signal, responses={200: Process}, errors=(400, 404, 409), path=_PROC)
async def signal_process(request: Request) -> Response:
    """Send a signal to a process's group: ``{"signal": "TERM"}``."""
    body = await read_model(request, Signal)
    sig = _parse_signal(body.signal)
    proc = await _sandboxes(request).signal_process(principal(request), request.path_params["id"],
                                                    _proc_id(request), sig)
    return json(proc)


@operation(responses={200: Process}, errors=(400, 404, 409), path=_PROC)
async def kill_process(request: Request) -> Response:
    """Kill a process's group (SIGKILL)."""
    proc = await _sandboxes(request).signal_process(principal(request), request.path_params["id"],
                                                    _proc_id(request), int(_signal.SIGKILL))
    return json(proc)


# -- forks -------------------------------------------------------------------------


class ForkRequest(Body, extra="forbid"):
    """``POST /v1/sandboxes/{id}/fork``: the new sandbox's optional name."""

    name: SandboxName | None = Field(None, description="Unique per tenant.")


class ForkResponse(Reply):
    """The new sandbox (as ``GET /v1/sandboxes/{id}`` shows it) and how it was made."""

    id: str
    name: str | None
    state: str
    forked_from: str = Field(description="The source sandbox's id.")
    source_released: bool = Field(description="Whether the source's processes had to be released "
                                              "(it had written since it was last frozen).")
    fork_ms: float = Field(description="Time the node took to make the fork, in ms.")


@operation(body=ForkRequest, body_required=False, responses={201: ForkResponse}, errors=(400, 404, 409, 429),
           path=_ID)
async def fork(request: Request) -> Response:
    """Fork a sandbox: a new one whose workspace is a copy-on-write copy of this one's."""
    _, data = await read_validated(request, ForkRequest, optional=True)  # uniqueness by the capability
    body = await _sandboxes(request).fork(principal(request), request.path_params["id"], data)
    return json(body, status=201)


# -- checkpoints --------------------------------------------------------------------


class CheckpointInfo(Reply):
    """A sandbox's latest checkpoint in the fleet."""

    sandbox: str = Field(description="The sandbox's id (kept when it is restored).")
    name: str | None
    manifest: str = Field(description="The SHA-256 naming the manifest's blob in the fleet.")
    files: int | None
    entries: int | None = Field(description="Files, directories and symlinks.")
    bytes: int | None = Field(description="Bytes of file content.")
    checkpointed_at: float
    node: str | None = Field(description="The node that made it.")


class CheckpointMade(CheckpointInfo):
    """A checkpoint just made, and what it cost."""

    uploaded_bytes: int = Field(description="Bytes sent to the fleet (content it did not hold yet, and the manifest).")
    reused_bytes: int = Field(description="Bytes of files the fleet held already (unchanged or shared content).")
    hashed_files: int = Field(description="Files read and hashed (the others were unchanged since the last one).")
    skipped: list[str] = Field(description="Sockets, FIFOs and devices, which are not checkpointed.")
    duration_ms: float


@operation(responses={201: CheckpointMade}, errors=(404, 409, 413, 422, 503), path=_ID)
async def make_checkpoint(request: Request) -> Response:
    """Checkpoint the sandbox's workspace into the fleet now (files only; processes are not checkpointed)."""
    body = await _sandboxes(request).checkpoint(principal(request), request.path_params["id"])
    return json(body, status=201)


@operation(responses={200: CheckpointInfo}, errors=(404, 409), path=_ID)
async def get_checkpoint(request: Request) -> Response:
    """The sandbox's latest checkpoint in the fleet (on any node, whether or not the sandbox is here)."""
    return json(await _sandboxes(request).checkpoints.describe(principal(request), request.path_params["id"]))


@operation(responses={204: None}, errors=(404, 409), path=_ID)
async def delete_checkpoint(request: Request) -> Response:
    """Forget the sandbox's checkpoint fleet-wide (the sandbox itself, where it is, stays)."""
    await _sandboxes(request).checkpoints.delete(principal(request), request.path_params["id"])
    return Response(status_code=204)


# -- exposed ports ------------------------------------------------------------------


class ExposePortRequest(Body, extra="forbid"):
    """``POST /v1/sandboxes/{id}/ports``: a TCP port a server in the sandbox listens on (127.0.0.1)."""

    port: int = Field(ge=1, le=65535)
    public: bool = Field(False, description="Reachable without a token under /sp/ (needs sandboxes.public_ports).")


class ExposedPort(Reply):
    """An exposed port and where the node serves it."""

    port: int
    public: bool
    path: str = Field(description="Path on the node, with the owner's token: HTTP and WebSocket.")
    url: str
    public_path: str | None = None
    public_url: str | None = None
    host_url: str | None = Field(None, description="The port's own origin, PORT-ID.NAME (with sandboxes.ports_host).")


class ExposedPorts(Reply):
    """``GET /v1/sandboxes/{id}/ports``."""

    ports: list[ExposedPort]


def _port(raw: Any) -> int:
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit()):
            raise ValidationFailed("port must be a number from 1 to 65535", field="port")
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise ValidationFailed("port must be a number from 1 to 65535", field="port")
    return raw


_PORT = {**_ID, "port": Annotated[int, Field(ge=1, le=65535)]}


@operation(body=ExposePortRequest, responses={201: ExposedPort}, errors=(400, 403, 404, 409), path=_ID)
async def expose_port(request: Request) -> Response:
    """Expose a port: ``{"port", "public"?}``; answers its URL."""
    body = await read_model(request, ExposePortRequest)
    exposed = await _sandboxes(request).expose_port(principal(request), request.path_params["id"], body.port,
                                                    body.public)
    return json(exposed, status=201)


@operation(responses={200: ExposedPorts}, errors=(404,), path=_ID)
async def list_ports(request: Request) -> Response:
    """The sandbox's exposed ports."""
    return json({"ports": await _sandboxes(request).list_ports(principal(request), request.path_params["id"])})


@operation(responses={204: None}, errors=(400, 404), path=_PORT)
async def unexpose_port(request: Request) -> Response:
    """Stop serving a port."""
    await _sandboxes(request).unexpose_port(principal(request), request.path_params["id"],
                                            _port(request.path_params["port"]))
    return Response(status_code=204)


#: Request headers that stay at the node: the caller's credentials and hop-by-hop fields.
_PROXY_DROPPED = {"authorization", "cookie", TENANT_HEADER.lower(), "connection", "keep-alive", "te", "trailer",
                  "transfer-encoding", "upgrade", "proxy-authorization", "host"}
_RESPONSE_DROPPED = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}


async def _proxy(request: Request, caller: Principal | None) -> Response:
    from edgenode.api.workers import _PUBLIC_REFUSED, PUBLIC_CSP

    port = _port(request.path_params["port"])
    backend = await _sandboxes(request).port_backend(caller, request.path_params["id"], port)
    target = "/" + request.path_params.get("path", "")
    if request.url.query:
        target += "?" + request.url.query
    headers = [(k, v) for k, v in request.headers.items() if k not in _PROXY_DROPPED]
    headers.append(("host", f"127.0.0.1:{port}"))
    if "content-length" not in request.headers and request.method not in ("GET", "HEAD"):
        headers.append(("transfer-encoding", "chunked"))
    connection = httpcore.AsyncHTTPConnection(httpcore.Origin(b"http", b"127.0.0.1", port), network_backend=backend)
    body = request.stream() if request.method not in ("GET", "HEAD") else None
    exchange = connection.stream(request.method, f"http://127.0.0.1:{port}{target}", headers=headers,
                                 content=body, extensions={"timeout": {"connect": 10, "read": 300}})
    try:
        upstream = await exchange.__aenter__()
    except (httpcore.ConnectError, httpcore.ReadError, httpcore.RemoteProtocolError, httpcore.TimeoutException,
            OSError) as exc:
        await connection.aclose()
        raise SandboxPortUnreachable(f"port {port} in the sandbox did not answer: {type(exc).__name__}") from None
    except EdgenodeError:
        await connection.aclose()
        raise

    async def relay() -> AsyncIterator[bytes]:
        # Streamed, not read whole: the sandbox's server may answer more than the node's memory holds.
        try:
            async for chunk in upstream.aiter_stream():
                yield chunk
        except (httpcore.ReadError, httpcore.RemoteProtocolError, httpcore.TimeoutException, OSError):
            return  # the server went away mid-answer: the answer ends there
        finally:
            with contextlib.suppress(Exception):
                await exchange.__aexit__(None, None, None)
            await connection.aclose()

    refused = _RESPONSE_DROPPED | (_PUBLIC_REFUSED if caller is None else {"set-cookie", "set-cookie2"})
    response = StreamingResponse(relay(), status_code=upstream.status)
    for key, value in upstream.headers:
        if key.decode("latin-1").lower() not in refused:
            response.headers.append(key.decode("latin-1"), value.decode("latin-1"))
    if caller is None:
        response.headers["content-security-policy"] = PUBLIC_CSP
        response.headers["x-content-type-options"] = "nosniff"
    return response


async def proxy_port(request: Request) -> Response:
    """HTTP into an exposed port, with the owner's token."""
    return await _proxy(request, principal(request))


async def proxy_public_port(request: Request) -> Response:
    """HTTP into a public port: no token."""
    return await _proxy(request, None)


def _ws_node(websocket: WebSocket) -> Node:
    node: Node = websocket.app.state.node
    return node


def _ws_principal(websocket: WebSocket) -> Principal:
    """WebSockets pass by the HTTP middleware: the bearer token is checked here."""
    value = websocket.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    found: Principal = _ws_node(websocket).auth.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    return found.acting_for(websocket.headers.get(TENANT_HEADER) or None)


async def _ws_proxy(websocket: WebSocket, caller: Principal | None) -> None:
    import wsproto
    from wsproto import events as ws

    try:
        port = _port(websocket.path_params["port"])
        caps: Sandboxes = _ws_node(websocket).sandboxes
        backend = await caps.port_backend(caller, websocket.path_params["id"], port)
        stream = await backend.connect_tcp("127.0.0.1", port)
    except EdgenodeError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    assert isinstance(stream, _PortStream)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    target = "/" + websocket.path_params.get("path", "")
    if websocket.url.query:
        target += "?" + websocket.url.query
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await stream.write(client.send(ws.Request(host=f"127.0.0.1:{port}", target=target, subprotocols=protocols)))
    accepted = False
    while not accepted:
        data = await stream.reader.read(65536)
        if not data:
            await websocket.close(code=1011, reason="the sandbox's server closed the connection")
            return
        client.receive_data(data)
        for event in client.events():
            if isinstance(event, ws.AcceptConnection):
                accepted = True
                await websocket.accept(subprotocol=event.subprotocol)
            elif isinstance(event, ws.RejectConnection):
                await websocket.close(code=1011, reason="the sandbox's server refused the WebSocket")
                return

    async def inbound() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                await stream.write(client.send(ws.CloseConnection(code=1000)))
                return
            if message.get("bytes") is not None:
                await stream.write(client.send(ws.BytesMessage(data=message["bytes"])))
            elif message.get("text") is not None:
                await stream.write(client.send(ws.TextMessage(data=message["text"])))

    async def outbound() -> None:
        while data := await stream.reader.read(65536):
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, ws.TextMessage):
                    await websocket.send_text(event.data)
                elif isinstance(event, ws.BytesMessage):
                    await websocket.send_bytes(bytes(event.data))
                elif isinstance(event, ws.Ping):
                    await stream.write(client.send(event.response()))
                elif isinstance(event, ws.CloseConnection):
                    return

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stream.aclose()
        with contextlib.suppress(Exception):
            await websocket.close()


async def ws_port(websocket: WebSocket) -> None:
    """A WebSocket into an exposed port, with the owner's token."""
    try:
        caller = _ws_principal(websocket)
    except EdgenodeError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await _ws_proxy(websocket, caller)


async def ws_public_port(websocket: WebSocket) -> None:
    """A WebSocket into a public port: no token."""
    await _ws_proxy(websocket, None)


# -- images -------------------------------------------------------------------------


class ImageRequest(Body, extra="forbid"):
    """``POST /v1/sandbox-images`` (admins): a directory or tarball on the node's own file system."""

    name: ImageName
    path: FilePath = Field(description="Absolute path on the node: a root file system with usr/bin/python3.")


class ImageInfo(Reply):
    """A sandbox image; create a sandbox on it with ``{"image": name}``."""

    name: str
    source: str
    kind: str
    created_at: float


class ImageList(Reply):
    """The node's sandbox images."""

    images: list[ImageInfo]


@operation(body=ImageRequest, responses={201: ImageInfo}, errors=(400, 403, 404, 409))
async def add_image(request: Request) -> Response:
    """Make a sandbox image from a directory or tarball on the node (admins only)."""
    admin(request)
    body = await read_model(request, ImageRequest)
    return json(await _sandboxes(request).add_image(body.name, body.path), status=201)


@operation(responses={200: ImageList})
async def list_images(request: Request) -> Response:
    """The node's sandbox images (any tenant may list them, to name one)."""
    return json({"images": await _sandboxes(request).list_images()})


@operation(responses={204: None}, errors=(400, 403, 404, 409), path={"name": ImageName})
async def remove_image(request: Request) -> Response:
    """Remove an image no sandbox runs on (admins only)."""
    admin(request)
    await _sandboxes(request).remove_image(request.path_params["name"])
    return Response(status_code=204)


# -- git checkout -------------------------------------------------------------------


class GitCheckoutRequest(Body, extra="forbid"):
    """``POST /v1/sandboxes/{id}/git/checkout``: an http(s) URL, or this node's repository ([tenant/]name)."""

    url: NoNul
    branch: NoNul | None = None
    depth: int | None = Field(None, ge=1, le=INT_MAX)
    path: FilePath | None = Field(None, description="Where in the workspace; default the repository's name.")


class GitCheckoutResponse(Reply):
    """Where the checkout is and the commit checked out."""

    path: str
    commit: str
    branch: str | None
    depth: int | None
    duration_ms: float


@operation(body=GitCheckoutRequest, responses={201: GitCheckoutResponse}, errors=(400, 404, 409, 502), path=_ID)
async def git_checkout(request: Request) -> Response:
    """Clone a repository into the workspace in one call."""
    _, data = await read_validated(request, GitCheckoutRequest)  # the URL and path rules by the capability
    body = await _sandboxes(request).git_checkout(principal(request), request.path_params["id"], data)
    return json(body, status=201)


# -- file watch ---------------------------------------------------------------------


class WatchEvent(Reply):
    """One server-sent event of ``GET /v1/sandboxes/{id}/watch``: ``event:`` created, modified, deleted,
    moved (with ``from``) or overflow; ``ready`` first, once the watches are in place."""

    path: str
    is_dir: bool = False
    from_: str | None = Field(None, alias="from")


@operation(responses={200: Stream("text/event-stream", "sse", WatchEvent, "changes until the client leaves")},
           errors=(400, 404, 409), path=_ID, query={"path": FilePath | None, "recursive": bool | None})
async def watch(request: Request) -> Response:
    """Changes under ``?path=`` (default the workspace), ``?recursive=true`` for subdirectories, as events
    while ``?follow=true`` (until the client leaves); without it, only ``ready`` (the path can be watched),
    as a process log is read without ``follow``."""
    raw = query_str(request, "path") or ""
    path = check_path(raw, "path") if raw else ""
    recursive = query_bool(request, "recursive")
    follow = query_bool(request, "follow")
    watcher = await _sandboxes(request).watch(principal(request), request.path_params["id"], path,
                                              recursive=recursive)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield _sse("ready", {"path": watcher.base, "recursive": recursive, "directories": len(watcher.dirs),
                                 "truncated": watcher.truncated})
            while follow:
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), 15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if change is None:
                    return
                yield _sse(change.kind, change.as_dict())
        finally:
            watcher.close()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# -- sessions ------------------------------------------------------------------------


class SessionRequest(Body, extra="forbid"):
    """``POST /v1/sandboxes/{id}/sessions``: the defaults of the commands that name the session."""

    cwd: NoNul | None = Field(None, description="Relative to /workspace unless absolute.")
    env: dict[EnvName, NoNul] | None = None


class SessionResponse(Reply):
    """A session: pass ``"session": id`` to exec, processes or ``?session=`` to the terminal."""

    id: str
    cwd: str
    env: dict[str, str]


class SessionList(Reply):
    """The sandbox's sessions."""

    sessions: list[SessionResponse]


@operation(body=SessionRequest, body_required=False, responses={201: SessionResponse}, errors=(400, 404, 409),
           path=_ID)
async def create_session(request: Request) -> Response:
    """A session with its own cwd and env, sharing the sandbox's files."""
    _, data = await read_validated(request, SessionRequest, optional=True)
    body = await _sandboxes(request).create_session(principal(request), request.path_params["id"], data)
    return json(body, status=201)


@operation(responses={200: SessionList}, errors=(404,), path=_ID)
async def list_sessions(request: Request) -> Response:
    """The sandbox's sessions."""
    return json({"sessions": await _sandboxes(request).list_sessions(principal(request),
                                                                     request.path_params["id"])})


@operation(responses={204: None}, errors=(404,), path={**_ID, "session": Annotated[str, Field(min_length=1,
                                                                                            max_length=255)]})
async def delete_session(request: Request) -> Response:
    """Forget a session."""
    await _sandboxes(request).delete_session(principal(request), request.path_params["id"],
                                             request.path_params["session"])
    return Response(status_code=204)


# -- terminals -----------------------------------------------------------------------


class TerminalControl(Body, extra="forbid"):
    """A text message on ``GET /v1/sandboxes/{id}/pty`` (binary messages are keystrokes)."""

    resize: tuple[int, int] | None = Field(None, description="[rows, cols]")
    signal: str | int | None = Field(None, description="To the terminal's foreground process group.")
    input: str | None = Field(None, description="Keystrokes as text.")


class TerminalExit(Reply):
    """The last text message before the server closes: how the terminal's command ended."""

    exit: int | None
    signal: int | None


def _terminal_size(websocket: WebSocket, name: str, default: int) -> int:
    raw = websocket.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise ValidationFailed(f"query parameter {name!r} must be a number from 1 to 1000", field=name)
    return int(raw)


async def _control(runtime: Any, command: Any, text: str) -> None:
    data = parse_json(text)
    if not isinstance(data, dict) or set(data) - {"resize", "signal", "input"}:
        raise ValidationFailed("a control message is {\"resize\": [rows, cols]}, {\"signal\": name} or "
                               "{\"input\": text}", field="message")
    if data.get("resize") is not None:
        size = data["resize"]
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000 for v in size)):
            raise ValidationFailed("'resize' must be [rows, cols], each from 1 to 1000", field="resize")
        await runtime.guest.resize(command, size[0], size[1])
    if data.get("signal") is not None:
        await runtime.guest.signal(command, _parse_signal(data["signal"]), foreground=True)
    if data.get("input") is not None:
        await runtime.guest.input(command, str(data["input"]).encode())


async def terminal(websocket: WebSocket) -> None:
    """A command on a terminal over a WebSocket: ``?cmd=&cwd=&session=&rows=&cols=``; binary messages are
    keystrokes and output, text messages control it (``TerminalControl``); its exit comes last (``TerminalExit``)."""
    try:
        caller = _ws_principal(websocket)
        rows, cols = _terminal_size(websocket, "rows", 24), _terminal_size(websocket, "cols", 80)
        query = websocket.query_params
        body: dict[str, Any] = {"cmd": query.get("cmd") or "if command -v bash >/dev/null; then exec bash -i; "
                                                           "else exec sh -i; fi"}
        for name in ("cwd", "session"):
            if query.get(name):
                body[name] = query[name]
        caps: Sandboxes = _ws_node(websocket).sandboxes
        spec = await caps.resolve_session(caller, websocket.path_params["id"],
                                          parse_exec(body, max_stdin=0))
        runtime, command = await caps.terminal(caller, websocket.path_params["id"], spec, rows, cols)
    except EdgenodeError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await websocket.accept()

    async def outbound() -> None:
        while True:
            event = await command.events.get()
            if event.kind == "out":
                await websocket.send_bytes(event.data)
            elif event.kind == "failed":
                await websocket.send_text(_json.dumps({"error": event.message}))
            elif event.kind == "exit":
                await websocket.send_text(_json.dumps({"exit": event.code, "signal": event.signal}))
                return

    async def inbound() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await runtime.guest.input(command, message["bytes"])
            elif message.get("text") is not None:
                try:
                    await _control(runtime, command, message["text"])
                except EdgenodeError as exc:
                    await websocket.send_text(_json.dumps({"error": exc.message}))

    tasks = [asyncio.ensure_future(outbound()), asyncio.ensure_future(inbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not command.done.is_set():
            command.stopped_by = "client_disconnected"
            await runtime.guest.signal(command, _signal.SIGKILL)
        with contextlib.suppress(Exception):
            await websocket.close()


routes = [
    Route("/v1/sandboxes", create, methods=["POST"]),
    Route("/v1/sandboxes", list_sandboxes, methods=["GET"]),
    Route("/v1/sandboxes/{id}", get, methods=["GET"]),
    Route("/v1/sandboxes/{id}", delete, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/release", release, methods=["POST"]),
    Route("/v1/sandboxes/{id}/fork", fork, methods=["POST"]),
    Route("/v1/sandboxes/{id}/checkpoints", make_checkpoint, methods=["POST"]),
    Route("/v1/sandboxes/{id}/checkpoints", get_checkpoint, methods=["GET"]),
    Route("/v1/sandboxes/{id}/checkpoints", delete_checkpoint, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/ports", expose_port, methods=["POST"]),
    Route("/v1/sandboxes/{id}/ports", list_ports, methods=["GET"]),
    Route("/v1/sandboxes/{id}/ports/{port}", unexpose_port, methods=["DELETE"]),
    # Left out of the API's description: these pass any method, body and answer through to a server the
    # sandbox runs (its own API, not the node's), so no schema of the node's can say what they take or answer.
    Route("/v1/sandboxes/{id}/ports/{port}/{path:path}", proxy_port, methods=_ALL_METHODS, include_in_schema=False),
    Route("/sp/{id}/{port}/{path:path}", proxy_public_port, methods=_ALL_METHODS, include_in_schema=False),
    # WebSockets: OpenAPI describes no WebSocket, and the document holds only HTTP routes. The terminal's
    # messages are typed by TerminalControl (client text messages) and TerminalExit (the last server message).
    WebSocketRoute("/v1/sandboxes/{id}/ports/{port}/{path:path}", ws_port),
    WebSocketRoute("/sp/{id}/{port}/{path:path}", ws_public_port),
    WebSocketRoute("/v1/sandboxes/{id}/pty", terminal),
    Route("/v1/sandboxes/{id}/watch", watch, methods=["GET"]),
    Route("/v1/sandboxes/{id}/git/checkout", git_checkout, methods=["POST"]),
    Route("/v1/sandbox-images", add_image, methods=["POST"]),
    Route("/v1/sandbox-images", list_images, methods=["GET"]),
    Route("/v1/sandbox-images/{name}", remove_image, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/sessions", create_session, methods=["POST"]),
    Route("/v1/sandboxes/{id}/sessions", list_sessions, methods=["GET"]),
    Route("/v1/sandboxes/{id}/sessions/{session}", delete_session, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/exec", exec_command, methods=["POST"]),
    Route("/v1/sandboxes/{id}/files", read_file, methods=["GET"]),
    Route("/v1/sandboxes/{id}/files/{path:path}", read_file, methods=["GET"]),
    Route("/v1/sandboxes/{id}/files/{path:path}", write_file, methods=["PUT"]),
    Route("/v1/sandboxes/{id}/files/{path:path}", delete_file, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/mkdir", mkdir, methods=["POST"]),
    Route("/v1/sandboxes/{id}/move", move, methods=["POST"]),
    Route("/v1/sandboxes/{id}/processes", start_process, methods=["POST"]),
    Route("/v1/sandboxes/{id}/processes", list_processes, methods=["GET"]),
    Route("/v1/sandboxes/{id}/processes/{pid}", get_process, methods=["GET"]),
    Route("/v1/sandboxes/{id}/processes/{pid}", kill_process, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/processes/{pid}/logs", process_logs, methods=["GET"]),
    Route("/v1/sandboxes/{id}/processes/{pid}/signal", signal_process, methods=["POST"]),
]
