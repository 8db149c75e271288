"""Ref gossip: signed announcements, fetch of missing objects, fast-forward only, anti-entropy.

When a ref moves here, the node announces ``(tenant, repo, ref, old, new, origin)`` to every
peer, signed with the fleet key (on top of the cluster layer's signed transport, so an
announcement stays verifiable wherever it is stored or relayed). A peer that lacks the
objects fetches them from the announcer over smart HTTP with dulwich, using a short-lived
read credential derived from the fleet key, then moves its ref only by fast-forward. An
update that does not fast-forward is kept under ``refs/conflicts/<origin>/...``, so no
commit is ever dropped. Periodically each node compares ref listings with a random peer
and pulls what it missed.

A deleted branch or tag leaves a tombstone (the commit it pointed at, and when): it travels in
the announcement and in listings, a peer whose ref still points there deletes it too, and no
state of the ref that the deletion covered (that commit or an ancestor, announced before the
deletion or listed by a peer that has not heard of it) brings it back. A ref that moved on
elsewhere meanwhile is kept: a deletion never drops a commit it did not see.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dulwich.client import HttpGitClient
from dulwich.refs import Ref, check_ref_format

from edgenode.artifacts.history import ZERO, is_ancestor
from edgenode.artifacts.repos import SHARED_REF_PREFIXES, RepoInfo, validate_repo_name
from edgenode.auth import validate_tenant
from edgenode.errors import AnnouncementRejected, EdgenodeError, InvalidJson, Unavailable
from edgenode.threads import GIT

if TYPE_CHECKING:
    from edgenode.artifacts.service import Artifacts

log = logging.getLogger(__name__)

ANNOUNCE_PATH = "/v1/peer/artifacts/announce"
REFS_PATH = "/v1/peer/artifacts/refs"
#: Announcements older or newer than this (by their own clock) are refused.
MAX_SKEW_S = 300.0
#: Lifetime of the read credential a node derives to fetch from a peer.
PEER_CREDENTIAL_TTL_S = 300


# -- signatures ------------------------------------------------------------------------


def _mac(secret: bytes, domain: str, payload: Any) -> str:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(secret, domain.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, payload: dict[str, Any], domain: str = "edgenode-ref-announcement-v1") -> dict[str, Any]:
    """``payload`` with a ``sig`` field: HMAC-SHA256 with the fleet key over its canonical JSON."""
    clean = {k: v for k, v in payload.items() if k != "sig"}
    return {**clean, "sig": _mac(secret, domain, clean)}


def verify(secret: bytes, payload: dict[str, Any], domain: str = "edgenode-ref-announcement-v1") -> bool:
    """Whether ``payload['sig']`` is the fleet key's signature over the rest of it."""
    sig = payload.get("sig")
    if not isinstance(sig, str):
        return False
    clean = {k: v for k, v in payload.items() if k != "sig"}
    return hmac.compare_digest(sig, _mac(secret, domain, clean))


def peer_password(secret: bytes, tenant: str, repo: str, node_id: str, now: float) -> str:
    """A read-only Git password for one repository, valid for a few minutes, for fleet peers."""
    expires = int(now) + PEER_CREDENTIAL_TTL_S
    mac = _mac(secret, "edgenode-git-peer-read-v1", [tenant, repo, node_id, expires])
    return f"edp_{node_id}_{expires}_{mac}"


def check_peer_password(secret: bytes, tenant: str, repo: str, password: str, now: float) -> bool:
    """Whether ``password`` is a live peer read credential for ``tenant/repo``."""
    try:
        _, node_id, expires_s, mac = password.split("_", 3)
        expires = int(expires_s)
    except ValueError:
        return False
    if not now < expires <= now + 2 * PEER_CREDENTIAL_TTL_S:
        return False
    expected = _mac(secret, "edgenode-git-peer-read-v1", [tenant, repo, node_id, expires])
    return hmac.compare_digest(mac, expected)


def _shared(ref: str) -> bool:
    raw = ref.encode()
    return raw.startswith(SHARED_REF_PREFIXES) and check_ref_format(Ref(raw))


def _sha(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return None if value == ZERO.decode() else value
    raise ValueError(f"bad object id {value!r}")


# -- the gossip ------------------------------------------------------------------------


class RefGossip:
    """Announces local ref moves, applies peers' announcements, and runs anti-entropy."""

    def __init__(self, artifacts: Artifacts, *, now: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.artifacts = artifacts
        self.node = artifacts.node
        self._now = now
        self._rng = rng or random.Random()
        self._loop_task: asyncio.Task[None] | None = None
        self.counters = {"announced": 0, "received": 0, "rejected": 0, "applied": 0, "conflicts": 0,
                         "fetch_errors": 0, "anti_entropy_rounds": 0, "fetched_from_others": 0}
        #: The fleet's message bus for announcements (edgenode.fleet.git.RefBus), when the node has one;
        #: without it announcements go to every peer over signed HTTP.
        self.bus: Any = None
        #: Where to fetch a repository's missing objects from, best first: ``(tenant, repo, shas, announcer's url)``.
        self.sources: Callable[[str, str, list[str], str], list[str]] = lambda tenant, repo, shas, url: [url]

    # -- wiring ----------------------------------------------------------------

    @property
    def cluster(self) -> Any:
        """The node's cluster layer, or None where it is not built in."""
        return getattr(self.node, "cluster", None)

    def secret(self) -> bytes | None:
        """The fleet key, or None without one."""
        return self.node.config.fleet_secret_bytes()

    @property
    def enabled(self) -> bool:
        """Gossip runs only with a cluster layer, a fleet secret and the setting on."""
        cluster = self.cluster
        return (
            self.artifacts.settings.gossip
            and (self.bus is not None or (cluster is not None and bool(getattr(cluster, "fleet_enabled", False))))
            and self.secret() is not None
        )

    def self_url(self) -> str:
        """The URL peers fetch from."""
        cluster = self.cluster
        if cluster is not None and getattr(cluster, "url", None):
            return str(cluster.url).rstrip("/")
        return (self.node.config.cluster.advertise_url or self.node.url or "").rstrip("/")

    async def start(self) -> None:
        """Start the anti-entropy loop (when gossip is enabled)."""
        if self.enabled:
            self._loop_task = asyncio.create_task(self._anti_entropy_loop(), name="artifacts-anti-entropy")

    async def stop(self) -> None:
        """Stop the anti-entropy loop."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None

    def status(self) -> dict[str, Any]:
        """Whether gossip runs, and its counters."""
        return {"gossip": self.enabled, **self.counters}

    # -- sending ---------------------------------------------------------------

    def _meta(self, info: RepoInfo) -> dict[str, Any]:
        return {"tenant": info.tenant, "repo": info.name, "created_at": info.created_at,
                "default_branch": info.default_branch, "fork_of": info.fork_of}

    async def announce(self, info: RepoInfo, updates: list[tuple[str, str | None, str | None]]) -> None:
        """Tell every peer that refs of ``info`` moved (an empty list announces the repository)."""
        if not self.enabled:
            return
        shared = [(r, o, n) for r, o, n in updates if _shared(r)]
        if updates and not shared:
            return
        secret = self.secret()
        assert secret is not None
        now = self._now()
        deleted = [(r, o) for r, o, n in shared if n is None and o is not None]
        if deleted:
            await GIT.run(self._record_tombstones, info.tenant, info.name, deleted, now)
        payload = sign(secret, {
            "v": 1, "kind": "refs", **self._meta(info), "origin": self.node.id, "url": self.self_url(),
            "at": now, "nonce": secrets.token_hex(8),
            "updates": [{"ref": r, "old": o, "new": n} for r, o, n in shared],
        })
        await self._broadcast(payload)

    async def announce_all_refs(self, info: RepoInfo) -> None:
        """Announce every branch and tag of ``info`` (after a fork or an import)."""
        def read() -> list[tuple[str, str | None, str | None]]:
            with self.artifacts.repos.open(info) as repo:
                return [(k.decode(), None, v.decode()) for k, v in repo.refs.as_dict().items()
                        if k.startswith(SHARED_REF_PREFIXES)]

        await self.announce(info, await GIT.run(read))

    async def announce_delete(self, info: RepoInfo) -> None:
        """Tell peers the repository was deleted."""
        if not self.enabled:
            return
        secret = self.secret()
        assert secret is not None
        payload = sign(secret, {"v": 1, "kind": "delete", **self._meta(info), "origin": self.node.id,
                                "url": self.self_url(), "at": self._now(), "nonce": secrets.token_hex(8),
                                "deleted_at": self._now()})
        await self._broadcast(payload)

    async def _broadcast(self, payload: dict[str, Any]) -> None:
        self.counters["announced"] += 1
        if self.bus is not None:
            try:
                await self.bus.publish(payload)
            except Exception:
                log.exception("ref announcement failed")
            return
        try:
            results = await self.cluster.broadcast("POST", ANNOUNCE_PATH, json=payload)
        except Exception:
            log.exception("ref announcement failed")
            return
        for url, result in results.items():
            if isinstance(result, BaseException) or result.status_code >= 300:
                log.info("peer did not take a ref announcement", extra={"peer": url, "result": repr(result)[:200]})

    # -- receiving -------------------------------------------------------------

    async def receive(self, peer_id: str, body: bytes, *, check_age: bool = True,
                      wait: bool = False) -> dict[str, Any]:
        """Check an announcement from an authenticated peer and apply it in the background.

        ``check_age=False`` for announcements replayed from the fleet's stream: their signature
        still proves them, and applying one again changes nothing. With ``wait`` the announcement
        is applied before returning, and ``applied`` says whether it could be (its objects fetched).
        """
        if not self.enabled:
            raise Unavailable("ref gossip is turned off on this node (artifacts.gossip)")
        self.counters["received"] += 1
        secret = self.secret()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise InvalidJson(f"malformed announcement: {exc}") from exc
        if not isinstance(payload, dict):
            raise InvalidJson("an announcement is a JSON object")
        if secret is None or not verify(secret, payload):
            self.counters["rejected"] += 1
            raise AnnouncementRejected("announcement signature is missing or does not match the fleet key")
        at = payload.get("at")
        if not isinstance(at, (int, float)) or (check_age and abs(self._now() - at) > MAX_SKEW_S):
            self.counters["rejected"] += 1
            raise AnnouncementRejected("announcement is too old or from the future")
        try:
            meta = _parse_meta(payload)
            origin = str(payload["origin"])
            url = str(payload["url"])
            kind = payload.get("kind")
            updates = [(u["ref"], _sha(u.get("old")), _sha(u.get("new"))) for u in payload.get("updates", [])]
        except (KeyError, TypeError, ValueError, EdgenodeError) as exc:
            raise InvalidJson(f"malformed announcement: {exc}") from exc
        if origin == self.node.id:
            return {"accepted": False, "reason": "own announcement"}
        if kind == "delete":
            work = self._apply_delete(meta, float(payload.get("deleted_at", at)))
        else:
            wanted = [(r, n) for r, _, n in updates if _shared(r) and n is not None]
            deleted = [(r, o) for r, o, n in updates if _shared(r) and n is None and o is not None]
            work = self._apply(meta, wanted, origin, url, deleted=deleted, at=float(at))
        if wait:
            return {"accepted": True, "applied": await work}
        self.artifacts.spawn(work)
        return {"accepted": True}

    async def listing(self, nonce: str) -> dict[str, Any]:
        """Every repository with its branches and tags, plus tombstones, signed (for anti-entropy)."""
        def read() -> dict[str, Any]:
            repos = []
            for info in self.artifacts.repos.list_sync():
                try:
                    with self.artifacts.repos.open(info) as repo:
                        refs = {k.decode(): v.decode() for k, v in repo.refs.as_dict().items()
                                if k.startswith(SHARED_REF_PREFIXES)}
                except Exception:  # a repository deleted while listing
                    continue
                repos.append({**self._meta(info), "refs": refs})
            tombstones = self.artifacts.db.read_sync(
                lambda c: [dict(r) for r in c.execute("SELECT tenant, name, deleted_at FROM repo_tombstones")]
            )
            ref_tombstones = self.artifacts.db.read_sync(lambda c: [dict(r) for r in c.execute(
                "SELECT tenant, repo, ref, sha, deleted_at FROM ref_tombstones")])
            return {"node": self.node.id, "url": self.self_url(), "nonce": nonce, "repos": repos,
                    "tombstones": tombstones, "ref_tombstones": ref_tombstones}

        body = await GIT.run(read)
        secret = self.secret()
        return sign(secret, body, "edgenode-ref-listing-v1") if secret else body

    # -- applying --------------------------------------------------------------

    async def _apply(self, meta: dict[str, Any], wanted: list[tuple[str, str]], origin: str, url: str, *,
                     deleted: list[tuple[str, str]] | None = None, at: float | None = None) -> bool:
        """Apply an announcement's updates; False when its objects could not be fetched."""
        try:
            results = await GIT.run(self._apply_sync, meta, wanted, origin, url, deleted or [], at)
        except Exception as exc:
            self.counters["fetch_errors"] += 1
            log.warning("applying a ref announcement failed",
                        extra={"repo": meta["repo"], "origin": origin, "error": str(exc)[:300]})
            return False
        tenant, name = meta["tenant"], meta["repo"]
        applied = [r for r in results if r["result"] in ("created", "fast-forward", "deleted")]
        conflicts = [r for r in results if r["result"] == "conflict"]
        self.counters["applied"] += len(applied)
        self.counters["conflicts"] += len(conflicts)
        if applied:
            await self.artifacts.events.record(tenant, name, "sync", origin=origin, updates=applied)
        held = {r["ref"]: r["new"] for r in applied if r.get("new")}
        if held and self.bus is not None:
            try:
                await self.bus.have(tenant, name, held)
            except Exception as exc:
                log.info("could not say which objects this node holds", extra={"error": str(exc)[:200]})
        for c in conflicts:
            log.warning("divergent ref kept under refs/conflicts", extra={"repo": name, **c})
            await self.artifacts.events.record(tenant, name, "conflict", origin=origin, **c)
        return True

    def _local_repo(self, meta: dict[str, Any]) -> RepoInfo | None:
        store = self.artifacts.repos
        tenant, name = meta["tenant"], meta["repo"]
        info = store.find_sync(tenant, name)
        if info is not None:
            return info
        deleted_at = store.tombstone_sync(tenant, name)
        if deleted_at is not None and deleted_at >= meta["created_at"]:
            return None
        parent = store.find_sync(tenant, meta["fork_of"]) if meta.get("fork_of") else None
        try:
            return store.create_sync(tenant, name, default_branch=meta["default_branch"], fork_of=parent,
                                     created_at=meta["created_at"])
        except EdgenodeError:  # created concurrently by another announcement
            return store.find_sync(tenant, name)

    def record_deletions(self, tenant: str, repo: str, updates: list[tuple[str, str | None, str | None]]) -> None:
        """Remember the shared refs ``updates`` deletes, now: call under the repository's lock, as they move.

        A peer's listing that arrives between a push's deletion and its announcement must already
        find the tombstone, or it would set the deleted ref again.
        """
        deleted = [(r, o) for r, o, n in updates if n is None and o is not None and _shared(r)]
        if self.enabled and deleted:
            self._record_tombstones(tenant, repo, deleted, self._now())

    def _record_tombstones(self, tenant: str, repo: str, deleted: list[tuple[str, str]], at: float) -> None:
        """Remember refs deleted at ``at`` (the latest deletion of a ref is kept)."""
        self.artifacts.db.write_sync(lambda c: c.executemany(
            "INSERT INTO ref_tombstones (tenant, repo, ref, sha, deleted_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant, repo, ref) DO UPDATE SET sha = excluded.sha, deleted_at = excluded.deleted_at"
            " WHERE excluded.deleted_at > ref_tombstones.deleted_at",
            [(tenant, repo, ref, sha, at) for ref, sha in deleted]))

    def _tombstones(self, tenant: str, repo: str) -> dict[str, tuple[str, float]]:
        return self.artifacts.db.read_sync(lambda c: {r["ref"]: (r["sha"], r["deleted_at"]) for r in c.execute(
            "SELECT ref, sha, deleted_at FROM ref_tombstones WHERE tenant = ? AND repo = ?", (tenant, repo))})

    @staticmethod
    def _covered(repo: Any, new: str, tombstone: tuple[str, float], at: float | None) -> bool:
        """Whether a deletion already covers ``new`` (the deleted commit or an ancestor, not announced after it)."""
        sha, deleted_at = tombstone
        if at is not None and at > deleted_at:
            return False  # the ref was set again after its deletion
        if new == sha:
            return True
        raw_new, raw_sha = new.encode(), sha.encode()
        return raw_new in repo.object_store and raw_sha in repo.object_store and \
            is_ancestor(repo.object_store, raw_new, raw_sha)

    def _apply_sync(self, meta: dict[str, Any], wanted: list[tuple[str, str]], origin: str,
                    url: str, deleted: list[tuple[str, str]] | None = None,
                    at: float | None = None) -> list[dict[str, Any]]:
        info = self._local_repo(meta)
        deleted = deleted or []
        if info is None or not (wanted or deleted):
            return []
        store = self.artifacts.repos
        results: list[dict[str, Any]] = []
        with store.lock(info.tenant, info.name), store.open(info) as opened:
            repo: Any = opened  # dulwich's Ref/ObjectID new-types add nothing here
            if deleted:
                self._record_tombstones(info.tenant, info.name, deleted, at if at is not None else self._now())
                local = repo.refs.as_dict()
                for ref, old in deleted:
                    # Only where the ref is still at the deleted commit: a ref that moved on keeps its commits.
                    if local.get(ref.encode()) == old.encode() and repo.refs.remove_if_equals(ref.encode(),
                                                                                               old.encode()):
                        results.append({"ref": ref, "old": old, "result": "deleted"})
            tombstones = self._tombstones(info.tenant, info.name)
            targets = {ref: new for ref, new in wanted
                       if ref not in tombstones or not self._covered(repo, new, tombstones[ref], at)}
            if not targets:
                return results
            missing = [sha for sha in targets.values() if sha.encode() not in repo.object_store]
            if missing:
                targets = self._fetch_any(repo, info, targets, self.sources(info.tenant, info.name, missing, url),
                                          url)
            local = repo.refs.as_dict()
            for ref, new in sorted(targets.items()):
                raw_ref, raw_new = ref.encode(), new.encode()
                if raw_new not in repo.object_store:
                    continue
                current = local.get(raw_ref)
                if current == raw_new:
                    continue
                if current is None:
                    if repo.refs.set_if_equals(raw_ref, ZERO, raw_new):
                        results.append({"ref": ref, "new": new, "result": "created"})
                elif is_ancestor(repo.object_store, current, raw_new):
                    if repo.refs.set_if_equals(raw_ref, current, raw_new):
                        results.append({"ref": ref, "old": current.decode(), "new": new, "result": "fast-forward"})
                elif is_ancestor(repo.object_store, raw_new, current):
                    continue  # we are ahead; the peer catches up from us
                else:
                    conflict = b"refs/conflicts/" + origin.encode() + b"/" + raw_ref[len(b"refs/"):]
                    if not check_ref_format(Ref(conflict)) or local.get(conflict) == raw_new:
                        continue
                    repo.refs[conflict] = raw_new
                    results.append({"ref": ref, "kept_as": conflict.decode(), "local": current.decode(),
                                    "new": new, "result": "conflict"})
        return results

    def _fetch_any(self, repo: Any, info: RepoInfo, targets: dict[str, str], sources: list[str],
                   announcer: str) -> dict[str, str]:
        """Fetch from the first of ``sources`` that serves every wanted object (the rest are tried in turn)."""
        error: Exception | None = None
        served: dict[str, str] = {}
        for source in sources or [announcer]:
            try:
                served = self._fetch(repo, info, targets, source)
            except Exception as exc:
                error = exc
                continue
            if all(sha.encode() in repo.object_store for sha in served.values()):
                if source != announcer:
                    self.counters["fetched_from_others"] += 1
                return served
        if error is not None and not served:
            raise error
        return served

    def _fetch(self, repo: Any, info: RepoInfo, targets: dict[str, str], url: str) -> dict[str, str]:
        """Fetch what ``targets`` needs from ``url``; returns the targets the peer can still serve."""
        secret = self.secret()
        assert secret is not None
        password = peer_password(secret, info.tenant, info.name, self.node.id, self._now())
        client = HttpGitClient(url, username="peer", password=password, timeout=30)
        served: dict[str, str] = {}

        def determine_wants(refs: Any, depth: int | None = None) -> Any:
            advertised = set(refs.values())
            wants: set[bytes] = set()
            for ref, sha in targets.items():
                raw = sha.encode()
                if raw not in advertised:  # the peer moved on: take what it has now
                    now_at = refs.get(ref.encode())
                    if now_at is None:
                        continue
                    raw = now_at
                served[ref] = raw.decode()
                if raw not in repo.object_store:
                    wants.add(raw)
            return sorted(wants)

        client.fetch(f"/git/{info.tenant}/{info.name}.git", repo, determine_wants=determine_wants)
        return served

    async def _apply_delete(self, meta: dict[str, Any], deleted_at: float) -> bool:
        def run() -> bool:
            store = self.artifacts.repos
            info = store.find_sync(meta["tenant"], meta["repo"])
            if info is None or info.created_at > deleted_at:
                return False
            store.delete_sync(info)
            return True

        if await GIT.run(run):
            await self.artifacts.events.record(meta["tenant"], meta["repo"], "delete", via="gossip")
        return True

    # -- anti-entropy ----------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        interval = max(0.2, float(self.artifacts.settings.anti_entropy_interval_s))
        while True:
            await asyncio.sleep(interval * (0.5 + self._rng.random()))
            try:
                await self.anti_entropy_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("anti-entropy round failed", extra={"error": str(exc)[:300]})

    async def anti_entropy_once(self, peer_url: str | None = None) -> int:
        """Compare ref listings with one peer (random unless given); returns refs pulled."""
        cluster = self.cluster
        if not self.enabled or cluster is None:
            return 0
        if peer_url is None:
            peers = [p for p in cluster.peers() if getattr(p, "healthy", True)] or list(cluster.peers())
            if not peers:
                return 0
            peer_url = self._rng.choice(peers).url
        nonce = secrets.token_hex(8)
        response = await cluster.send(peer_url, "GET", f"{REFS_PATH}?nonce={nonce}")
        if response.status_code != 200:
            return 0
        listing = response.json()
        secret = self.secret()
        if secret is None or not verify(secret, listing, "edgenode-ref-listing-v1") or listing.get("nonce") != nonce:
            self.counters["rejected"] += 1
            return 0
        self.counters["anti_entropy_rounds"] += 1
        origin, url = str(listing["node"]), str(listing["url"] or peer_url)
        pulled = 0
        for stone in listing.get("tombstones", []):
            try:
                meta = {"tenant": validate_tenant(stone["tenant"]), "repo": validate_repo_name(stone["name"])}
            except (KeyError, EdgenodeError):
                continue
            await self._apply_delete(meta, float(stone["deleted_at"]))
        await self._apply_ref_tombstones(listing.get("ref_tombstones", []), origin, url)
        local = await GIT.run(self._local_refs)
        for entry in listing.get("repos", []):
            try:
                meta = _parse_meta(entry)
                refs = {r: _sha(s) for r, s in entry.get("refs", {}).items() if _shared(r)}
            except (KeyError, TypeError, ValueError, EdgenodeError):
                continue
            mine = local.get((meta["tenant"], meta["repo"]))
            wanted = [(r, s) for r, s in refs.items() if s is not None and (mine is None or mine.get(r) != s)]
            if mine is not None and not wanted:
                continue
            before = self.counters["applied"]
            await self._apply(meta, wanted, origin, url)
            pulled += self.counters["applied"] - before
        return pulled

    async def _apply_ref_tombstones(self, stones: Any, origin: str, url: str) -> None:
        """Apply the branch and tag deletions a peer lists (to repositories this node has)."""
        by_repo: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
        for stone in stones if isinstance(stones, list) else []:
            try:
                key = (validate_tenant(stone["tenant"]), validate_repo_name(stone["repo"]))
                ref, sha = str(stone["ref"]), _sha(stone["sha"])
                at = float(stone["deleted_at"])
            except (KeyError, TypeError, ValueError, EdgenodeError):
                continue
            if _shared(ref) and sha is not None:
                by_repo.setdefault(key, []).append((ref, sha, at))
        for (tenant, name), deletions in by_repo.items():
            info = await GIT.run(self.artifacts.repos.find_sync, tenant, name)
            if info is None:
                continue
            known = await GIT.run(self._tombstones, tenant, name)
            for ref, sha, at in deletions:
                if known.get(ref, ("", -1.0))[1] >= at:
                    continue  # heard of this deletion already
                await self._apply(self._meta(info), [], origin, url, deleted=[(ref, sha)], at=at)

    def _local_refs(self) -> dict[tuple[str, str], dict[str, str]]:
        out: dict[tuple[str, str], dict[str, str]] = {}
        for info in self.artifacts.repos.list_sync():
            try:
                with self.artifacts.repos.open(info) as repo:
                    out[(info.tenant, info.name)] = {k.decode(): v.decode() for k, v in repo.refs.as_dict().items()
                                                     if k.startswith(SHARED_REF_PREFIXES)}
            except Exception:
                continue
        return out


def _parse_meta(payload: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "tenant": validate_tenant(payload["tenant"]),
        "repo": validate_repo_name(payload["repo"]),
        "created_at": float(payload["created_at"]),
        "default_branch": str(payload.get("default_branch") or "main"),
        "fork_of": payload.get("fork_of"),
    }
    if meta["fork_of"] is not None:
        validate_repo_name(meta["fork_of"])
    return meta
