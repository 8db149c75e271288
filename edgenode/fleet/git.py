"""Git ref traffic on NATS: announcements on a fleet stream, and who holds which objects.

Ref announcements (the same signed payloads as before: moves, deletions, repository deletes)
are published to a JetStream stream of the fleet's subjects, so a node that was away replays
what it missed (its position is kept in ``fleet.db``) instead of waiting for anti-entropy.
After a node has applied an announcement it says so on a core subject (``have``: repository,
refs and its Git URL); a node that lacks objects fetches them from a random node among those
that hold them, with the announcer as one candidate among the others, so a push to one node
is not fetched from that node alone by the whole fleet. An announcement whose objects no known
source could serve (the writer gone, a late joiner that heard no ``have``) is retried after
asking the fleet who holds them (a signed request every holder may answer; the first wins).

The objects themselves still move over Git smart HTTP between nodes, with the short-lived
peer read credential: Git's negotiation sends only the objects the fetcher lacks, packs are
streamed whatever their size, and the path is the one Git clients already use and tests cover.
Over NATS a pack would need chunking under the message size limit and a negotiation of its
own, which would rebuild Git's fetch protocol, badly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError

from edgenode.artifacts.gossip import sign, verify
from edgenode.store import Database
from edgenode.threads import GIT

if TYPE_CHECKING:
    from nats.aio.client import Client

    from edgenode.artifacts.gossip import RefGossip

log = logging.getLogger(__name__)

HAVE_DOMAIN = "edgenode-git-have-v1"
#: How long announcements stay in the stream (a node away longer catches up by anti-entropy).
RETENTION_S = 86_400.0
#: How many (repository, commit) pairs the holder table remembers.
MAX_HOLDINGS = 20_000
WHO_DOMAIN = "edgenode-git-who-has-v1"
#: Attempts at an announcement whose objects could not be fetched, one per retry interval.
MAX_ATTEMPTS = 30


class RefBus:
    """Carries a node's ref announcements over NATS and tells its gossip where objects can be fetched."""

    name = "refbus"

    def __init__(self, nc: Client, js: JetStreamContext, gossip: RefGossip, *, subject_prefix: str, stream: str,
                 node_id: str, fleet_secret: bytes, db: Database, replicas: int | None = 1,
                 retention_s: float = RETENTION_S, retry_interval_s: float = 1.0,
                 rng: random.Random | None = None) -> None:
        self.nc = nc
        self.js = js
        self.gossip = gossip
        self.subject = f"{subject_prefix}.git.refs"
        self.have_subject = f"{subject_prefix}.git.have"
        self.who_subject = f"{subject_prefix}.git.who"
        self.retry_interval_s = retry_interval_s
        self._retry: list[tuple[int, bytes]] = []
        self._retry_task: asyncio.Task[None] | None = None
        self.stream = stream
        self.node_id = node_id
        self.db = db
        self.replicas = replicas
        self.retention_s = retention_s
        self._secret = fleet_secret
        self._rng = rng or random.Random()
        self._holders: OrderedDict[tuple[str, str, str], set[str]] = OrderedDict()
        self._subs: list[Subscription] = []
        self.counters = {"published": 0, "received": 0, "haves": 0, "rejected": 0, "retries": 0, "given_up": 0,
                         "who_answers": 0}

    async def start(self) -> None:
        """Create the stream if needed, follow it from where this node stopped, and take over gossip's sending.

        With ``replicas=None`` the stream is the caller's to create (the fleet transport's ``stream()``).
        """
        if self.replicas is not None:
            config = api.StreamConfig(name=self.stream, subjects=[self.subject], max_age=self.retention_s,
                                      num_replicas=self.replicas, discard=api.DiscardPolicy.OLD)
            try:
                await self.js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != 10058:  # it exists
                    raise
        self._subs.append(await self.nc.subscribe(self.have_subject, cb=self._on_have))
        self._subs.append(await self.nc.subscribe(self.who_subject, cb=self._on_who))
        self._retry_task = asyncio.create_task(self._retry_loop(), name="refbus-retry")
        after = await self.db.read(lambda c: (c.execute(
            "SELECT seq FROM stream_positions WHERE name = ?", (self.stream,)).fetchone() or [0])[0])
        start: dict[str, Any] = ({"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
                                 if after else {"deliver_policy": api.DeliverPolicy.ALL})
        self._subs.append(await self.js.subscribe(self.subject, stream=self.stream, cb=self._on_announcement,
                                                  ordered_consumer=True, idle_heartbeat=2.0, **start))
        self.gossip.bus = self
        self.gossip.sources = self.sources

    async def stop(self) -> None:
        """Stop following; gossip falls back to signed HTTP."""
        if self.gossip.bus is self:
            self.gossip.bus = None
        if self._retry_task is not None:
            self._retry_task.cancel()
            await asyncio.gather(self._retry_task, return_exceptions=True)
            self._retry_task = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    def status(self) -> dict[str, Any]:
        """Counters."""
        return {"stream": self.stream, "holdings": len(self._holders), **self.counters}

    # -- sending ------------------------------------------------------------------------

    async def publish(self, payload: dict[str, Any]) -> None:
        """Put one signed announcement on the fleet's stream."""
        await self.js.publish(self.subject, json.dumps(payload, separators=(",", ":")).encode(), stream=self.stream)
        self.counters["published"] += 1

    async def have(self, tenant: str, repo: str, refs: dict[str, str]) -> None:
        """Say that this node now holds the objects of ``refs`` in ``tenant/repo``."""
        url = self.gossip.self_url()
        if not url:
            return
        payload = sign(self._secret, {"tenant": tenant, "repo": repo, "refs": refs, "url": url,
                                      "node": self.node_id}, HAVE_DOMAIN)
        await self.nc.publish(self.have_subject, json.dumps(payload, separators=(",", ":")).encode())

    # -- receiving ----------------------------------------------------------------------

    async def _on_announcement(self, msg: Msg) -> None:
        self.counters["received"] += 1
        if not await self._apply(msg.data):
            self._retry.append((1, msg.data))
        seq = int(msg.metadata.sequence.stream)
        await self.db.write(lambda c: c.execute(
            "INSERT INTO stream_positions (name, seq) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)", (self.stream, seq)))

    async def _apply(self, data: bytes) -> bool:
        """Apply one announcement now; False if it should be tried again (its objects not fetched)."""
        try:
            result = await self.gossip.receive("", data, check_age=False, wait=True)
        except Exception as exc:  # refused (bad signature, malformed): logged and counted by gossip
            log.info("ref announcement refused", extra={"error": str(exc)[:200]})
            return True
        return result.get("applied", True) is not False

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval_s)
            due, self._retry = self._retry, []
            for attempt, data in due:
                self.counters["retries"] += 1
                with contextlib.suppress(Exception):
                    await self._ask_holders(data)
                if await self._apply(data):
                    continue
                if attempt + 1 >= MAX_ATTEMPTS:
                    self.counters["given_up"] += 1
                    log.warning("gave up on a ref announcement; anti-entropy may still bring it")
                else:
                    self._retry.append((attempt + 1, data))

    async def _ask_holders(self, data: bytes) -> None:
        """Ask the fleet who holds an announcement's new commits; remember the first to answer."""
        payload = json.loads(data)
        tenant, repo = str(payload["tenant"]), str(payload["repo"])
        shas = sorted({str(u["new"]) for u in payload.get("updates", []) if u.get("new")})
        if not shas:
            return
        question = sign(self._secret, {"tenant": tenant, "repo": repo, "shas": shas, "node": self.node_id},
                        WHO_DOMAIN)
        answer = await self.nc.request(self.who_subject, json.dumps(question).encode(), timeout=2.0)
        reply = json.loads(answer.data)
        if isinstance(reply, dict) and verify(self._secret, reply, WHO_DOMAIN) and reply.get("shas") == shas:
            self._remember(tenant, repo, shas, str(reply["url"]))

    async def _on_who(self, msg: Msg) -> None:
        try:
            question = json.loads(msg.data)
            if not isinstance(question, dict) or not verify(self._secret, question, WHO_DOMAIN):
                raise ValueError("not signed with the fleet key")
            if question["node"] == self.node_id or not msg.reply:
                return
            tenant, repo, shas = str(question["tenant"]), str(question["repo"]), [str(s) for s in question["shas"]]
        except (ValueError, KeyError, TypeError):
            self.counters["rejected"] += 1
            return
        url = self.gossip.self_url()
        holds: bool = bool(url) and await GIT.run(self._holds, tenant, repo, shas)
        if holds:
            self.counters["who_answers"] += 1
            reply = sign(self._secret, {"tenant": tenant, "repo": repo, "shas": shas, "url": url,
                                        "node": self.node_id}, WHO_DOMAIN)
            await self.nc.publish(msg.reply, json.dumps(reply).encode())

    def _holds(self, tenant: str, repo: str, shas: list[str]) -> bool:
        store = self.gossip.artifacts.repos
        info = store.find_sync(tenant, repo)
        if info is None:
            return False
        with store.open(info) as opened:
            objects: Any = opened.object_store  # dulwich's ObjectID new-type adds nothing here
            return all(sha.encode() in objects for sha in shas)

    def _remember(self, tenant: str, repo: str, shas: list[str], url: str) -> None:
        for sha in shas:
            key = (tenant, repo, sha)
            self._holders.setdefault(key, set()).add(url)
            self._holders.move_to_end(key)
        while len(self._holders) > MAX_HOLDINGS:
            self._holders.popitem(last=False)

    async def _on_have(self, msg: Msg) -> None:
        try:
            payload = json.loads(msg.data)
            if not isinstance(payload, dict) or not verify(self._secret, payload, HAVE_DOMAIN):
                raise ValueError("not signed with the fleet key")
            if payload["node"] == self.node_id:
                return
            tenant, repo, url = str(payload["tenant"]), str(payload["repo"]), str(payload["url"])
            shas = [str(sha) for sha in dict(payload["refs"]).values()]
        except (ValueError, KeyError, TypeError) as exc:
            self.counters["rejected"] += 1
            log.info("a holder notice was refused", extra={"error": str(exc)[:200]})
            return
        self.counters["haves"] += 1
        self._remember(tenant, repo, shas, url)

    def sources(self, tenant: str, repo: str, shas: list[str], announcer: str) -> list[str]:
        """Nodes to fetch ``shas`` from, in a random order: those known to hold all of them, and the announcer."""
        holders: set[str] | None = None
        for sha in shas:
            have = self._holders.get((tenant, repo, sha), set())
            holders = set(have) if holders is None else holders & have
        candidates = sorted((holders or set()) | {announcer})
        self._rng.shuffle(candidates)
        return candidates


__all__ = ["RefBus"]
