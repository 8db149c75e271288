"""Artifacts routes: ``/v1/repos/...`` (bearer token), ``/git/...`` (Git smart HTTP, basic auth),
and ``/v1/peer/artifacts/...`` (fleet-signed ref gossip).

Git URLs are ``/git/{tenant}/{name}.git``; ``/git/{name}.git`` is short for the ``default``
tenant. Git clients authenticate with HTTP basic auth: any user name, and as password a
repository token, or a bearer token of the owning tenant.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgenode.api.common import field, json, node_of, principal, read_json
from edgenode.api.jobs import accepted, wants_job
from edgenode.api.parsing import query_int, query_str
from edgenode.artifacts import Artifacts, GitAccess, history
from edgenode.artifacts.repos import validate_repo_name
from edgenode.auth import DEFAULT_TENANT, validate_tenant
from edgenode.errors import (
    ArtifactNotFound,
    Forbidden,
    GitAuthRequired,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from edgenode.jobs import Job

#: Git smart HTTP and peer gossip check their own credentials.
public = ("/git/", "/v1/peer/artifacts/")

_NO_CACHE = {"Cache-Control": "no-cache, max-age=0, must-revalidate", "Pragma": "no-cache",
             "Expires": "Fri, 01 Jan 1980 00:00:00 GMT"}


def _artifacts(request: Request) -> Artifacts:
    cap: Artifacts | None = getattr(node_of(request), "artifacts", None)
    if cap is None:
        raise Unavailable("artifacts are not enabled on this node")
    return cap


# -- repositories ----------------------------------------------------------------------


async def create_repo(request: Request) -> Response:
    """Create a repository: ``{"name", "default_branch"?, "import"?: {"url", "branch"?, "depth"?}}``."""
    tenant = principal(request).tenant
    data = await read_json(request)
    name = validate_repo_name(field(data, "name", str, required=True))
    arts = _artifacts(request)
    source = field(data, "import", dict, None)
    if source is not None:
        url = field(source, "url", str, required=True)
        branch = field(source, "branch", str, None)
        depth = field(source, "depth", int, None, lo=1, hi=2**31 - 1)

        async def run_import(job: Job | None = None) -> tuple[int, Any]:
            progress = None if job is None else (lambda received: job.report(bytes_received=received))
            info = await arts.import_url(tenant, name, url, branch=branch, depth=depth, progress=progress)
            return 201, await arts.describe(tenant, info.name)

        if wants_job(request):  # an import may take minutes: answer at once, the caller follows the job
            return accepted(node_of(request).jobs.start(tenant, "repo_import", run_import))
        status, body = await run_import()
        return json(body, status=status)
    info = await arts.create(tenant, name, default_branch=field(data, "default_branch", str, "main"))
    return json(await arts.describe(tenant, info.name), status=201)


async def list_repos(request: Request) -> Response:
    """The caller's repositories."""
    return json({"repos": await _artifacts(request).list_repos(principal(request).tenant)})


async def get_repo(request: Request) -> Response:
    """A repository with its refs."""
    return json(await _artifacts(request).describe(principal(request).tenant, request.path_params["name"]))


async def delete_repo(request: Request) -> Response:
    """Delete a repository; its forks keep their history."""
    await _artifacts(request).delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)


async def fork_repo(request: Request) -> Response:
    """Fork: ``{"name", "default_branch_only"?}``; shares objects with the source, copies none."""
    tenant = principal(request).tenant
    data = await read_json(request)
    arts = _artifacts(request)
    info = await arts.fork(tenant, request.path_params["name"], validate_repo_name(field(data, "name", str,
                                                                                        required=True)),
                           default_branch_only=field(data, "default_branch_only", bool, False))
    return json(await arts.describe(tenant, info.name), status=201)


# -- history ---------------------------------------------------------------------------


async def commit(request: Request) -> Response:
    """Commit files: ``{"branch", "message", "author"?, "files": {path: text|{base64}|null}, "parent"?}``."""
    data = await read_json(request)
    arts = _artifacts(request)
    parent = data.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ValidationFailed("parent must be a commit id, or an empty string for a new branch", field="parent")
    result = await arts.commit(
        principal(request).tenant,
        request.path_params["name"],
        branch=field(data, "branch", str, required=True),
        message=field(data, "message", str, required=True),
        author=data.get("author"),
        files=data.get("files"),
        parent=parent,
    )
    return json(result, status=201)


async def refs(request: Request) -> Response:
    """Every ref of the repository, and HEAD."""
    return json(await _artifacts(request).read(principal(request).tenant, request.path_params["name"],
                                               history.refs))


async def log(request: Request) -> Response:
    """Commits from ``?ref=`` (default: the default branch), newest first; ``?limit=``, ``?path=``."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    ref = query_str(request, "ref") or (await arts.get(tenant, name)).default_branch
    limit = query_int(request, "limit", 50, lo=1, hi=1000)
    commits = await arts.read(tenant, name, history.log, ref, limit=limit, path=query_str(request, "path"))
    return json({"ref": ref, "commits": commits})


async def tree(request: Request) -> Response:
    """``/tree/{ref}/{path}``: a directory listing, or a file's content inline."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    rest = request.path_params.get("rest", "")
    return json(await _artifacts(request).read(tenant, name, _tree_at, rest))


def _tree_at(repo: Any, rest: str) -> Any:
    ref, path = _split_ref(repo, rest)
    return {"ref": ref, **history.tree(repo, ref, path)}


def _blob_at(repo: Any, rest: str) -> bytes:
    ref, path = _split_ref(repo, rest)
    return history.blob(repo, ref, path)


def _split_ref(repo: Any, rest: str) -> tuple[str, str]:
    """Split ``ref/with/slashes/path/to/file`` at the shortest prefix that names a revision."""
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise ValidationFailed("a ref is required: /tree/{ref}/{path}", field="ref")
    for i in range(1, len(parts) + 1):
        candidate = "/".join(parts[:i])
        try:
            history.resolve(repo, candidate)
        except (ArtifactNotFound, ValidationFailed, KeyError):
            continue
        return candidate, "/".join(parts[i:])
    raise ArtifactNotFound(f"no revision at the start of {rest!r}", ref=parts[0])


async def blob(request: Request) -> Response:
    """``/blob/{ref}/{path}``: the file's raw bytes."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    data = await _artifacts(request).read(tenant, name, _blob_at, request.path_params["rest"])
    return Response(data, media_type="application/octet-stream")


async def diff(request: Request) -> Response:
    """Changes and a unified patch between ``?from=`` and ``?to=``."""
    base, head = query_str(request, "from"), query_str(request, "to")
    if not base or not head:
        raise ValidationFailed("from and to are required", field="from" if not base else "to")
    return json(await _artifacts(request).read(principal(request).tenant, request.path_params["name"],
                                               history.diff, base, head))


async def events(request: Request) -> Response:
    """The repository's events, oldest first; ``?after=<id>``, ``?limit=``, ``?kind=``."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    await arts.get(tenant, name)
    items = await arts.events.list(tenant, name, after=query_int(request, "after", 0, lo=0, hi=2**62),
                                   limit=query_int(request, "limit", 100, lo=1, hi=1000),
                                   kind=query_str(request, "kind"))
    return json({"events": items})


# -- tokens ----------------------------------------------------------------------------


async def create_token(request: Request) -> Response:
    """A repository token: ``{"access": "read"|"write", "ttl_s"?}``."""
    data = await read_json(request)
    issued = await _artifacts(request).issue_token(
        principal(request).tenant, request.path_params["name"], field(data, "access", str, required=True),
        field(data, "ttl_s", (int, float), None),
    )
    return json(issued, status=201)


async def list_tokens(request: Request) -> Response:
    """The repository's tokens (never their secrets)."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    await arts.get(tenant, name)
    return json({"tokens": await arts.tokens.list(tenant, name)})


async def revoke_token(request: Request) -> Response:
    """Revoke a repository token."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    await arts.get(tenant, name)
    await arts.tokens.revoke(tenant, name, request.path_params["id"])
    return Response(status_code=204)


# -- Git smart HTTP --------------------------------------------------------------------


def _git_target(request: Request) -> tuple[str, str]:
    tenant = request.path_params.get("tenant", DEFAULT_TENANT)
    try:
        return validate_tenant(tenant), validate_repo_name(request.path_params["name"])
    except ValidationFailed as exc:
        raise ArtifactNotFound("no such repository") from exc


def _password(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise GitAuthRequired("malformed basic auth header") from exc
        user, _, password = decoded.partition(":")
        # Some tools put the token in the user name (https://TOKEN@host/...); accept that too.
        return password or user or None
    if scheme.lower() == "bearer":
        return value.strip() or None
    return None


async def _git_access(request: Request, *, write: bool) -> tuple[Artifacts, str, str, GitAccess]:
    tenant, name = _git_target(request)
    arts = _artifacts(request)
    access = await arts.authorize_git(tenant, name, _password(request), write=write)
    return arts, tenant, name, access


async def git_info_refs(request: Request) -> Response:
    """``info/refs?service=git-upload-pack|git-receive-pack``: the ref advertisement."""
    service = query_str(request, "service", "")
    if service not in ("git-upload-pack", "git-receive-pack"):
        raise Forbidden("only smart HTTP is served: ask for ?service=git-upload-pack or git-receive-pack")
    arts, tenant, name, access = await _git_access(request, write=service == "git-receive-pack")
    body = await arts.advertise(tenant, name, service, access, protocol=request.headers.get("git-protocol"))
    return Response(body, media_type=f"application/x-{service}-advertisement", headers=_NO_CACHE)


def _check_type(request: Request, service: str) -> None:
    expected = f"application/x-{service}-request"
    if request.headers.get("content-type", "").split(";")[0].strip() != expected:
        raise UnsupportedMediaType(f"expected Content-Type {expected}")


def _gzipped(request: Request) -> bool:
    return request.headers.get("content-encoding", "").lower() in ("gzip", "x-gzip")


async def git_upload_pack(request: Request) -> Response:
    """A fetch or clone; the pack streams back as dulwich writes it."""
    _check_type(request, "git-upload-pack")
    arts, tenant, name, access = await _git_access(request, write=False)
    stream = await arts.upload_pack(tenant, name, request.stream(), gzipped=_gzipped(request), access=access,
                                    protocol=request.headers.get("git-protocol"))
    return _ClosingStream(stream, media_type="application/x-git-upload-pack-result", headers=_NO_CACHE)


class _ClosingStream(StreamingResponse):
    """A streaming response that closes its iterator however it ends (a client that goes away
    included), so a ``git upload-pack`` behind it is killed now rather than when it is collected."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                await closer()


async def git_receive_pack(request: Request) -> Response:
    """A push: refused whole with 413 past the pack limit, per ref by policy."""
    _check_type(request, "git-receive-pack")
    arts, tenant, name, access = await _git_access(request, write=True)
    body = await arts.receive_pack(tenant, name, request.stream(), gzipped=_gzipped(request), access=access)
    return Response(body, media_type="application/x-git-receive-pack-result", headers=_NO_CACHE)


# -- peer gossip -----------------------------------------------------------------------


async def peer_announce(request: Request) -> Response:
    """A fleet-signed ref announcement from a peer."""
    node = node_of(request)
    cluster = getattr(node, "cluster", None)
    if cluster is None:
        raise Unavailable("this node has no cluster layer")
    peer_id, body = await cluster.authenticate(request)
    return json(await _artifacts(request).gossip.receive(peer_id, body), status=202)


async def peer_refs(request: Request) -> Response:
    """Every repository's branches and tags, signed, for a peer's anti-entropy round."""
    node = node_of(request)
    cluster = getattr(node, "cluster", None)
    if cluster is None:
        raise Unavailable("this node has no cluster layer")
    await cluster.authenticate(request)
    nonce = (query_str(request, "nonce", "") or "")[:64]
    return json(await _artifacts(request).gossip.listing(nonce))


def _git_routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/info/refs", git_info_refs, methods=["GET"]),
        Route(prefix + "/git-upload-pack", git_upload_pack, methods=["POST"]),
        Route(prefix + "/git-receive-pack", git_receive_pack, methods=["POST"]),
    ]


routes = [
    Route("/v1/repos", create_repo, methods=["POST"]),
    Route("/v1/repos", list_repos, methods=["GET"]),
    Route("/v1/repos/{name}", get_repo, methods=["GET"]),
    Route("/v1/repos/{name}", delete_repo, methods=["DELETE"]),
    Route("/v1/repos/{name}/fork", fork_repo, methods=["POST"]),
    Route("/v1/repos/{name}/commits", commit, methods=["POST"]),
    Route("/v1/repos/{name}/refs", refs, methods=["GET"]),
    Route("/v1/repos/{name}/log", log, methods=["GET"]),
    Route("/v1/repos/{name}/tree/{rest:path}", tree, methods=["GET"]),
    Route("/v1/repos/{name}/blob/{rest:path}", blob, methods=["GET"]),
    Route("/v1/repos/{name}/diff", diff, methods=["GET"]),
    Route("/v1/repos/{name}/events", events, methods=["GET"]),
    Route("/v1/repos/{name}/tokens", create_token, methods=["POST"]),
    Route("/v1/repos/{name}/tokens", list_tokens, methods=["GET"]),
    Route("/v1/repos/{name}/tokens/{id}", revoke_token, methods=["DELETE"]),
    *_git_routes("/git/{tenant}/{name}.git"),
    *_git_routes("/git/{name}.git"),
    Route("/v1/peer/artifacts/announce", peer_announce, methods=["POST"]),
    Route("/v1/peer/artifacts/refs", peer_refs, methods=["GET"]),
]
