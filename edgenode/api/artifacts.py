"""Artifacts routes: ``/v1/repos/...`` (bearer token), ``/git/...`` (Git smart HTTP, basic auth),
and ``/v1/peer/artifacts/...`` (fleet-signed ref gossip).

Git URLs are ``/git/{tenant}/{name}.git``; ``/git/{name}.git`` is short for the ``default``
tenant. Git clients authenticate with HTTP basic auth: any user name, and as password a
repository token, or a bearer token of the owning tenant.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgenode.api.common import json, node_of, principal
from edgenode.api.jobs import PREFER, JobInfo, accepted, wants_job
from edgenode.api.parsing import PATH_MAX, query_int, query_str
from edgenode.api.schema import Base64, Body, Raw, Reply, Stream, operation, pattern, read_model, read_validated
from edgenode.artifacts import Artifacts, GitAccess, history
from edgenode.artifacts.repos import BRANCH_NAME, REPO_NAME, validate_repo_name
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


_REPO_NAME = "^(?!.*\\.\\.)(?!.*\\.git$)(?!.*\\.lock$)" + REPO_NAME.pattern[1:].replace("\\Z", "$")
RepoName = Annotated[str, Field(pattern=_REPO_NAME,
                                description="A repository: 1-100 lower-case letters, digits, '.', '_', '-'; "
                                            "no '..', not ending in .git or .lock")]
Branch = Annotated[str, pattern(BRANCH_NAME, "A branch name")]
Text = Annotated[str, Field(max_length=PATH_MAX)]
Revision = Annotated[str, Field(min_length=1, max_length=PATH_MAX)]


class ImportSource(Body):
    """A Git URL to import from."""

    url: str = Field(pattern="^https?://[^/?#@]+")
    branch: str | None = None
    depth: int | None = Field(None, ge=1, le=2**31 - 1)


class CreateRepo(Body):
    """A new repository, empty or imported."""

    name: RepoName
    default_branch: Branch = "main"
    import_: ImportSource | None = Field(None, alias="import")


class ForkRepo(Body):
    """A fork's name."""

    name: RepoName
    default_branch_only: bool = False


class Author(Body):
    """A commit's author."""

    name: str
    email: str


class FileContent(Body):
    """A file's content as ``text`` or ``base64`` bytes, and whether it is executable."""

    requires_one_of = ("text", "base64")

    text: str | None = None
    base64: Base64 | None = None
    executable: bool = False


class Commit(Body):
    """Files to commit on a branch: text, ``{"base64"}`` or null (delete)."""

    branch: Branch
    message: str = Field(pattern="^\\s*\\S", max_length=64 * 1024)
    author: Author | None = None
    files: dict[str, str | FileContent | None] = Field(min_length=1, description="Path to text, a FileContent, "
                                                                                "or null to delete the file")
    parent: str | None = Field(None, description="The commit the branch must be at; \"\" for a new branch")


class CreateRepoToken(Body):
    """A repository token's access and time to live."""

    access: Literal["read", "write"]
    ttl_s: float | None = Field(None, gt=0)


class Repo(Reply):
    """A repository with its refs."""

    name: str
    tenant: str
    default_branch: str
    fork_of: str | None = None


class RepoList(Reply):
    """The caller's repositories."""

    repos: list[dict[str, Any]]


class Refs(Reply):
    """Every ref and HEAD."""

    head: str | None
    refs: dict[str, str]


class Committed(Reply):
    """The new commit."""


class Log(Reply):
    """Commits, newest first."""

    ref: str
    commits: list[dict[str, Any]]


class TreeEntry(Reply):
    """A directory's entries, or a file's content."""

    ref: str
    type: str
    path: str


class Diff(Reply):
    """Changes between two revisions, with a unified patch."""


class RepoEvents(Reply):
    """The repository's events."""

    events: list[dict[str, Any]]


class RepoToken(Reply):
    """A repository token, with its secret (shown once)."""

    id: str
    access: str
    created_at: float
    expires_at: float | None
    token: str


class RepoTokens(Reply):
    """A repository's tokens, without secrets."""

    tokens: list[dict[str, Any]]


class PeerMessage(Reply):
    """A signed fleet message (its shape belongs to the gossip protocol)."""


_REPO = {"name": RepoName}
_GIT = {"name": RepoName, "tenant": Annotated[str, Field(max_length=63)]}


def _artifacts(request: Request) -> Artifacts:
    cap: Artifacts | None = getattr(node_of(request), "artifacts", None)
    if cap is None:
        raise Unavailable("artifacts are not enabled on this node")
    return cap


# -- repositories ----------------------------------------------------------------------


@operation(body=CreateRepo, responses={201: Repo, 202: JobInfo}, errors=(400, 409, 502), headers=PREFER)
async def create_repo(request: Request) -> Response:
    """Create a repository: ``{"name", "default_branch"?, "import"?: {"url", "branch"?, "depth"?}}``."""
    tenant = principal(request).tenant
    body = await read_model(request, CreateRepo)
    name = validate_repo_name(body.name)
    arts = _artifacts(request)
    source = body.import_
    if source is not None:
        url, branch, depth = source.url, source.branch, source.depth

        async def run_import(job: Job | None = None) -> tuple[int, Any]:
            progress = None if job is None else (lambda received: job.report(bytes_received=received))
            info = await arts.import_url(tenant, name, url, branch=branch, depth=depth, progress=progress)
            return 201, await arts.describe(tenant, info.name)

        if wants_job(request):  # an import may take minutes: answer at once, the caller follows the job
            return accepted(node_of(request).jobs.start(tenant, "repo_import", run_import))
        status, described = await run_import()
        return json(described, status=status)
    info = await arts.create(tenant, name, default_branch=body.default_branch)
    return json(await arts.describe(tenant, info.name), status=201)


@operation(responses={200: RepoList})
async def list_repos(request: Request) -> Response:
    """The caller's repositories."""
    return json({"repos": await _artifacts(request).list_repos(principal(request).tenant)})


@operation(responses={200: Repo}, errors=(404,), path=_REPO)
async def get_repo(request: Request) -> Response:
    """A repository with its refs."""
    return json(await _artifacts(request).describe(principal(request).tenant, request.path_params["name"]))


@operation(responses={204: None}, errors=(404,), path=_REPO)
async def delete_repo(request: Request) -> Response:
    """Delete a repository; its forks keep their history."""
    await _artifacts(request).delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)


@operation(body=ForkRepo, responses={201: Repo}, errors=(400, 404, 409), path=_REPO)
async def fork_repo(request: Request) -> Response:
    """Fork: ``{"name", "default_branch_only"?}``; shares objects with the source, copies none."""
    tenant = principal(request).tenant
    body = await read_model(request, ForkRepo)
    arts = _artifacts(request)
    info = await arts.fork(tenant, request.path_params["name"], validate_repo_name(body.name),
                           default_branch_only=body.default_branch_only)
    return json(await arts.describe(tenant, info.name), status=201)


# -- history ---------------------------------------------------------------------------


@operation(body=Commit, responses={201: Committed}, errors=(400, 404, 409, 413), path=_REPO)
async def commit(request: Request) -> Response:
    """Commit files: ``{"branch", "message", "author"?, "files": {path: text|{base64}|null}, "parent"?}``."""
    body, data = await read_validated(request, Commit)
    arts = _artifacts(request)
    result = await arts.commit(
        principal(request).tenant,
        request.path_params["name"],
        branch=body.branch,
        message=body.message,
        author=data.get("author"),
        files=data.get("files"),
        parent=body.parent,
    )
    return json(result, status=201)


@operation(responses={200: Refs}, errors=(404,), path=_REPO)
async def refs(request: Request) -> Response:
    """Every ref of the repository, and HEAD."""
    return json(await _artifacts(request).read(principal(request).tenant, request.path_params["name"],
                                               history.refs))


@operation(responses={200: Log}, errors=(400, 404), path=_REPO,
           query={"ref": Text | None, "path": Text | None, "limit": Annotated[int, Field(ge=1, le=1000)] | None})
async def log(request: Request) -> Response:
    """Commits from ``?ref=`` (default: the default branch), newest first; ``?limit=``, ``?path=``."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    ref = query_str(request, "ref") or (await arts.get(tenant, name)).default_branch
    limit = query_int(request, "limit", 50, lo=1, hi=1000)
    commits = await arts.read(tenant, name, history.log, ref, limit=limit, path=query_str(request, "path"))
    return json({"ref": ref, "commits": commits})


@operation(responses={200: TreeEntry}, errors=(400, 404), path={**_REPO, "rest": str})
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


@operation(responses={200: Raw()}, errors=(400, 404), path={**_REPO, "rest": str})
async def blob(request: Request) -> Response:
    """``/blob/{ref}/{path}``: the file's raw bytes."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    data = await _artifacts(request).read(tenant, name, _blob_at, request.path_params["rest"])
    return Response(data, media_type="application/octet-stream")


@operation(responses={200: Diff}, errors=(400, 404), path=_REPO, query={"from": Revision, "to": Revision})
async def diff(request: Request) -> Response:
    """Changes and a unified patch between ``?from=`` and ``?to=``."""
    base, head = query_str(request, "from"), query_str(request, "to")
    if not base or not head:
        raise ValidationFailed("from and to are required", field="from" if not base else "to")
    return json(await _artifacts(request).read(principal(request).tenant, request.path_params["name"],
                                               history.diff, base, head))


@operation(responses={200: RepoEvents}, errors=(404,), path=_REPO,
           query={"after": Annotated[int, Field(ge=0, le=2**62)] | None,
                  "limit": Annotated[int, Field(ge=1, le=1000)] | None, "kind": Text | None})
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


@operation(body=CreateRepoToken, responses={201: RepoToken}, errors=(400, 404), path=_REPO)
async def create_token(request: Request) -> Response:
    """A repository token: ``{"access": "read"|"write", "ttl_s"?}``."""
    body = await read_model(request, CreateRepoToken)
    issued = await _artifacts(request).issue_token(principal(request).tenant, request.path_params["name"],
                                                   body.access, body.ttl_s)
    return json(issued, status=201)


@operation(responses={200: RepoTokens}, errors=(404,), path=_REPO)
async def list_tokens(request: Request) -> Response:
    """The repository's tokens (never their secrets)."""
    tenant, name = principal(request).tenant, request.path_params["name"]
    arts = _artifacts(request)
    await arts.get(tenant, name)
    return json({"tokens": await arts.tokens.list(tenant, name)})


@operation(responses={204: None}, errors=(404,), path=_REPO)
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


@operation(responses={200: Stream("application/x-git-upload-pack-advertisement", "git",
                                  description="or application/x-git-receive-pack-advertisement")},
           errors=(401, 403, 404), path=_GIT, security="git",
           query={"service": Literal["git-upload-pack", "git-receive-pack"]})
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


@operation(body=Stream("application/x-git-upload-pack-request", "git"),
           responses={200: Stream("application/x-git-upload-pack-result", "git")}, errors=(401, 403, 404, 415),
           path=_GIT, security="git")
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


@operation(body=Stream("application/x-git-receive-pack-request", "git"),
           responses={200: Stream("application/x-git-receive-pack-result", "git")}, errors=(401, 403, 404, 413, 415),
           path=_GIT, security="git")
async def git_receive_pack(request: Request) -> Response:
    """A push: refused whole with 413 past the pack limit, per ref by policy."""
    _check_type(request, "git-receive-pack")
    arts, tenant, name, access = await _git_access(request, write=True)
    body = await arts.receive_pack(tenant, name, request.stream(), gzipped=_gzipped(request), access=access)
    return Response(body, media_type="application/x-git-receive-pack-result", headers=_NO_CACHE)


# -- peer gossip -----------------------------------------------------------------------


@operation(body=PeerMessage, responses={202: PeerMessage}, errors=(400, 401, 503), security="peer")
async def peer_announce(request: Request) -> Response:
    """A fleet-signed ref announcement from a peer."""
    node = node_of(request)
    cluster = getattr(node, "cluster", None)
    if cluster is None:
        raise Unavailable("this node has no cluster layer")
    peer_id, body = await cluster.authenticate(request)
    return json(await _artifacts(request).gossip.receive(peer_id, body), status=202)


@operation(responses={200: PeerMessage}, errors=(401, 503), security="peer",
           query={"nonce": Annotated[str, Field(max_length=PATH_MAX)] | None})
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
