"""The artifacts capability: repositories, API commits, Git smart HTTP, tokens, events, gossip."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dulwich.errors import GitProtocolError

from edgenode.artifacts import history, importer, smart
from edgenode.artifacts.events import Events
from edgenode.artifacts.gitserve import GitUploadPack, environment, find_git, git_protocol
from edgenode.artifacts.gossip import RefGossip, check_peer_password
from edgenode.artifacts.repos import SHARED_REF_PREFIXES, RepoInfo, RepoStore, validate_branch, validate_repo_name
from edgenode.artifacts.schema import MIGRATIONS
from edgenode.artifacts.streaming import ClosingStream, collect_body, spool_body, stream_from_thread
from edgenode.artifacts.tokens import RepoTokens, looks_like_repo_token
from edgenode.auth import Principal
from edgenode.egress import Egress
from edgenode.egress import deadline as egress_deadline
from edgenode.errors import (
    BadRequest,
    Forbidden,
    GitAuthRequired,
    ImportFailed,
    PackTooLarge,
    PayloadTooLarge,
    ReadOnlyToken,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from edgenode.store.faults import insufficient, nearly_full, storage_fault
from edgenode.threads import GIT

if TYPE_CHECKING:
    from edgenode.node import Node

log = logging.getLogger(__name__)

#: Largest negotiation body of a fetch (wants and haves), after gunzip.
MAX_UPLOAD_REQUEST_BYTES = 16 * 1024 * 1024
_IMPORT_SCHEMES = ("http://", "https://", "git://")  # git:// only to refuse it with a clear reason


@dataclass(frozen=True)
class GitAccess:
    """Who a Git request acts as: a repository token, a tenant token or a fleet peer."""

    kind: str  # "repo_token" | "tenant_token" | "peer"
    access: str  # "read" | "write"
    token_id: str | None = None


class Artifacts:
    """Git repositories per tenant, served over smart HTTP and gossiped between nodes."""

    name = "artifacts"

    def __init__(self, node: Node, *, now: Callable[[], float] = time.time) -> None:
        self.node = node
        self.settings = node.config.artifacts
        self._now = now
        self.db = node.database("artifacts.db", MIGRATIONS)
        self.repos = RepoStore(node.data_dir / "artifacts", self.db, now=now)
        self.tokens = RepoTokens(self.db, max_ttl_s=self.settings.max_token_ttl_s, now=now)
        self.events = Events(self.db, now=now)
        self.gossip = RefGossip(self, now=now)
        self.egress = Egress(node.config.egress.allow_networks)
        self.git_upload_pack = self._choose_upload_pack()
        self.git_tools = (None if self.git_upload_pack is None else
                          smart.GitTools(self.git_upload_pack.git, environment(self.git_upload_pack.home)))
        self._tasks: set[asyncio.Task[Any]] = set()

    def _choose_upload_pack(self) -> GitUploadPack | None:
        """git's upload-pack when configured (or, for "auto", when found); None means dulwich."""
        mode = self.settings.upload_pack
        if mode not in ("auto", "git", "dulwich"):
            raise ValidationFailed("artifacts.upload_pack must be auto, git or dulwich", field="artifacts.upload_pack")
        if not self.settings.upload_pack_timeout_s > 0:
            raise ValidationFailed("artifacts.upload_pack_timeout_s must be positive",
                                   field="artifacts.upload_pack_timeout_s")
        if mode == "dulwich":
            return None
        git = find_git()
        if git is None:
            if mode == "git":
                raise Unavailable("artifacts.upload_pack is git, but no git binary is on PATH")
            log.warning("no git binary on PATH: clones and fetches are served by dulwich (slower)")
            return None
        return GitUploadPack(git, self.node.data_dir / "artifacts" / ".githome",
                             timeout_s=self.settings.upload_pack_timeout_s)

    # -- capability --------------------------------------------------------

    async def start(self) -> None:
        """Open the database and start anti-entropy."""
        self.db.open()
        self.repos.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.git_upload_pack is not None:
            # git's HOME: empty, so no user configuration applies to what it serves.
            self.git_upload_pack.home.mkdir(exist_ok=True, mode=0o700)
        # A crash in the middle of a push leaves its quarantine behind; nothing in it was ever used.
        for leftover in self.repos.root.glob("*/*.git/objects/incoming-*"):
            await GIT.run(shutil.rmtree, leftover, True)
        # Earlier versions cached clone answers here; git upload-pack made that cache pointless.
        await GIT.run(shutil.rmtree, self.repos.root / ".packcache", True)
        await self.gossip.start()

    async def stop(self) -> None:
        """Stop gossip, wait for background work, close the database."""
        await self.gossip.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.egress.close()
        self.db.close()

    def status(self) -> dict[str, Any]:
        """Repository count and gossip counters."""
        count = self.db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM repos").fetchone()[0])
        runner = self.git_upload_pack
        return {"repos": count, "upload_pack": "dulwich" if runner is None else "git",
                "receive_pack": "dulwich" if self.git_tools is None else "dulwich+git index-pack",
                "upload_pack_running": 0 if runner is None else runner.running,
                **self.gossip.status()}

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- repositories ------------------------------------------------------

    async def get(self, tenant: str, name: str) -> RepoInfo:
        """A repository of ``tenant``; 404 if missing."""
        validate_repo_name(name)
        return await GIT.run(self.repos.get_sync, tenant, name)

    async def describe(self, tenant: str, name: str) -> dict[str, Any]:
        """A repository's metadata, refs and size."""
        info = await self.get(tenant, name)

        def read() -> dict[str, Any]:
            with self.repos.open(info) as repo:
                refs = history.refs(repo)
            return {**info.as_dict(), **refs, "size_bytes": self.repos.disk_usage(info)}

        return await GIT.run(read)

    async def list_repos(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's repositories."""
        infos = await GIT.run(self.repos.list_sync, tenant)
        return [i.as_dict() for i in infos]

    async def create(self, tenant: str, name: str, *, default_branch: str = "main") -> RepoInfo:
        """An empty repository."""
        info = await GIT.run(self.repos.create_sync, tenant, name, default_branch=default_branch,
                                       cap=self.settings.max_repos_per_tenant)
        await self.events.record(tenant, name, "create", default_branch=default_branch)
        self.spawn(self.gossip.announce(info, []))
        return info

    async def fork(self, tenant: str, source: str, name: str, *, default_branch_only: bool = False) -> RepoInfo:
        """A fork of ``source`` that shares its objects (no copy)."""
        src = await self.get(tenant, source)
        info = await GIT.run(self.repos.fork_sync, src, name, default_branch_only=default_branch_only,
                                       cap=self.settings.max_repos_per_tenant)
        await self.events.record(tenant, name, "fork", source=source)
        await self.events.record(tenant, source, "fork", fork=name)
        self.spawn(self.gossip.announce_all_refs(info))
        return info

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a repository (forks keep working)."""
        info = await self.get(tenant, name)
        token_ids = await self.db.read(lambda c: [r[0] for r in c.execute(
            "SELECT id FROM repo_tokens WHERE tenant = ? AND repo = ?", (tenant, name))])
        await GIT.run(self.repos.delete_sync, info)
        for token_id in token_ids:  # gone with the repository, fleet-wide
            await self.tokens.changes.emit("repotoken", token_id)
        await self.events.record(tenant, name, "delete")
        self.spawn(self.gossip.announce_delete(info))

    async def purge_tenant(self, tenant: str) -> None:
        """Delete every repository of ``tenant``, with its tokens and events."""
        for info in await GIT.run(self.repos.list_sync, tenant):
            await self.delete(tenant, info.name)
        await self.db.write(lambda c: [c.execute(f"DELETE FROM {table} WHERE tenant = ?", (tenant,))
                                       for table in ("repo_tokens", "repo_events")])

    async def import_url(
        self, tenant: str, name: str, url: str, *, branch: str | None = None, depth: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RepoInfo:
        """A new repository holding the branches and tags of the Git repository at ``url``.

        ``progress`` is told the bytes received so far as the fetch goes (from a worker thread).
        """
        self.node.store.require_space("git repositories")
        if not isinstance(url, str) or not url.startswith(_IMPORT_SCHEMES) or len(url) > 2000:
            raise ValidationFailed("url must be an http(s):// Git URL", field="url")
        if branch is not None:
            validate_branch(branch)
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValidationFailed("depth must be a positive integer", field="depth")
        until = time.monotonic() + self.settings.import_timeout_s
        client, path = importer.client_for(url, egress=self.egress, tenant=tenant, until=until,
                                           max_redirects=self.node.config.egress.max_redirects,
                                           max_bytes=self.settings.max_pack_bytes)
        client.budget.progress = progress
        info = await GIT.run(self.repos.create_sync, tenant, name, cap=self.settings.max_repos_per_tenant)
        try:
            imported = await GIT.run(self._import_sync, info, client, path, url, branch, depth)
        except BaseException:
            await GIT.run(self.repos.delete_sync, info)
            raise
        await self.events.record(tenant, name, "import", url=_redact_url(url), refs=len(imported))
        self.spawn(self.gossip.announce_all_refs(info))
        return await self.get(tenant, name)

    def _import_sync(self, info: RepoInfo, client: importer.PolicyGitClient, path: str, url: str,
                     branch: str | None, depth: int | None) -> dict[str, str]:
        wanted = (b"refs/heads/" + branch.encode(),) if branch else SHARED_REF_PREFIXES

        def determine_wants(refs: Any, depth: int | None = None) -> Any:
            return sorted({sha for ref, sha in refs.items() if _wanted(ref, wanted) and sha != history.ZERO})

        with self.repos.open(info) as opened:
            repo: Any = opened
            try:
                with egress_deadline(client.until):
                    result = client.fetch(path, repo, determine_wants=determine_wants, depth=depth)
            except Exception as exc:  # dulwich raises many kinds: HTTP, protocol, socket
                raise ImportFailed(f"import from {_redact_url(url)} failed: {importer.describe(exc)}") from None
            finally:
                client.close_all()
            imported: dict[str, str] = {}
            for ref, sha in result.refs.items():
                if sha is None or not _wanted(ref, wanted) or ref.endswith(b"^{}"):
                    continue
                repo.refs.set_if_equals(ref, history.ZERO, sha)
                imported[ref.decode()] = sha.decode()
            symrefs: dict[bytes, bytes] = {bytes(k): bytes(v) for k, v in (result.symrefs or {}).items()}
            head = symrefs.get(b"HEAD")
            if branch:
                head = b"refs/heads/" + branch.encode()
            if head and head.decode() in imported:
                repo.refs.set_symbolic_ref(b"HEAD", head)
                default = head[len(b"refs/heads/"):].decode()
                self.db.write_sync(lambda c: c.execute(
                    "UPDATE repos SET default_branch = ? WHERE tenant = ? AND name = ?",
                    (default, info.tenant, info.name)))
        if not imported:
            raise ImportFailed(f"{_redact_url(url)} has no branches or tags to import")
        return imported

    # -- history -----------------------------------------------------------

    async def commit(
        self,
        tenant: str,
        name: str,
        *,
        branch: str,
        message: str,
        author: Any,
        files: Any,
        parent: str | None,
    ) -> dict[str, Any]:
        """Commit files on a branch through the API; 409 if ``parent`` is not the head."""
        validate_branch(branch)
        if not isinstance(message, str) or not message.strip() or len(message) > 64 * 1024:
            raise ValidationFailed("message must be a non-empty string (at most 64 KiB)", field="message")
        changes = history.parse_files(files, max_bytes=self.settings.max_commit_bytes)
        author_bytes = history.parse_author(author, f"{tenant} <{tenant}@edgenode>".encode())
        info = await self.get(tenant, name)

        def run() -> tuple[bytes, bytes | None]:
            with self.repos.lock(tenant, name), self.repos.open(info) as repo:
                return history.commit_files(repo, branch=branch, message=message, author=author_bytes,
                                            changes=changes, parent=parent, now=self._now())

        try:
            sha, old = await GIT.run(run)
        except OSError as exc:
            raise (storage_fault(exc, info.path, "git repositories") or exc) from exc
        ref = f"refs/heads/{branch}"
        await self.events.record(tenant, name, "commit", ref=ref, old=_hex(old), new=sha.decode())
        self.spawn(self.gossip.announce(info, [(ref, _hex(old), sha.decode())]))
        return {"commit": sha.decode(), "branch": branch, "parent": _hex(old)}

    async def read(self, tenant: str, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a ``history`` reader on the repository in a thread."""
        info = await self.get(tenant, name)

        def run() -> Any:
            with self.repos.open(info) as repo:
                return fn(repo, *args, **kwargs)

        return await GIT.run(run)

    # -- tokens and Git auth -----------------------------------------------

    async def issue_token(self, tenant: str, name: str, access: str, ttl_s: float | None) -> dict[str, Any]:
        """A repository token (read or write) with a time to live."""
        await self.get(tenant, name)
        issued = await self.tokens.issue(tenant, name, access, self.settings.default_token_ttl_s
                                         if ttl_s is None else ttl_s)
        return {"id": issued.id, "access": issued.access, "created_at": issued.created_at,
                "expires_at": issued.expires_at, "token": issued.token}

    async def authorize_git(self, tenant: str, name: str, password: str | None, *, write: bool) -> GitAccess:
        """Check Git basic-auth credentials for a repository; 401 (with a challenge) or 403."""
        if not password:
            raise GitAuthRequired("this repository needs credentials: a repository token as the password")
        try:
            if looks_like_repo_token(password):
                token_id, access = await GIT.run(self.tokens.check_sync, tenant, name, password)
                found = GitAccess("repo_token", access, token_id)
            elif password.startswith("edp_"):
                secret = self.node.config.fleet_secret_bytes()
                if secret is None or not check_peer_password(secret, tenant, name, password, self._now()):
                    raise Unauthorized("invalid peer credentials")
                found = GitAccess("peer", "read")
            else:
                principal: Principal = await GIT.run(self.node.auth.authenticate, password)
                if principal.tenant != tenant and not principal.admin:
                    raise Unauthorized("this token is not for this repository's tenant")
                found = GitAccess("tenant_token", "write", principal.token_id)
        except Unauthorized as exc:
            raise GitAuthRequired(exc.message, reason=exc.code) from exc
        if write and found.access != "write":
            raise ReadOnlyToken("a read-only token cannot push")
        await self.get(tenant, name)
        return found

    async def _git_events(self, tenant: str, name: str, access: GitAccess, service: str,
                          items: list[tuple[str, dict[str, Any]]]) -> None:
        """Record a Git request's events and its token use in one write (one fsync, not three)."""
        token = access.token_id if access.kind == "repo_token" else None
        if token is not None:
            items = [("token_used", {"token": token, "access": access.access, "service": service}), *items]
        await self.events.record_many(tenant, name, items, touch_token=token)

    # -- smart HTTP --------------------------------------------------------

    async def advertise(self, tenant: str, name: str, service: str, access: GitAccess, *,
                        protocol: str | None = None) -> bytes:
        """The ``info/refs`` body for ``service``; ``protocol`` is the client's Git-Protocol header."""
        if service not in smart.SERVICES:
            raise Forbidden(f"unsupported service {service!r}")
        info = await self.get(tenant, name)
        if service == "git-upload-pack" and self.git_upload_pack is not None:
            return await self.git_upload_pack.advertise(str(info.path), git_protocol(protocol))
        return await GIT.run(smart.advertise, str(info.path), service)

    async def upload_pack(
        self, tenant: str, name: str, body: AsyncIterator[bytes], *, gzipped: bool, access: GitAccess,
        protocol: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Stream the answer to a fetch or clone; errors before the first byte are raised."""
        info = await self.get(tenant, name)
        kind: str | None
        if self.git_upload_pack is not None:
            request, answer = await self.git_upload_pack.serve(
                str(info.path), body, gzipped=gzipped, limit=MAX_UPLOAD_REQUEST_BYTES, protocol=git_protocol(protocol))
            # A v2 ls-refs (or object-info) is the advertisement, not a clone: no event for it.
            kind = None if request.command not in (None, "fetch") else "fetch" if request.haves else "clone"
        else:
            kind, answer = await self._dulwich_upload_pack(str(info.path), body, gzipped=gzipped)
        if access.kind == "peer" or kind is None:
            return answer
        # The events are written while the pack streams, and are durable before it ends.
        recording = asyncio.ensure_future(
            self._git_events(tenant, name, access, "git-upload-pack", [(kind, {"via": access.kind})]))

        async def recorded() -> None:
            await recording

        return ClosingStream(answer, recorded)

    async def _dulwich_upload_pack(self, repo_path: str, body: AsyncIterator[bytes], *,
                                   gzipped: bool) -> tuple[str, AsyncIterator[bytes]]:
        """The fallback without git: ("clone" or "fetch", dulwich's answer from a worker thread)."""
        raw = await collect_body(body, MAX_UPLOAD_REQUEST_BYTES, gzipped=gzipped)
        kind = "fetch" if b"0032have " in raw else "clone"
        stream = stream_from_thread(lambda write: smart.upload_pack(repo_path, raw, write))
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = b""
        except GitProtocolError as exc:
            raise BadRequest(f"git protocol error: {exc}") from exc

        async def rest() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in stream:
                yield chunk

        async def stop_thread() -> None:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

        return kind, ClosingStream(rest(), stop_thread)

    def _receive(self, info: RepoInfo, spool: Any) -> smart.PushOutcome:
        # Under the lock every ref write of this node to the repository takes (a peer's sync too),
        # with the deletions' tombstones recorded before it is released.
        with self.repos.lock(info.tenant, info.name):
            outcome = smart.receive_pack(str(info.path), spool, protected=self.settings.protected_branches,
                                         git=self.git_tools)
            self.gossip.record_deletions(info.tenant, info.name, outcome.updated)
            return outcome

    async def receive_pack(
        self, tenant: str, name: str, body: AsyncIterator[bytes], *, gzipped: bool, access: GitAccess
    ) -> bytes:
        """Take a push: spool it (413 past the limit), apply it in quarantine, announce what moved."""
        info = await self.get(tenant, name)
        self.node.store.require_space("git repositories")
        limit = self.settings.max_pack_bytes
        spool = tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024, dir=str(info.path))
        try:
            try:
                await spool_body(body, spool, limit, gzipped=gzipped)
            except PayloadTooLarge as exc:
                await self.events.record(tenant, name, "push_refused", reason="pack_too_large", limit=limit)
                raise PackTooLarge(f"push exceeds the pack limit of {limit} bytes; nothing was kept",
                                   limit=limit) from exc
            spool.seek(0)
            try:
                outcome = await GIT.run(self._receive, info, spool)
            except GitProtocolError as exc:
                raise BadRequest(f"git protocol error: {exc}") from exc
        except OSError as exc:  # spooling the pack
            raise (storage_fault(exc, info.path, "git repositories") or exc) from exc
        finally:
            spool.close()
        if not outcome.updated and not outcome.refused and nearly_full(info.path):
            # git reports a full disk in the push's status ("unpack failed"); answer like every other write.
            raise insufficient(info.path, "git repositories")
        if outcome.updated:
            self.spawn(self.gossip.announce(info, outcome.updated))
        items: list[tuple[str, dict[str, Any]]] = []
        if outcome.updated:
            items.append(("push", {"via": access.kind, "token": access.token_id,
                                   "updates": [{"ref": r, "old": o, "new": n} for r, o, n in outcome.updated]}))
        if outcome.refused:
            items.append(("push_refused", {"refs": [{"ref": r, "reason": why} for r, why in outcome.refused]}))
        await self._git_events(tenant, name, access, "git-receive-pack", items)
        return outcome.output


# -- helpers ---------------------------------------------------------------------------


def _wanted(ref: bytes, prefixes: tuple[bytes, ...]) -> bool:
    return any(ref == p or (p.endswith(b"/") and ref.startswith(p)) for p in prefixes)


def _hex(sha: bytes | None) -> str | None:
    return sha.decode() if sha else None


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


__all__ = ["Artifacts", "GitAccess"]
