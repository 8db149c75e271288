"""Ref announcements over NATS between in-process nodes served on loopback: objects come from any holder."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from edgenode.api import build_app
from edgenode.config import Config
from edgenode.errors import ArtifactNotFound
from edgenode.fleet.control import MIGRATIONS
from edgenode.fleet.git import RefBus
from edgenode.node import Node
from edgenode.store import Database
from tests.fleet_support import LoopThread, NatsServer
from tests.support import wait_for

SECRET = "fleet-secret-for-the-ref-bus-tests"


@dataclass
class Served:
    node: Node
    bus: RefBus
    stop: asyncio.Event
    task: asyncio.Task[None]
    nc: Any
    db: Database


async def _serve(root: Path, nats_url: str) -> Served:
    node = Node(Config.load(env={}, overrides={"data_dir": root, "fleet_secret": SECRET}))
    # The ref bus alone carries announcements here (no HTTP peer mesh, no cluster layer started).
    node.capabilities.remove(node.cluster)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node.url = f"http://127.0.0.1:{port}"
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    task = asyncio.create_task(hypercorn_serve(build_app(node, on_ready=on_ready), config,  # type: ignore[arg-type]
                                               shutdown_trigger=stop.wait, mode="asgi"))
    await asyncio.wait_for(ready.wait(), 120)
    nc = await nats.connect(nats_url)
    db = Database(root / "fleet.db", MIGRATIONS).open()
    bus = RefBus(nc, nc.jetstream(), node.artifacts.gossip, subject_prefix="edn.refbus", stream="EDN_REFBUS_GIT",
                 node_id=node.id, fleet_secret=SECRET.encode(), db=db)
    await bus.start()
    return Served(node, bus, stop, task, nc, db)


async def _shutdown(s: Served) -> None:
    await s.bus.stop()
    await s.nc.close()
    s.stop.set()
    await asyncio.wait_for(s.task, 60)
    s.db.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, NatsServer, Path]]:
    root = tmp_path_factory.mktemp("refbus")
    server = NatsServer(root / "nats").start()
    loop = LoopThread()
    yield loop, server, root
    loop.close()
    server.stop()


def _head(s: Served, repo: str, branch: str = "main") -> str | None:
    info = s.node.artifacts.repos.find_sync("default", repo)
    if info is None:
        return None
    try:
        with s.node.artifacts.repos.open(info) as r:
            value = r.refs.as_dict().get(f"refs/heads/{branch}".encode())
            return None if value is None else value.decode()
    except ArtifactNotFound:  # listed, its directory being made
        return None


def test_a_node_joining_late_fetches_the_objects_from_a_holder_when_the_writer_is_gone(
        world: tuple[LoopThread, NatsServer, Path]) -> None:
    loop, server, root = world
    writer = loop.run(_serve(root / "writer", server.url))
    holder = loop.run(_serve(root / "holder", server.url))
    late: Served | None = None
    spy_seen: list[bytes] = []
    spies: list[Any] = []
    try:
        async def commit() -> str:
            await writer.node.artifacts.create("default", "site")
            done = await writer.node.artifacts.commit("default", "site", branch="main", message="first",
                                                      author=None, files={"index.html": "<h1>hi</h1>"}, parent=None)
            return str(done["commit"])

        head = loop.run(commit())
        wait_for(lambda: _head(holder, "site") == head, message="the commit on the holder")
        wait_for(lambda: writer.bus.counters["haves"] >= 1, message="the holder's notice")
        loop.run(_shutdown(writer))  # the writer is gone for good

        async def join() -> Served:
            spy = await nats.connect(server.url)

            async def record(msg: Any) -> None:
                spy_seen.append(bytes(msg.data))

            await spy.subscribe("edn.refbus.>", cb=record)
            spies.append(spy)
            return await _serve(root / "late", server.url)

        late = loop.run(join())  # replays the stream: the writer's announcement, with the writer's URL
        wait_for(lambda: _head(late, "site") == head, message="the commit on the late node")
        assert late.node.artifacts.gossip.counters["fetched_from_others"] >= 1
        assert late.node.artifacts.gossip.counters["fetch_errors"] == 0 or _head(late, "site") == head
        for message in spy_seen:
            assert b"edn_admin" not in message and SECRET.encode() not in message
    finally:
        for s in (holder, late):
            if s is not None:
                loop.run(_shutdown(s))
        for spy in spies:
            loop.run(spy.close())


def test_an_announcement_not_signed_with_the_fleet_key_is_refused(world: tuple[LoopThread, NatsServer, Path]) -> None:
    loop, server, root = world
    node = loop.run(_serve(root / "lone", server.url))
    try:
        before = node.node.artifacts.gossip.counters["rejected"]
        forged = {"v": 1, "kind": "refs", "tenant": "default", "repo": "evil", "created_at": 1.0,
                  "default_branch": "main", "fork_of": None, "origin": "nx", "url": "http://127.0.0.1:1",
                  "at": 1.0, "nonce": "00", "updates": [], "sig": "0" * 64}

        async def publish() -> None:
            await node.nc.jetstream().publish("edn.refbus.git.refs", json.dumps(forged).encode())

        loop.run(publish())
        wait_for(lambda: node.node.artifacts.gossip.counters["rejected"] > before, message="the refusal")
        assert node.node.artifacts.repos.find_sync("default", "evil") is None
    finally:
        loop.run(_shutdown(node))
