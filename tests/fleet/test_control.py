"""The fleet control plane: three in-process nodes (real SQLite files) against one real nats-server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from edgenode.config import Config
from edgenode.errors import TokenRevoked, Unauthorized, WorkerNotFound
from edgenode.fleet.control import MIGRATIONS, ControlPlane
from edgenode.fleet.wiring import build_control_plane, open_buckets
from edgenode.isolates.runtime import GuestRequest
from edgenode.node import Node
from edgenode.store import Database
from edgenode.tenants import delete_tenant
from tests.fleet_support import LoopThread, NatsServer
from tests.support import wait_for

SECRET = b"fleet-secret-for-tests-0123456789"
SUBJECTS = "edn.testfleet"
STREAMS = "EDN_TESTFLEET"


@dataclass
class Member:
    node: Node
    nc: Any
    plane: ControlPlane
    fleet_db: Database


@dataclass
class Fleet:
    loop: LoopThread
    server: NatsServer
    members: list[Member] = field(default_factory=list)
    seen: list[bytes] = field(default_factory=list)
    minted: list[str] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)


async def _join(fleet: Fleet, root: Path) -> Member:
    node = Node(Config.load(env={}, overrides={"data_dir": root}))
    await node.start()
    fleet_db = Database(root / "fleet.db", MIGRATIONS).open()
    nc = await nats.connect(fleet.server.url)

    async def purge(name: str) -> None:
        await delete_tenant(node, name)

    member = Member(node, nc, await _plane(node, nc, fleet_db, purge), fleet_db)
    fleet.members.append(member)
    return member


async def _plane(node: Node, nc: Any, fleet_db: Database, purge: Any = None) -> ControlPlane:
    js = nc.jetstream()
    control, blobs = await open_buckets(js, subject_prefix=SUBJECTS, stream_prefix=STREAMS)
    plane = build_control_plane(js, control, blobs, node_id=node.id, fleet_secret=SECRET, db=fleet_db,
                                auth=node.auth, purge_tenant=purge, repo_tokens=node.artifacts.tokens,
                                workers=node.workers, agents=node.agents)
    await plane.start()
    return plane


async def _leave(member: Member) -> None:
    await member.plane.stop()
    await member.nc.close()
    await member.node.stop()
    member.fleet_db.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    server = NatsServer(root / "nats").start()
    loop = LoopThread()
    f = Fleet(loop, server)

    async def setup() -> Any:
        spy = await nats.connect(server.url)

        async def record(msg: Any) -> None:
            f.seen.append(msg.subject.encode() + b" " + bytes(msg.data))

        await spy.subscribe(">", cb=record)  # every message any client publishes, JetStream API included
        for name in ("a", "b", "c"):
            await _join(f, root / name)
        return spy

    spy = loop.run(setup())
    yield f

    async def teardown() -> None:
        for m in f.members:
            await _leave(m)
        await spy.close()

    loop.run(teardown())
    loop.close()
    server.stop()


def _mint(fleet: Fleet, issuing: Any) -> Any:
    """Issue a token (client or repository) and remember its plaintext for the scan of NATS traffic."""
    issued = fleet.run(issuing)
    fleet.minted.append(issued.token)
    return issued


def _authenticates(member: Member, token: str) -> bool:
    try:
        member.node.auth.authenticate(token)
        return True
    except Unauthorized:
        return False


def _revoked(member: Member, token: str) -> bool:
    try:
        member.node.auth.authenticate(token)
    except TokenRevoked:
        return True
    except Unauthorized:
        return False
    return False


def test_a_token_minted_on_one_node_works_on_the_others_and_a_revocation_anywhere_holds_everywhere(
        fleet: Fleet) -> None:
    a, b, c = fleet.members[:3]
    issued = _mint(fleet, a.node.auth.create_token("acme", name="ci"))
    wait_for(lambda: _authenticates(b, issued.token) and _authenticates(c, issued.token),
             message="the token to work on b and c")
    assert b.node.auth.authenticate(issued.token).tenant == "acme"
    assert fleet.run(c.node.auth.tenant_exists("acme"))

    fleet.run(b.node.auth.revoke_token(issued.id))
    wait_for(lambda: _revoked(a, issued.token) and _revoked(c, issued.token), message="the revocation on a and c")


def test_concurrent_republish_of_a_revoked_token_does_not_unrevoke_it(fleet: Fleet) -> None:
    a, b = fleet.members[:2]
    issued = _mint(fleet, a.node.auth.create_token("acme"))
    wait_for(lambda: _authenticates(b, issued.token), message="the token on b")
    fleet.run(a.node.auth.revoke_token(issued.id))
    wait_for(lambda: _revoked(b, issued.token), message="the revocation on b")
    # b publishes its own (already revoked) copy again, and a stale unrevoked copy arrives: revoked stays
    stale = {"id": issued.id, "tenant": "acme", "name": "", "hash": "x" * 64, "admin": 0,
             "created_at": issued.created_at, "expires_at": None, "revoked_at": None}
    kinds = b.plane._kinds
    assert kinds["token"].merge({**stale, "revoked_at": 5.0}, stale)["revoked_at"] == 5.0
    fleet.run(b.plane.publish(f"token.{issued.id}"))
    assert _revoked(a, issued.token) and _revoked(b, issued.token)


def test_a_tenant_deleted_on_one_node_is_gone_everywhere_with_its_tokens_and_workers(fleet: Fleet) -> None:
    a, b, c = fleet.members[:3]
    issued = _mint(fleet, a.node.auth.create_token("doomed"))
    wait_for(lambda: _authenticates(c, issued.token), message="the token on c")
    fleet.run(b.node.workers.deploy_python("doomed", "hello", {"main.py": _HELLO},
                                           b.node.workers.parse_settings({})))
    wait_for(lambda: _has_worker(c, "doomed", "hello"), message="the worker on c")

    fleet.run(delete_tenant(b.node, "doomed"))
    wait_for(lambda: not fleet.run(a.node.auth.tenant_exists("doomed"))
             and not fleet.run(c.node.auth.tenant_exists("doomed")), message="the tenant gone on a and c")
    assert not _authenticates(a, issued.token) and not _authenticates(c, issued.token)
    wait_for(lambda: not _has_worker(a, "doomed", "hello"), message="the worker gone on a")


def test_repository_tokens_replicate_and_their_revocation_too(fleet: Fleet) -> None:
    a, b, c = fleet.members[:3]
    token = _mint(fleet, a.node.artifacts.tokens.issue("acme", "site", "read", 600))
    wait_for(lambda: _repo_token_ok(b, token.token), message="the repository token on b")
    assert b.node.artifacts.tokens.check_sync("acme", "site", token.token) == (token.id, "read")
    # c revokes it: c must know the token first (a node refuses to revoke a token it has never seen).
    wait_for(lambda: _repo_token_ok(c, token.token), message="the repository token on c")
    fleet.run(c.node.artifacts.tokens.revoke("acme", "site", token.id))
    wait_for(lambda: _repo_token_revoked(a, token.token), message="the revocation on a")


_HELLO = "def handle(request):\n    return {'hello': request.path, 'from': 'fleet'}\n"


def _has_worker(member: Member, tenant: str, name: str) -> bool:
    try:
        member.node.workers.registry.current_sync(tenant, name)
        return True
    except WorkerNotFound:
        return False


def _repo_token_ok(member: Member, token: str) -> bool:
    try:
        member.node.artifacts.tokens.check_sync("acme", "site", token)
        return True
    except Unauthorized:
        return False


def _repo_token_revoked(member: Member, token: str) -> bool:
    try:
        member.node.artifacts.tokens.check_sync("acme", "site", token)
    except TokenRevoked:
        return True
    except Unauthorized:
        return False
    return False


def test_a_worker_deployed_on_one_node_answers_on_another_without_a_build_there(fleet: Fleet) -> None:
    a, b, c = fleet.members[:3]
    settings = a.node.workers.parse_settings({"env": {"GREETING": "kept-sealed-123"}})
    fleet.run(a.node.workers.deploy_python("acme", "hello", {"main.py": _HELLO}, settings))
    wait_for(lambda: _has_worker(b, "acme", "hello"), message="the worker on b")
    builds = b.node.workers.meter.builds.labels("ok")._value.get()
    outcome = fleet.run(b.node.workers.invoke("acme", "hello", GuestRequest("GET", "/x", [], [], b"")))
    assert outcome.error is None, outcome.error
    assert outcome.response is not None and json.loads(outcome.response.body) == {"hello": "/x", "from": "fleet"}
    assert b.node.workers.meter.builds.labels("ok")._value.get() == builds  # nothing was built on b
    deployed = b.node.workers.registry.current_sync("acme", "hello")
    assert deployed.settings["env"] == {"GREETING": "kept-sealed-123"}
    assert deployed.version == a.node.workers.registry.current_sync("acme", "hello").version

    fleet.run(c.node.workers.delete("acme", "hello"))
    wait_for(lambda: not _has_worker(a, "acme", "hello") and not _has_worker(b, "acme", "hello"),
             message="the deletion on a and b")


def test_a_webassembly_module_deployed_on_one_node_runs_by_name_on_another(fleet: Fleet) -> None:
    import wasmtime

    from tests.isolates.conftest import DATA

    a, b = fleet.members[:2]
    module = bytes(wasmtime.wat2wasm((DATA / "echo-args.wat").read_text()))
    fleet.run(a.node.workers.deploy_wasm("acme", "echo", module, a.node.workers.parse_settings({})))
    wait_for(lambda: _has_worker(b, "acme", "echo"), message="the module on b")
    result = fleet.run(b.node.workers.wasi_run("acme", {"name": "echo", "args": ["echo", "from-a"]}))
    assert (result.exit_code, result.stdout) == (7, b"from-a")


_AGENT = "def run(ctx, input):\n    return {'ok': True}\n"


def test_an_agent_deployment_and_a_tenant_secret_replicate(fleet: Fleet) -> None:
    from edgenode.agents.controls import set_secret

    a, b, c = fleet.members[:3]
    deployed = fleet.run(a.node.agents.deploy("acme", "helper", {"main.py": _AGENT}))
    wait_for(lambda: _agent_version(c, "helper") == deployed["version"], message="the agent on c")
    files = c.node.agents.db.read_sync(lambda conn: conn.execute(
        "SELECT files FROM agent_versions WHERE tenant = 'acme' AND name = 'helper'").fetchone()[0])
    assert json.loads(files) == {"main.py": _AGENT}

    fleet.run(set_secret(a.node.agents, "acme", "OPENAI_API_KEY", "sk-plaintext-never-on-nats"))
    wait_for(lambda: _secret(b, "OPENAI_API_KEY") == "sk-plaintext-never-on-nats", message="the secret on b")


def _agent_version(member: Member, name: str) -> int | None:
    row = member.node.agents.db.read_sync(lambda c: c.execute(
        "SELECT current_version FROM agents WHERE tenant = 'acme' AND name = ?", (name,)).fetchone())
    return None if row is None else int(row[0])


def _secret(member: Member, name: str) -> str | None:
    row = member.node.agents.db.read_sync(lambda c: c.execute(
        "SELECT value FROM secrets WHERE tenant = 'acme' AND name = ?", (name,)).fetchone())
    return None if row is None else str(row[0])


def test_a_record_not_signed_with_the_fleet_key_is_refused(fleet: Fleet) -> None:
    a, b = fleet.members[:2]
    before = b.plane.counters["rejected"]
    forged = {"v": 1, "key": "tenant.forged", "stamp": 1 << 60, "origin": "x",
              "record": {"name": "forged", "created_at": 1.0}, "sig": "0" * 64}

    async def put() -> None:
        await a.nc.jetstream().publish(f"{SUBJECTS}.control.tenant.forged", json.dumps(forged).encode())

    fleet.run(put())
    wait_for(lambda: b.plane.counters["rejected"] > before, message="b to refuse the forged record")
    assert not fleet.run(b.node.auth.tenant_exists("forged"))


def test_a_node_joining_later_replays_the_bucket_to_the_same_state(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.members[:2]
    live = _mint(fleet, a.node.auth.create_token("acme", name="late"))
    gone = _mint(fleet, b.node.auth.create_token("acme", name="gone"))
    fleet.run(b.node.auth.revoke_token(gone.id))
    wait_for(lambda: _revoked(a, gone.token), message="the revocation on a")

    async def join_and_replay_twice() -> tuple[bool, bool]:
        d = await _join(fleet, tmp_path / "d")
        await d.plane.stop()  # a restart replays everything again: the same result
        d.plane = await _plane(d.node, d.nc, d.fleet_db)
        return await d.node.auth.tenant_exists("acme"), await d.node.auth.tenant_exists("doomed")

    assert fleet.run(join_and_replay_twice()) == (True, False)
    d = fleet.members[-1]
    assert _authenticates(d, live.token) and _revoked(d, gone.token)
    assert d.plane.counters["applied"] == 0 and d.plane.counters["skipped"] > 0  # the replay applied nothing new
    assert _secret(d, "OPENAI_API_KEY") == "sk-plaintext-never-on-nats"


def test_no_client_token_or_secret_ever_reached_nats(fleet: Fleet) -> None:
    a, b = fleet.members[:2]
    issued = _mint(fleet, a.node.auth.create_token("acme", name="scan"))
    repo = _mint(fleet, b.node.artifacts.tokens.issue("acme", "site", "write", 600))
    wait_for(lambda: _authenticates(b, issued.token) and _repo_token_ok(a, repo.token), message="replication")
    assert fleet.seen, "the spy saw no traffic"
    traffic = b"\n".join(fleet.seen)
    assert len(fleet.minted) >= 8 and issued.token in fleet.minted and repo.token in fleet.minted
    # The random part alone must not appear either (it may hold "_" itself: split after the id).
    secrets = [t.split("_", 2)[2] for t in fleet.minted]
    for plaintext in (*fleet.minted, *secrets, "sk-plaintext-never-on-nats", "kept-sealed-123",
                      *(m.node.admin_token for m in fleet.members), SECRET.decode()):
        assert plaintext.encode() not in traffic, plaintext


def test_blobs_larger_than_a_message_come_back_whole_and_a_missing_chunk_is_not_served(fleet: Fleet) -> None:
    from edgenode.fleet.buckets import BlobStore, open_bucket

    a = fleet.members[0]
    data = bytes(range(256)) * 3000  # three chunks

    async def roundtrip() -> tuple[bytes | None, bytes | None]:
        js = a.nc.jetstream()
        bucket = await open_bucket(js, stream="EDN_TESTFLEET_BLOBTEST", subject="edn.testfleet.blobtest")
        store = BlobStore(bucket)
        digest = await store.put(data)
        whole = await store.get(digest)
        await js.purge_stream("EDN_TESTFLEET_BLOBTEST", subject=f"edn.testfleet.blobtest.{digest}.1")
        return whole, await store.get(digest)

    whole, broken = fleet.run(roundtrip())
    assert whole == data
    assert broken is None


def test_a_deployment_whose_code_arrives_late_is_installed_once_it_does(fleet: Fleet) -> None:
    from edgenode.artifacts.gossip import sign
    from edgenode.fleet.buckets import BlobStore, open_bucket
    from edgenode.fleet.control import SIGNING_DOMAIN
    from edgenode.fleet.deployments import canonical
    from edgenode.fleet.secrets import SecretBox

    a, b = fleet.members[:2]
    files = {"main.py": "def handle(request):\n    return 'late'\n"}
    code = canonical(files)
    digest = hashlib.sha256(code).hexdigest()
    record = {"tenant": "acme", "name": "late", "version": 1, "kind": "python", "hash": "h" * 64,
              "settings": {"limits": a.node.workers.parse_settings({}).limits.as_dict(), "allowed_hosts": [],
                           "public": False, "env_sealed": SecretBox(SECRET).seal("{}", "worker.acme.late")},
              "code": digest, "created_at": 1.0}
    envelope = sign(SECRET, {"v": 1, "key": "worker.acme.late", "stamp": 1 << 62, "origin": "nx",
                             "record": record}, SIGNING_DOMAIN)
    before = b.plane.counters["pending"]

    async def publish_record() -> None:
        await a.nc.jetstream().publish(f"{SUBJECTS}.control.worker.acme.late", json.dumps(envelope).encode())

    async def publish_code() -> None:
        js = a.nc.jetstream()
        blobs = await open_bucket(js, stream=f"{STREAMS}_BLOBS", subject=f"{SUBJECTS}.blobs")
        await BlobStore(blobs).put(code)

    fleet.run(publish_record())
    wait_for(lambda: b.plane.counters["pending"] > before, message="b to wait for the code")
    assert not _has_worker(b, "acme", "late")
    fleet.run(publish_code())
    wait_for(lambda: _has_worker(b, "acme", "late"), message="the worker on b once its code is there")
    assert b.node.workers.registry.current_sync("acme", "late").source == files


def test_a_record_that_is_not_json_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    a, b = fleet.members[:2]
    before = b.plane.counters["rejected"]

    async def put() -> None:
        await a.nc.jetstream().publish(f"{SUBJECTS}.control.tenant.junk", b"\xff not json")

    fleet.run(put())
    wait_for(lambda: b.plane.counters["rejected"] > before, message="b to refuse the record")
    assert not fleet.run(b.node.auth.tenant_exists("junk"))
