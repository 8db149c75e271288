"""Agent routes under ``/v1/agents``: deploy, runs, events, approvals, controls, schedules, models."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgenode.agents import controls, feed
from edgenode.agents.engine import NAME, RESERVED, RUN_ID, Agents
from edgenode.agents.mcp_client import MAX_SERVERS, SERVER_NAME
from edgenode.agents.store import run_key
from edgenode.api.common import json, node_of, principal
from edgenode.api.parsing import INT_MAX, INT_MIN, PATH_MAX, dumps, query_int, query_str
from edgenode.api.schema import Body, Json, Reply, Stream, operation, pattern, read_model
from edgenode.auth import Principal
from edgenode.errors import NotFound, Unavailable, ValidationFailed
from edgenode.threads import NET

#: JSON around an event payload or deployment that a body may carry beyond the payload limit.
_ENVELOPE = 64 * 1024
#: The runs-and-approvals page: plain files, no data in them (the page fetches with the user's token).
_UI = Path(__file__).resolve().parent.parent / "agents" / "ui"
_UI_TYPES = {"index.html": "text/html; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
#: The page runs its own script only, by a nonce: ``'self'`` would also admit a script that a public
#: worker or sandbox port serves on this origin.
_UI_CSP = ("default-src 'none'; script-src {script}; connect-src 'self'; style-src 'unsafe-inline'; "
           "form-action 'none'; frame-ancestors 'none'")
_UI_SCRIPT_TAG = b'<script src="ui.js"></script>'
_UI_HEADERS = {"content-security-policy": _UI_CSP.format(script="'none'"),
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
    body, headers = (_UI / name).read_bytes(), dict(_UI_HEADERS)
    if name == "index.html":
        nonce = secrets.token_urlsafe(16)
        body = body.replace(_UI_SCRIPT_TAG, f'<script nonce="{nonce}" src="ui.js"></script>'.encode())
        headers["content-security-policy"] = _UI_CSP.format(script=f"'nonce-{nonce}'")
    return Response(body, media_type=_UI_TYPES[name], headers=headers)


async def ui_reserved(request: Request) -> Response:
    """Anything but reading the page under ``/v1/agents/ui``: ``ui`` is no agent's name."""
    raise ValidationFailed("'ui' is reserved: the agents page lives at /v1/agents/ui/", field="name")


# -- models ------------------------------------------------------------------------

#: An agent or schedule name; the reserved words are the paths beside ``/v1/agents/{name}``.
AgentName = Annotated[str, pattern(re.compile(f"^(?!(?:{'|'.join(sorted(RESERVED))})$)" + NAME.pattern[1:]),
                                   "An agent: 1-63 lower-case letters, digits, '-' or '_' (not a reserved word)")]
RunId = Annotated[str, pattern(RUN_ID, "A run id: 1-128 letters, digits, '.', '_', ':' or '-'")]
Version = Annotated[int, Field(ge=1, le=INT_MAX)]
#: A deployment's MCP servers: ``{name: "http(s)://..."}`` (the egress policy checks the host further).
McpServers = Annotated[dict[Annotated[str, pattern(SERVER_NAME)],
                            Annotated[str, Field(pattern="^https?://", max_length=2000)]],
                       Field(max_length=MAX_SERVERS)]


class DeployAgent(Body):
    """An agent version's files."""

    files: dict[str, str] = Field(min_length=1, description="Python sources by path")
    entry: str = "main.py"
    allowed_hosts: list[str] | None = None
    mcp_servers: McpServers | None = Field(None, description="MCP servers the agent may call, by name")


class AgentVersion(Reply):
    """The deployed version."""

    created: bool


class AgentList(Reply):
    """The caller's agents."""

    agents: list[dict[str, Any]]


class AgentInfo(Reply):
    """An agent: current version, versions, state."""


class StartRun(Body):
    """A run's input, an optional id (idempotent start) and version."""

    input: Json = None
    id: RunId | None = None
    version: Version | None = None
    placement: Literal["local", "fleet"] | None = Field(
        None, description="fleet: owned by lease, survives its node; local: pinned to this node")


class Run(Reply):
    """A run's status, output or error, and what it waits for."""

    id: str
    status: str


class StartedRun(Run):
    """A run, and whether this request created it."""

    created: bool


class RunList(Reply):
    """Runs."""

    runs: list[dict[str, Any]]


class History(Reply):
    """A run's journal and events."""


class SendEvent(Body):
    """An event for a run."""

    type: str = Field(pattern="^(?!edgenode\\.).", description="Not starting with 'edgenode.'")
    payload: Json = None


class Decision(Body):
    """A human decision's comment."""

    comment: str = ""


class ControlResult(Reply):
    """The run after the control."""


class MoveRun(Body):
    """The version to move a run to."""

    version: Version


class ApprovalList(Reply):
    """Runs waiting for a human decision."""

    approvals: list[dict[str, Any]]


class CreateSchedule(Body):
    """A cron schedule that starts an agent."""

    name: AgentName
    agent: AgentName
    cron: str = Field(description="Five cron fields, UTC")
    input: Json = None


class Schedule(Reply):
    """A schedule."""


class ScheduleList(Reply):
    """The caller's schedules."""

    schedules: list[dict[str, Any]]


class ModelChat(Body):
    """One model call: model, messages, tools and options."""

    model: str
    messages: list[dict[str, Json]]
    tools: list[Json] | None = None
    options: dict[str, Json] = {}


class ModelReply(Reply):
    """The model's reply."""


class ModelUsage(Reply):
    """Model calls and tokens by provider and model."""

    usage: list[dict[str, Any]]


class PutSecret(Body):
    """A secret's value."""

    value: str = Field(min_length=1)


class _AgentName(StringConvertor):
    """``{name:agent}``: a path segment that is not one of the reserved words, whose routes sit beside it.

    So ``PUT /v1/agents/approvals`` is a method ``/v1/agents/approvals`` does not allow (405), not a deploy.
    """

    regex = f"(?!(?:{'|'.join(sorted(RESERVED))})(?:/|$))[^/]+"


register_url_convertor("agent", _AgentName())

_NAME = {"name": AgentName}
_RUN = {"run_id": RunId}
SecretName = Annotated[str, Field(pattern="^(?=_*[A-Za-z0-9])[A-Za-z0-9_]{1,100}$")]


def _agents(request: Request) -> Agents:
    agents: Agents | None = getattr(node_of(request), "agents", None)
    if agents is None:
        raise Unavailable("this node has no agents capability")
    return agents


def _run_id(request: Request) -> str:
    run_id: str = request.path_params["run_id"]
    return run_id


# -- restart and the run's event stream -------------------------------------------------


class RestartRun(Body):
    """``POST /v1/agents/runs/{id}/restart``: the journal position to execute again from."""

    from_step: Annotated[int, Field(ge=0, le=INT_MAX)] = Field(
        description="Journal position to run again from; earlier entries are copied and replayed")
    id: RunId | None = Field(None, description="Id of the new run (restarting again with it returns that run)")
    version: Version | None = Field(None, description="Agent version to run; the current one if left out")


class RestartedFrom(Reply):
    """Where a restarted run came from."""

    run: str
    step: int


class RestartedRun(StartedRun):
    """The new run a restart started (``created`` false: the restart with this id already existed)."""

    restarted_from: RestartedFrom


class JournalEntry(Reply):
    """A journal entry (``event: journal``), as it stands when sent."""

    position: int
    kind: str
    name: str
    request: Json = None
    result: Json = None
    status: str
    attempts: int
    created_at: float
    updated_at: float


class StatusChange(Reply):
    """``event: status``: the run moved to ``status`` at ``at``."""

    status: str
    at: float


class TokenDelta(Reply):
    """``event: delta``: a piece of the reply of the model call at journal ``position``, live only."""

    position: int
    text: str


class StreamEnd(Reply):
    """``event: end``: the run has finished; the stream closes."""

    status: str
    run: Run


class RunStreamEvent(Reply):
    """One server-sent event of ``GET /v1/agents/runs/{id}/events``: ``id:``, ``event:`` and ``data:``.

    Ids are the run log's sequence numbers (``seq``, or ``seq.n`` for deltas); send the last
    one seen as ``Last-Event-ID`` (or ``?after=``) to resume. Comment lines keep the stream alive.
    """

    id: str
    event: Literal["journal", "status", "delta", "end"]
    data: JournalEntry | StatusChange | TokenDelta | StreamEnd


# -- agents ------------------------------------------------------------------------


@operation(body=DeployAgent, responses={200: AgentVersion, 201: AgentVersion}, errors=(400, 413), path=_NAME)
async def deploy(request: Request) -> Response:
    """Deploy a version: ``{"files": {"main.py": ...}, "entry"?, "allowed_hosts"?, "mcp_servers"?: {name: url}}``."""
    agents = _agents(request)
    body = await read_model(request, DeployAgent, agents.settings.max_code_bytes + _ENVELOPE)
    result = await agents.deploy(principal(request).tenant, request.path_params["name"], body.files,
                                 entry=body.entry, allowed_hosts=body.allowed_hosts, mcp_servers=body.mcp_servers)
    return json(result, status=201 if result["created"] else 200)


@operation(responses={200: AgentList})
async def list_agents(request: Request) -> Response:
    """The caller's agents."""
    return json({"agents": await _agents(request).list_agents(principal(request).tenant)})


@operation(responses={200: AgentInfo}, errors=(404,), path=_NAME)
async def get_agent(request: Request) -> Response:
    """An agent: current version, versions, state."""
    return json(await _agents(request).get_agent(principal(request).tenant, request.path_params["name"]))


@operation(body=StartRun, responses={200: StartedRun, 201: StartedRun}, errors=(400, 404, 409, 413), path=_NAME)
async def start_run(request: Request) -> Response:
    """Start a run: ``{"input"?, "id"? (idempotency), "version"?, "placement"?}``; 201, or 200 for a known id."""
    agents = _agents(request)
    body = await read_model(request, StartRun, agents.settings.max_event_bytes + _ENVELOPE)
    run, created = await agents.start_run(principal(request).tenant, request.path_params["name"], body.input,
                                          run_id=body.id, version=body.version, placement=body.placement)
    return json({**run, "created": created}, status=201 if created else 200)


# -- runs ------------------------------------------------------------------------------


@operation(responses={200: RunList},
           query={"agent": Annotated[str, Field(max_length=PATH_MAX)] | None,
                  "status": Annotated[str, Field(max_length=PATH_MAX)] | None,
                  "limit": Annotated[int, Field(ge=INT_MIN, le=INT_MAX)] | None})
async def list_runs(request: Request) -> Response:
    """The caller's runs: ``?agent=&status=&limit=``."""
    limit = max(1, min(1000, query_int(request, "limit", 100, lo=INT_MIN, hi=INT_MAX)))
    runs = await _agents(request).list_runs(principal(request).tenant, agent=query_str(request, "agent"),
                                            status=query_str(request, "status"), limit=limit)
    return json({"runs": runs})


@operation(responses={200: Run}, errors=(404,), path=_RUN)
async def get_run(request: Request) -> Response:
    """One run's status, output or error, and what it waits for."""
    return json(await _agents(request).get_run(principal(request), _run_id(request)))


@operation(responses={200: History}, errors=(404,), path=_RUN)
async def history(request: Request) -> Response:
    """The run's journal and events."""
    return json(await _agents(request).history(principal(request), _run_id(request)))


@operation(body=RestartRun, responses={200: RestartedRun, 201: RestartedRun}, errors=(400, 404, 409), path=_RUN)
async def restart(request: Request) -> Response:
    """Restart a finished run from a journal position: ``{"from_step", "id"?, "version"?}``; 201, the new run."""
    body = await read_model(request, RestartRun)
    run, created = await controls.restart(_agents(request), principal(request), _run_id(request), body.from_step,
                                          new_id=body.id, version=body.version)
    return json({**run, "created": created}, status=201 if created else 200)


_EVENT_ID = re.compile(r"^([0-9]{1,18})(?:\.[0-9]{1,18})?\Z")
#: The same, for the document (which trims no spaces: an event source sends the id as it got it).
_EVENT_ID_PATTERN = "^[0-9]{1,18}(?:\\.[0-9]{1,18})?$"
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


@operation(responses={200: Stream("text/event-stream", "sse", RunStreamEvent,
                                  "journal entries, status changes and token deltas until the run ends")},
           errors=(400, 404, 503), path=_RUN,
           query={"after": Annotated[str, Field(pattern=_EVENT_ID_PATTERN, description="Resume after this "
                                                "event id (Last-Event-ID wins)")] | None},
           headers={"Last-Event-ID": Annotated[str, Field(pattern=_EVENT_ID_PATTERN)] | None})
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


@operation(body=SendEvent, responses={202: ControlResult}, errors=(400, 404, 409, 413), path=_RUN)
async def send_event(request: Request) -> Response:
    """Send an event: ``{"type", "payload"?}``."""
    agents = _agents(request)
    body = await read_model(request, SendEvent, agents.settings.max_event_bytes + _ENVELOPE)
    result = await controls.send_event(agents, principal(request), _run_id(request), body.type, body.payload)
    return json(result, status=202)


async def _decision(request: Request, approved: bool) -> Response:
    agents = _agents(request)
    body = await read_model(request, Decision, agents.settings.max_event_bytes + 4096, optional=True)
    who = principal(request)
    result = await controls.decide(agents, who, _run_id(request), approved, body.comment,
                                   approver=await _token_name(request, who))
    return json(result)


async def _token_name(request: Request, who: Principal) -> str:
    """Who decides, as people know them: the name of the token (its id if unnamed; "admin" for the admin token)."""
    if who.token_id is None or who.token_id == "admin":
        return who.token_id or who.tenant
    tokens = await node_of(request).auth.list_tokens(who.tenant)
    name = next((t["name"] for t in tokens if t["id"] == who.token_id), "")
    return f"{name} ({who.token_id})" if name else who.token_id


_decides = operation(body=Decision, body_required=False, responses={200: ControlResult},
                     errors=(400, 404, 409), path=_RUN)
_controls = operation(responses={200: ControlResult}, errors=(404, 409), path=_RUN)


@_decides
async def approve(request: Request) -> Response:
    """Approve the approval the run waits for: ``{"comment"?}``."""
    return await _decision(request, True)


@_decides
async def reject(request: Request) -> Response:
    """Reject the approval the run waits for: ``{"comment"?}``."""
    return await _decision(request, False)


@operation(responses={200: ApprovalList})
async def list_approvals(request: Request) -> Response:
    """Runs waiting for a human decision."""
    return json({"approvals": await controls.list_approvals(_agents(request), principal(request).tenant)})


@_controls
async def pause(request: Request) -> Response:
    """Pause a run."""
    return json(await controls.pause(_agents(request), principal(request), _run_id(request)))


@_controls
async def resume(request: Request) -> Response:
    """Resume a paused or blocked run."""
    return json(await controls.resume(_agents(request), principal(request), _run_id(request)))


@_controls
async def cancel(request: Request) -> Response:
    """Cancel a run (it stops at its next host call)."""
    return json(await controls.stop(_agents(request), principal(request), _run_id(request), terminate=False))


@_controls
async def terminate(request: Request) -> Response:
    """Terminate a run (an executing activation is killed)."""
    return json(await controls.stop(_agents(request), principal(request), _run_id(request), terminate=True))


@operation(body=MoveRun, responses={200: ControlResult}, errors=(400, 404, 409), path=_RUN)
async def move(request: Request) -> Response:
    """Move a run to another version of its agent: ``{"version"}``."""
    body = await read_model(request, MoveRun)
    return json(await controls.move(_agents(request), principal(request), _run_id(request), body.version))


# -- schedules, models, usage, secrets ------------------------------------------------


@operation(body=CreateSchedule, responses={201: Schedule}, errors=(400, 413))
async def create_schedule(request: Request) -> Response:
    """Create or replace a cron schedule: ``{"name", "agent", "cron", "input"?}``."""
    agents = _agents(request)
    body = await read_model(request, CreateSchedule, agents.settings.max_event_bytes + _ENVELOPE)
    result = await agents.schedules.create(principal(request).tenant, body.name, body.agent, body.cron, body.input)
    return json(result, status=201)


@operation(responses={200: ScheduleList})
async def list_schedules(request: Request) -> Response:
    """The caller's schedules."""
    return json({"schedules": await _agents(request).schedules.list(principal(request).tenant)})


@operation(responses={204: None}, errors=(404,), path=_NAME)
async def delete_schedule(request: Request) -> Response:
    """Delete a schedule."""
    await _agents(request).schedules.delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)


@operation(body=ModelChat, responses={200: ModelReply}, errors=(400, 502, 504))
async def model_chat(request: Request) -> Response:
    """One model call through the gateway: ``{"model", "messages", "tools"?, "options"?}``."""
    agents = _agents(request)
    body = await read_model(request, ModelChat)
    reply = await NET.run(agents.models.chat, principal(request).tenant, body.model, body.messages,
                                    tools=body.tools, options=body.options)
    return json(reply)


@operation(responses={200: ModelUsage})
async def usage(request: Request) -> Response:
    """The caller's model usage (calls and tokens by provider and model)."""
    return json({"usage": await controls.usage(_agents(request), principal(request).tenant)})


@operation(body=PutSecret, responses={204: None}, errors=(400,), path={"name": SecretName})
async def put_secret(request: Request) -> Response:
    """Store a tenant secret such as ``OPENAI_API_KEY``: ``{"value"}``."""
    body = await read_model(request, PutSecret)
    await controls.set_secret(_agents(request), principal(request).tenant, request.path_params["name"], body.value)
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
    Route("/v1/agents/{name:agent}", deploy, methods=["PUT"]),
    Route("/v1/agents/{name:agent}", get_agent, methods=["GET"]),
    Route("/v1/agents/{name:agent}/runs", start_run, methods=["POST"]),
]
