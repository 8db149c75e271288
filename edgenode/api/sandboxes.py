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
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgenode.api.common import json, node_of, principal
from edgenode.api.parsing import INT_MAX, PATH_MAX, check_path, dumps, query_bool, query_int
from edgenode.api.schema import Base64, Body, NoNul, Raw, Reply, Stream, operation, read_model, read_validated
from edgenode.errors import Conflict, ValidationFailed
from edgenode.sandboxes import Sandboxes, parse_exec
from edgenode.sandboxes.execution import Execution

T = TypeVar("T")
READ_CHUNK = 256 * 1024
#: Bytes of server-sent events gathered into one write.
SSE_WRITE_BYTES = 64 * 1024
_PARTIAL = ',"partial":true'
_SIGNALS = {"HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT"}


# -- models ------------------------------------------------------------------------

FilePath = Annotated[str, Field(pattern="^[^\\x00]*$", max_length=PATH_MAX)]
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
    """A new sandbox: a name, its network policy and limits."""

    name: str | None = Field(None, pattern="^(?!sb_)[a-z0-9][a-z0-9_.-]{0,62}$")
    network: Literal["none"] | NetworkAllow | None = None
    limits: SandboxLimits | None = None


class Sandbox(Reply):
    """A sandbox: its state, limits and use."""

    id: str
    state: str


class SandboxList(Reply):
    """The caller's sandboxes."""

    sandboxes: list[Sandbox]


class Exec(Body, extra="forbid"):
    """A command: a shell string or argv, with its directory, variables, input and bounds."""

    cmd: Annotated[str, Field(pattern="^[^\\x00]*[^\\s\\x00][^\\x00]*$")] | Annotated[list[NoNul], Field(min_length=1)]
    cwd: NoNul | None = None
    env: dict[EnvName, NoNul] | None = None
    stdin: str | None = None
    stdin_b64: Base64 | None = None
    timeout_s: float | None = Field(None, gt=0)
    max_output_bytes: int | None = Field(None, gt=0, le=INT_MAX)


class ExecResult(Reply):
    """How a command ended, with its output."""

    exit_code: int | None
    signal: int | None
    duration_ms: float
    timed_out: bool
    truncated: dict[str, bool]
    stopped_by: str | None = None
    error: str | None = None
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


@operation(body=CreateSandbox, responses={201: Sandbox}, errors=(400, 429, 503))
async def create(request: Request) -> Response:
    """Create a sandbox: ``{"name"?, "network": "none" | {"allow": [...]}, "limits": {...}}``."""
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
    fd = await asyncio.to_thread(ws.open, path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            entries = await asyncio.to_thread(ws.list, path)
            os.close(fd)
            return json({"path": path, "type": "directory", "entries": entries})
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{path!r} is not a regular file or directory")
    except BaseException:
        os.close(fd)
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(os.read, fd, READ_CHUNK):
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
    await asyncio.to_thread(ws.delete, path, recursive=recursive)
    return Response(status_code=204)


@operation(body=Mkdir, responses={201: Made}, errors=(400, 404, 409), path=_ID)
async def mkdir(request: Request) -> Response:
    """Create a directory: ``{"path", "parents": true}``."""
    body = await read_model(request, Mkdir)
    path = check_path(body.path, "path")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    await asyncio.to_thread(ws.mkdir, path, parents=body.parents)
    return json({"path": path}, status=201)


@operation(body=Move, responses={200: Moved}, errors=(400, 404, 409), path=_ID)
async def move(request: Request) -> Response:
    """Rename a file or directory: ``{"from", "to", "overwrite": false}``."""
    body = await read_model(request, Move)
    source, destination = check_path(body.from_, "from"), check_path(body.to, "to")
    ws, _ = await _sandboxes(request).workspace(principal(request), request.path_params["id"])
    await asyncio.to_thread(ws.move, source, destination, overwrite=body.overwrite)
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


routes = [
    Route("/v1/sandboxes", create, methods=["POST"]),
    Route("/v1/sandboxes", list_sandboxes, methods=["GET"]),
    Route("/v1/sandboxes/{id}", get, methods=["GET"]),
    Route("/v1/sandboxes/{id}", delete, methods=["DELETE"]),
    Route("/v1/sandboxes/{id}/release", release, methods=["POST"]),
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
