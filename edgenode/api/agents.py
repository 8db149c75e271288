"""Agent routes under ``/v1/agents``: deploy, runs, events, approvals, controls, schedules, models."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgenode.agents import controls, feed
from edgenode.agents.engine import Agents, validate_run_id
from edgenode.agents.store import run_key
from edgenode.api.common import field, json, node_of, principal, read_json
from edgenode.api.parsing import INT_MAX, INT_MIN, dumps, query_int, query_str
from edgenode.auth import Principal
from edgenode.errors import NotFound, Unavailable, ValidationFailed

#: JSON around an event payload or deployment that a body may carry beyond the payload limit.
_ENVELOPE = 64 * 1024
#: The runs-and-approvals page: plain files, no data in them (the page fetches with the user's token).
_UI = Path(__file__).resolve().parent.parent / "agents" / "ui"
_UI_TYPES = {"index.html": "text/html; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
_UI_HEADERS = {"content-security-policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                                          "style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}

_WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]

#: The page's files carry no data and no secrets, so they are served without a token.
public = ("/v1/agents/ui", "/v1/agents/ui/")


async def ui(request: Request) -> Response:
    """The agents page (HTML and its script)."""
    if request.url.path == "/v1/agents/ui":
        return Response(status_code=307, headers={"location": "/v1/agents/ui/"})
    name = request.path_params.get("file") or "index.html"
    if name not in _UI_TYPES:
        raise NotFound(f"no page file {name!r}")
    return Response((_UI / name).read_bytes(), media_type=_UI_TYPES[name], headers=_UI_HEADERS)


async def ui_reserved(request: Request) -> Response:
    """Anything but reading the page under ``/v1/agents/ui``: ``ui`` is no agent's name."""
    raise ValidationFailed("'ui' is reserved: the agents page lives at /v1/agents/ui/", field="name")


def _agents(request: Request) -> Agents:
    agents: Agents | None = getattr(node_of(request), "agents", None)
    if agents is None:
        raise Unavailable("this node has no agents capability")
    return agents


async def _body(request: Request, limit: int | None = None) -> dict[str, Any]:
    return await read_json(request, limit)


def _run_id(request: Request) -> str:
    run_id: str = request.path_params["run_id"]
    return run_id


# -- typed bodies of the routes added with restart and streamed events -----------------
#
# The handlers parse with ``api.parsing`` (the node's one error shape); these models
# describe the same bodies for the API's typed description.


class RestartRunRequest(BaseModel):
    """``POST /v1/agents/runs/{id}/restart``: the journal position to execute again from."""

    from_step: int = Field(ge=0, le=INT_MAX, description="Journal position to run again from; earlier entries "
                                                         "are copied and replayed")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                           description="Id of the new run (restarting again with it returns that run)")
    version: int | None = Field(None, ge=1, description="Agent version to run; the current one if left out")


class RestartedFrom(BaseModel):
    """Where a restarted run came from."""

    run: str
    step: int


class RunResponse(BaseModel):
    """A run as the API shows it."""

    id: str
    tenant: str
    agent: str
    version: int
    status: str
    input: Any = None
    output: Any = None
    error: Any = None
    waiting: dict[str, Any] | None = None
    wake_at: float | None = None
    parent_id: str | None = None
    schedule: str | None = None
    activations: int
    journal_pruned: bool
    restarted_from: RestartedFrom | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None


class RestartRunResponse(RunResponse):
    """The new run a restart started (``created`` false: the restart with this id already existed)."""

    created: bool


class JournalEntry(BaseModel):
    """A journal entry (``event: journal``), as it stands when sent."""

    position: int
    kind: str
    name: str
    request: Any = None
    result: Any = None
    status: str
    attempts: int
    created_at: float
    updated_at: float


class StatusChange(BaseModel):
    """``event: status``: the run moved to ``status`` at ``at``."""

    status: str
    at: float


class TokenDelta(BaseModel):
    """``event: delta``: a piece of the reply of the model call at journal ``position``, live only."""

    position: int
    text: str


class StreamEnd(BaseModel):
    """``event: end``: the run has finished; the stream closes."""

    status: str
    run: RunResponse


class RunStreamEvent(BaseModel):
    """One server-sent event of ``GET /v1/agents/runs/{id}/events``: ``id:``, ``event:`` and ``data:``.

    Ids are the run log's sequence numbers (``seq``, or ``seq.n`` for deltas); send the last
    one seen as ``Last-Event-ID`` (or ``?after=``) to resume.
    """

    id: str
    event: Literal["journal", "status", "delta", "end"]
    data: JournalEntry | StatusChange | TokenDelta | StreamEnd


# -- agents ------------------------------------------------------------------------


async def deploy(request: Request) -> Response:
    """Deploy a version: ``{"files": {"main.py": ...}, "entry"?, "allowed_hosts"?, "mcp_servers"?: {name: url}}``."""
    agents = _agents(request)
    data = await _body(request, agents.settings.max_code_bytes + _ENVELOPE)
    result = await agents.deploy(
        principal(request).tenant, request.path_params["name"], field(data, "files", dict, required=True),
        entry=field(data, "entry", str, "main.py"), allowed_hosts=field(data, "allowed_hosts", list, None),
        mcp_servers=field(data, "mcp_servers", dict, None),
    )
    return json(result, status=201 if result["created"] else 200)


async def list_agents(request: Request) -> Response:
    """The caller's agents."""
    return json({"agents": await _agents(request).list_agents(principal(request).tenant)})


async def get_agent(request: Request) -> Response:
    """An agent: current version, versions, state."""
    return json(await _agents(request).get_agent(principal(request).tenant, request.path_params["name"]))


async def start_run(request: Request) -> Response:
    """Start a run: ``{"input"?, "id"? (idempotency), "version"?}``; 201, or 200 for a known id."""
    agents = _agents(request)
    data = await _body(request, agents.settings.max_event_bytes + _ENVELOPE)
    run, created = await agents.start_run(
        principal(request).tenant, request.path_params["name"], data.get("input"),
        run_id=field(data, "id", str, None), version=field(data, "version", int, None, lo=1),
    )
    return json({**run, "created": created}, status=201 if created else 200)


# -- runs ------------------------------------------------------------------------------


async def list_runs(request: Request) -> Response:
    """The caller's runs: ``?agent=&status=&limit=``."""
    limit = max(1, min(1000, query_int(request, "limit", 100, lo=INT_MIN, hi=INT_MAX)))
    runs = await _agents(request).list_runs(principal(request).tenant, agent=query_str(request, "agent"),
                                            status=query_str(request, "status"), limit=limit)
    return json({"runs": runs})


async def get_run(request: Request) -> Response:
    """One run's status, output or error, and what it waits for."""
    return json(await _agents(request).get_run(principal(request), _run_id(request)))


async def history(request: Request) -> Response:
    """The run's journal and events."""
    return json(await _agents(request).history(principal(request), _run_id(request)))


async def restart(request: Request) -> Response:
    """Restart a finished run from a journal position: ``{"from_step", "id"?, "version"?}``; 201, the new run."""
    data = await _body(request)
    new_id = field(data, "id", str, None)
    if new_id is not None:
        validate_run_id(new_id)
    run, created = await controls.restart(_agents(request), principal(request), _run_id(request),
                                          field(data, "from_step", int, required=True, lo=0, hi=INT_MAX),
                                          new_id=new_id, version=field(data, "version", int, None, lo=1))
    return json({**run, "created": created}, status=201 if created else 200)


_EVENT_ID = re.compile(r"^([0-9]{1,18})(?:\.[0-9]{1,18})?\Z")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _after(request: Request) -> int:
    """The sequence to resume after: ``Last-Event-ID`` (as sent by an event source), else ``?after=``."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = query_str(request, "after", "0", max_len=40)
        name = "after"
    else:
        name = "Last-Event-ID"
    match = _EVENT_ID.match(raw.strip() if raw else "")
    if match is None:
        raise ValidationFailed(f"{name} must be an event id this stream sent (digits, or digits.digits)",
                               field=name)
    return int(match.group(1))


async def follow(request: Request) -> Response:
    """The run's journal entries, status changes and model token deltas as server-sent events."""
    agents = _agents(request)
    who = principal(request)
    after = _after(request)
    await agents.get_run(who, _run_id(request))  # 404 now, not inside the stream
    agents.feed.check_capacity()

    async def events() -> AsyncIterator[bytes]:
        async for event in feed.stream(agents, run_key(who.tenant, _run_id(request)), after):
            if event is None:
                yield b": keep-alive\n\n"
            else:
                yield (b"id: " + event.id.encode() + b"\nevent: " + event.kind.encode() + b"\ndata: "
                       + dumps(event.data) + b"\n\n")

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def send_event(request: Request) -> Response:
    """Send an event: ``{"type", "payload"?}``."""
    agents = _agents(request)
    data = await _body(request, agents.settings.max_event_bytes + _ENVELOPE)
    result = await controls.send_event(agents, principal(request), _run_id(request),
                                       field(data, "type", str, required=True), data.get("payload"))
    return json(result, status=202)


async def _decision(request: Request, approved: bool) -> Response:
    agents = _agents(request)
    data = await read_json(request, agents.settings.max_event_bytes + 4096, optional=True)
    who = principal(request)
    result = await controls.decide(agents, who, _run_id(request), approved, field(data, "comment", str, ""),
                                   approver=await _token_name(request, who))
    return json(result)


async def _token_name(request: Request, who: Principal) -> str:
    """Who decides, as people know them: the name of the token (its id if unnamed; "admin" for the admin token)."""
    if who.token_id is None or who.token_id == "admin":
        return who.token_id or who.tenant
    tokens = await node_of(request).auth.list_tokens(who.tenant)
    name = next((t["name"] for t in tokens if t["id"] == who.token_id), "")
    return f"{name} ({who.token_id})" if name else who.token_id


async def approve(request: Request) -> Response:
    """Approve the approval the run waits for: ``{"comment"?}``."""
    return await _decision(request, True)


async def reject(request: Request) -> Response:
    """Reject the approval the run waits for: ``{"comment"?}``."""
    return await _decision(request, False)


async def list_approvals(request: Request) -> Response:
    """Runs waiting for a human decision."""
    return json({"approvals": await controls.list_approvals(_agents(request), principal(request).tenant)})


async def pause(request: Request) -> Response:
    """Pause a run."""
    return json(await controls.pause(_agents(request), principal(request), _run_id(request)))


async def resume(request: Request) -> Response:
    """Resume a paused or blocked run."""
    return json(await controls.resume(_agents(request), principal(request), _run_id(request)))


async def cancel(request: Request) -> Response:
    """Cancel a run (it stops at its next host call)."""
    return json(await controls.stop(_agents(request), principal(request), _run_id(request), terminate=False))


async def terminate(request: Request) -> Response:
    """Terminate a run (an executing activation is killed)."""
    return json(await controls.stop(_agents(request), principal(request), _run_id(request), terminate=True))


async def move(request: Request) -> Response:
    """Move a run to another version of its agent: ``{"version"}``."""
    data = await _body(request)
    return json(await controls.move(_agents(request), principal(request), _run_id(request),
                                    field(data, "version", int, required=True, lo=1)))


# -- schedules, models, usage, secrets ------------------------------------------------


async def create_schedule(request: Request) -> Response:
    """Create or replace a cron schedule: ``{"name", "agent", "cron", "input"?}``."""
    agents = _agents(request)
    data = await _body(request, agents.settings.max_event_bytes + _ENVELOPE)
    result = await agents.schedules.create(principal(request).tenant, field(data, "name", str, required=True),
                                           field(data, "agent", str, required=True),
                                           field(data, "cron", str, required=True), data.get("input"))
    return json(result, status=201)


async def list_schedules(request: Request) -> Response:
    """The caller's schedules."""
    return json({"schedules": await _agents(request).schedules.list(principal(request).tenant)})


async def delete_schedule(request: Request) -> Response:
    """Delete a schedule."""
    await _agents(request).schedules.delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)


async def model_chat(request: Request) -> Response:
    """One model call through the gateway: ``{"model", "messages", "tools"?, "options"?}``."""
    agents = _agents(request)
    data = await _body(request)
    reply = await asyncio.to_thread(
        agents.models.chat, principal(request).tenant, field(data, "model", str, required=True),
        field(data, "messages", list, required=True), tools=field(data, "tools", list, None),
        options=field(data, "options", dict, {}),
    )
    return json(reply)


async def usage(request: Request) -> Response:
    """The caller's model usage (calls and tokens by provider and model)."""
    return json({"usage": await controls.usage(_agents(request), principal(request).tenant)})


async def put_secret(request: Request) -> Response:
    """Store a tenant secret such as ``OPENAI_API_KEY``: ``{"value"}``."""
    data = await _body(request)
    await controls.set_secret(_agents(request), principal(request).tenant, request.path_params["name"],
                              data.get("value"))
    return Response(status_code=204)


routes = [
    # The page is for browsers, not part of the API's description.
    Route("/v1/agents/ui", ui, methods=["GET"], include_in_schema=False),
    Route("/v1/agents/ui/", ui, methods=["GET"], include_in_schema=False),
    Route("/v1/agents/ui/{file}", ui, methods=["GET"], include_in_schema=False),
    # The page's paths need no token, so no agent may live there: any other method is refused
    # here, before a route that needs the caller's token could take the request.
    Route("/v1/agents/ui", ui_reserved, methods=_WRITE_METHODS, include_in_schema=False),
    Route("/v1/agents/ui/{rest:path}", ui_reserved, methods=_WRITE_METHODS, include_in_schema=False),
    Route("/v1/agents", list_agents, methods=["GET"]),
    Route("/v1/agents/runs", list_runs, methods=["GET"]),
    Route("/v1/agents/runs/{run_id}", get_run, methods=["GET"]),
    Route("/v1/agents/runs/{run_id}/history", history, methods=["GET"]),
    Route("/v1/agents/runs/{run_id}/events", send_event, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/events", follow, methods=["GET"]),
    Route("/v1/agents/runs/{run_id}/restart", restart, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/approve", approve, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/reject", reject, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/pause", pause, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/resume", resume, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/terminate", terminate, methods=["POST"]),
    Route("/v1/agents/runs/{run_id}/move", move, methods=["POST"]),
    Route("/v1/agents/approvals", list_approvals, methods=["GET"]),
    Route("/v1/agents/schedules", list_schedules, methods=["GET"]),
    Route("/v1/agents/schedules", create_schedule, methods=["POST"]),
    Route("/v1/agents/schedules/{name}", delete_schedule, methods=["DELETE"]),
    Route("/v1/agents/models/chat", model_chat, methods=["POST"]),
    Route("/v1/agents/usage", usage, methods=["GET"]),
    Route("/v1/agents/secrets/{name}", put_secret, methods=["PUT"]),
    Route("/v1/agents/{name}", deploy, methods=["PUT"]),
    Route("/v1/agents/{name}", get_agent, methods=["GET"]),
    Route("/v1/agents/{name}/runs", start_run, methods=["POST"]),
]
