"""Worker routes: deploy, inspect, roll back, invoke, one-off runs, WASI commands, usage.

Invocation is authorised two ways:

- ``ANY /w/{name}/{path}`` takes a bearer token and runs the caller's tenant's
  worker ``name`` (an admin may pick the tenant with ``X-Edgenode-Tenant``).
  The token is not passed to the guest.
- ``ANY /p/{tenant}/{name}/{path}`` takes no token and runs only workers
  deployed with ``"public": true``; headers reach the guest but the node's own
  credentials (a node or repository token, cookies, which it cannot set) and error
  replies leave out guest tracebacks.

Worker names are unique per tenant, so two tenants may both have ``hello``.
"""

from __future__ import annotations

import base64
import json as _json
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import TENANT_HEADER, json, node_of, principal, read_body
from edgenode.api.parsing import INT_MAX, PATH_MAX, check_path, parse_json, query_bool, query_int, query_str
from edgenode.api.schema import Base64, Body, Json, Raw, Reply, operation, pattern, read_model, read_validated
from edgenode.auth import validate_tenant
from edgenode.auth.tokens import TENANT_NAME
from edgenode.errors import BadRequest, EdgenodeError, UnsupportedMediaType, ValidationFailed
from edgenode.isolates import GuestRequest, Outcome, Workers
from edgenode.isolates.registry import NAME as WORKER_NAME

#: Public worker invocations check nothing but the deployment's own ``public`` flag.
public = ("/p/",)

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Response headers the server sets itself; a guest's values for them are dropped.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
#: Headers a public worker may not send: they would act on the node's own origin or host (its
#: cookies, security policy, cached data, transport and reporting policies, client hints).
_PUBLIC_REFUSED = {"set-cookie", "set-cookie2", "content-security-policy", "content-security-policy-report-only",
                   "clear-site-data", "service-worker-allowed", "access-control-allow-origin",
                   "access-control-allow-credentials", "refresh", "strict-transport-security", "alt-svc", "nel",
                   "report-to", "reporting-endpoints", "public-key-pins", "public-key-pins-report-only",
                   "expect-ct", "accept-ch", "critical-ch"}
#: A public worker's page runs in an opaque origin: no scripts, no forms, no access to the
#: node's cookies or storage, whatever HTML it serves.
PUBLIC_CSP = "sandbox"


TenantName = Annotated[str, pattern(TENANT_NAME)]
#: A tenant name, or empty (the caller's own).
TenantOrEmpty = Annotated[str, Field(pattern="^(?:|[a-z0-9][a-z0-9-]{0,62})$")]
WorkerName = Annotated[str, pattern(WORKER_NAME, "A worker: 1-63 lower-case letters, digits and dashes")]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]


class Limits(Body, extra="forbid"):
    """Resource limits; each within the node's ceiling (defaults: the node's)."""

    cpu_ms: int | None = Field(None, ge=1, le=INT_MAX)
    memory_mb: int | None = Field(None, ge=1, le=INT_MAX)
    wall_ms: int | None = Field(None, ge=1, le=INT_MAX)
    subrequests: int | None = Field(None, ge=0, le=INT_MAX)


class WorkerSettings(Body):
    """What a deployment or one-off run may use."""

    limits: Limits | None = None
    allowed_hosts: list[str] = Field([], description="Hosts the code may fetch from (host, *.host, host:port)")
    env: dict[str, str] = Field({}, description="Variables the code sees (64 KiB in all)")


class DeployWorker(WorkerSettings):
    """A Python worker's files, or a component in base64."""

    requires_one_of = ("files", "component_b64")

    files: dict[str, str] | None = Field(None, min_length=1, description="Python sources by path; main.py is the entry")
    component_b64: Base64 | None = Field(None, description="A WebAssembly component (worker world), base64")
    public: bool = Field(False, description="Served without a token at /p/{tenant}/{name}")


class Deployed(Reply):
    """The version a deployment or rollback made current."""

    name: str
    version: int
    hash: str
    kind: str


class Worker(Reply):
    """One worker with its versions."""

    name: str
    versions: list[dict[str, Any]]


class WorkerList(Reply):
    """The caller's workers."""

    workers: list[dict[str, Any]]


class Rollback(Body):
    """The version to make current (default: the one before the current)."""

    version: int | None = Field(None, ge=1, le=INT_MAX)


class RunCode(WorkerSettings):
    """Code to run once: ``code`` (main.py) or ``files``, with its ``input``."""

    requires_one_of = ("code", "files")

    code: str | None = Field(None, description="main.py's source")
    files: dict[str, str] | None = Field(None, min_length=1)
    input: Json = Field(None, description="The JSON the guest's main(input) receives")
    method: str = Field("POST", max_length=64)
    path: str = Field("/", pattern="^/", max_length=PATH_MAX)


class Usage(Reply):
    """What one invocation used."""

    cpu_ms: float
    wall_ms: float


class RunResult(Reply):
    """The guest's reply: status, headers and body (as text, JSON or base64), with its logs and usage."""

    status: int
    headers: dict[str, str]
    body: str | None = None
    json_: Any = Field(None, alias="json")
    body_b64: str | None = None
    logs: Any = None
    output: Any = None
    usage: Usage


class WasiRun(Body):
    """A WASI preview 1 command: a module (base64) or a deployed one by name, with args, stdin, env, files."""

    requires_one_of = ("module_b64", "name")

    module_b64: Base64 | None = None
    name: WorkerName | None = None
    args: list[str] = []
    stdin_b64: Base64 | None = None
    env: dict[str, str] = {}
    files: dict[str, Base64] = Field({}, description="Files in the command's directory: path to base64 content")
    limits: Limits | None = None


class WasiResult(Reply):
    """How a WASI command ended, with its output."""

    exit_code: int
    stdout_b64: str
    stderr_b64: str
    files: dict[str, str]
    truncated: Any
    usage: Usage


class UsageList(Reply):
    """Usage totals per worker."""

    usage: list[dict[str, Any]]


_NAME = {"name": WorkerName}
#: Anything: the worker's own reply.
_GUEST_REPLY = {200: Raw("*/*", "Whatever the worker answers, with its status")}


def workers_of(request: Request) -> Workers:
    """The node's workers capability."""
    workers: Workers = node_of(request).workers
    return workers


@operation(body=(DeployWorker, Raw("application/wasm")), responses={201: Deployed}, errors=(400, 413, 415),
           path=_NAME, query={"public": bool | None, "cpu_ms": Count | None, "memory_mb": Count | None,
                              "wall_ms": Count | None, "subrequests": Count | None})
async def deploy(request: Request) -> Response:
    """Deploy a worker: JSON ``{"files"|"component_b64", "limits", "allowed_hosts", "env", "public"}`` or raw wasm."""
    tenant = principal(request).tenant
    name = request.path_params["name"]
    workers = workers_of(request)
    settings = workers.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/wasm":
        data = await read_body(request, settings.max_component_bytes)
        q = request.query_params
        spec: dict[str, Any] = {
            "limits": {k: query_int(request, k, 0, lo=0, hi=INT_MAX)
                       for k in ("cpu_ms", "memory_mb", "wall_ms", "subrequests") if k in q},
            "allowed_hosts": q.getlist("allowed_host"),
            "public": query_bool(request, "public"),
        }
        reply = await workers.deploy_wasm(tenant, name, data, workers.parse_settings(spec))
    elif ctype in ("application/json", ""):
        _, body = await read_validated(request, DeployWorker,
                                       settings.max_component_bytes * 4 // 3 + settings.max_source_bytes)
        parsed = workers.parse_settings(body)
        if body.get("component_b64") is not None:
            reply = await workers.deploy_wasm(tenant, name, _b64(body["component_b64"], "component_b64"), parsed)
        elif body.get("files") is None:
            raise ValidationFailed("field 'files' is required (or 'component_b64')", field="files")
        else:
            reply = await workers.deploy_python(tenant, name, body["files"], parsed)
    else:
        raise UnsupportedMediaType("deploy takes application/json (Python files) or application/wasm (a component)")
    return json(reply, status=201)


@operation(responses={200: WorkerList})
async def list_workers(request: Request) -> Response:
    """The caller's tenant's workers."""
    return json({"workers": await workers_of(request).list_workers(principal(request).tenant)})


@operation(responses={200: Worker}, errors=(404,), path=_NAME)
async def get_worker(request: Request) -> Response:
    """One worker: current version, settings (env names only) and version history."""
    return json(await workers_of(request).describe(principal(request).tenant, request.path_params["name"]))


@operation(responses={204: None}, errors=(404,), path=_NAME)
async def delete_worker(request: Request) -> Response:
    """Remove a worker and every version of it."""
    await workers_of(request).delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)


@operation(body=Rollback, body_required=False, responses={200: Deployed}, errors=(400, 404), path=_NAME)
async def rollback(request: Request) -> Response:
    """Make an earlier version current: ``{"version": N}``, or the one before the current by default."""
    body = await read_model(request, Rollback, optional=True)
    reply = await workers_of(request).rollback(principal(request).tenant, request.path_params["name"],
                                               body.version)
    return json(reply)


@operation(body=Raw("*/*"), body_required=False, responses=_GUEST_REPLY, errors=(404,),
           path={**_NAME, "path": str})
async def invoke(request: Request) -> Response:
    """Run the caller's worker with this request (bearer token of the owning tenant)."""
    tenant = principal(request).tenant
    return await _invoke(request, tenant, public=False)


@operation(body=Raw("*/*"), body_required=False, responses=_GUEST_REPLY, errors=(404,),
           path={**_NAME, "path": str, "tenant": TenantName}, security="public")
async def invoke_public(request: Request) -> Response:
    """Run a public worker: no token needed."""
    tenant = validate_tenant(request.path_params["tenant"])
    return await _invoke(request, tenant, public=True)


async def _invoke(request: Request, tenant: str, *, public: bool) -> Response:
    workers = workers_of(request)
    name = request.path_params["name"]
    body = await read_body(request, workers.settings.max_request_bytes)
    headers = [(k.lower(), v) for k, v in request.headers.items()]
    if not public:  # the tenant's credentials are not the guest's business
        headers = [(k, v) for k, v in headers if k not in ("authorization", TENANT_HEADER)]
    else:  # nor a stranger's credentials for this node, or the cookies of its origin
        headers = [(k, v) for k, v in headers if k not in ("cookie", TENANT_HEADER)
                   and not (k == "authorization" and _carries_node_token(v))]
    guest_request = GuestRequest(
        method=request.method,
        path="/" + request.path_params.get("path", ""),
        query=list(request.query_params.multi_items()),
        headers=headers,
        body=body,
    )
    outcome = await workers.invoke(tenant, name, guest_request, public=public)
    if outcome.error is not None:
        raise _with_context(outcome, public=public)
    assert outcome.response is not None
    out = outcome.response
    response = Response(out.body, status_code=out.status)
    refused = _HOP_BY_HOP | _PUBLIC_REFUSED if public else _HOP_BY_HOP
    for key, value in out.headers:
        if key.lower() not in refused:
            response.headers.append(key, value)
    if public:
        response.headers["content-security-policy"] = PUBLIC_CSP
        response.headers["x-content-type-options"] = "nosniff"
    response.headers["server-timing"] = _timing(outcome)
    return response


def _carries_node_token(value: str) -> bool:
    """Whether an Authorization value holds a token of this node (tenant ``edn_`` or repository ``edr_``)."""
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            credentials = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
        except ValueError:  # binascii.Error is one
            return False
    return "edn_" in credentials or "edr_" in credentials


@operation(body=RunCode, responses={200: RunResult}, errors=(400, 413))
async def run(request: Request) -> Response:
    """Run code once: ``{"code"|"files", "input", "method", "path", "limits", "allowed_hosts", "env"}``.

    The guest sees a request with ``input`` as its JSON body (``main(input)`` receives it
    directly); nothing is kept, and kv and sql are not available.
    """
    workers = workers_of(request)
    code, body = await read_validated(request, RunCode, workers.settings.max_source_bytes * 2)
    if code.code is not None:
        files: object = {"main.py": code.code}
    elif code.files is not None:
        files = code.files
    else:
        raise ValidationFailed("field 'code' is required (or 'files')", field="code")
    settings = workers.parse_settings({**body, "public": False})
    payload = b"" if code.input is None else _json.dumps(code.input).encode()
    guest_request = GuestRequest(code.method.upper(), code.path, [], [("content-type", "application/json")], payload)
    outcome = await workers.run_once(principal(request).tenant, files, guest_request, settings)
    if outcome.error is not None:
        raise _with_context(outcome, public=False)
    assert outcome.response is not None
    out = outcome.response
    reply: dict[str, Any] = {"status": out.status, "headers": dict(out.headers)}
    content_type = dict(out.headers).get("content-type", "")
    try:
        text = out.body.decode()
        reply["body"] = text
        if content_type.startswith("application/json"):
            reply["json"] = parse_json(text) if text else None
    except (UnicodeDecodeError, ValueError, BadRequest):
        reply["body_b64"] = base64.b64encode(out.body).decode()
    reply.update({"logs": outcome.logs, "output": outcome.output, "usage": _usage(outcome)})
    return json(reply)


@operation(body=WasiRun, responses={200: WasiResult}, errors=(400, 404, 413))
async def wasi_run(request: Request) -> Response:
    """Run a WASI preview 1 command: ``{"module_b64"|"name", "args", "stdin_b64", "env", "files", "limits"}``."""
    workers = workers_of(request)
    _, body = await read_validated(request, WasiRun, workers.settings.max_component_bytes * 4 // 3
                                   + workers.settings.max_request_bytes)
    _check_c_strings(body)
    result = await workers.wasi_run(principal(request).tenant, body)
    return json({
        "exit_code": result.exit_code,
        "stdout_b64": base64.b64encode(result.stdout).decode(),
        "stderr_b64": base64.b64encode(result.stderr).decode(),
        "files": {k: base64.b64encode(v).decode() for k, v in result.files.items()},
        "truncated": result.truncated,
        "usage": {"cpu_ms": round(result.cpu_ms, 3), "wall_ms": round(result.wall_ms, 3)},
    })


@operation(responses={200: UsageList}, query={"tenant": TenantOrEmpty | None, "all": bool | None})
async def usage(request: Request) -> Response:
    """Usage per worker: the caller's tenant, or (admins) ``?tenant=`` or every tenant with ``?all=1``."""
    p = principal(request)
    tenant: str | None = p.tenant
    wanted = query_str(request, "tenant")
    if wanted:  # checked for every caller; only an admin's picks the tenant
        validate_tenant(wanted)
    if p.admin and query_bool(request, "all"):
        tenant = None
    elif p.admin and wanted:
        tenant = wanted
    return json({"usage": await workers_of(request).usage(tenant)})


def _with_context(outcome: Outcome, *, public: bool) -> EdgenodeError:
    """The outcome's error with the guest's logs attached (or, for public callers, stripped of internals)."""
    error = outcome.error
    assert error is not None
    if public:
        error.details = {k: v for k, v in error.details.items() if k not in ("traceback", "output")}
    else:
        error.details = {**error.details, "logs": outcome.logs or None, "usage": _usage(outcome)}
    return error


def _usage(outcome: Outcome) -> dict[str, Any]:
    u = outcome.usage
    return {"cpu_ms": round(u.cpu_ms, 3), "wall_ms": round(u.wall_ms, 3),
            "instantiate_ms": round(u.instantiate_ms, 3), "subrequests": u.subrequests,
            "memory_limit_mb": u.memory_limit_mb}


def _timing(outcome: Outcome) -> str:
    u = outcome.usage
    return f"instantiate;dur={u.instantiate_ms:.3f}, cpu;dur={u.cpu_ms:.3f}, wall;dur={u.wall_ms:.3f}"


def _check_c_strings(body: dict[str, Any]) -> None:
    """Refuse what a WASI command cannot be given: NUL in args or env, file names no file system takes."""
    files = body.get("files")
    if isinstance(files, dict):
        for name in files:
            check_path(name, "files")
    args = body.get("args")
    if isinstance(args, list) and any(isinstance(a, str) and "\x00" in a for a in args):
        raise ValidationFailed("args may not hold NUL", field="args")
    env = body.get("env")
    if isinstance(env, dict) and any("\x00" in k or (isinstance(v, str) and "\x00" in v) for k, v in env.items()):
        raise ValidationFailed("env may not hold NUL", field="env")


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be base64 text", field=name)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ValidationFailed(f"{name} is not valid base64: {exc}", field=name) from None


routes = [
    Route("/v1/workers", list_workers, methods=["GET"]),
    Route("/v1/workers/{name}", deploy, methods=["PUT"]),
    Route("/v1/workers/{name}", get_worker, methods=["GET"]),
    Route("/v1/workers/{name}", delete_worker, methods=["DELETE"]),
    Route("/v1/workers/{name}/rollback", rollback, methods=["POST"]),
    Route("/v1/run", run, methods=["POST"]),
    Route("/v1/wasi/run", wasi_run, methods=["POST"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/w/{name}", invoke, methods=ALL_METHODS),
    Route("/w/{name}/{path:path}", invoke, methods=ALL_METHODS),
    Route("/p/{tenant}/{name}", invoke_public, methods=ALL_METHODS),
    Route("/p/{tenant}/{name}/{path:path}", invoke_public, methods=ALL_METHODS),
]
