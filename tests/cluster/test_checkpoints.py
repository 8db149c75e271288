"""Sandbox checkpoints on a real two-node fleet: checkpoint on one node, restore on the other."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from click.testing import CliRunner

from edgenode.artifacts.gossip import sign
from edgenode.cli import cli
from edgenode.client import Client
from edgenode.cluster.transport import Bucket
from edgenode.fleet.buckets import BlobStore
from edgenode.fleet.control import SIGNING_DOMAIN
from tests.agents.helpers import FAST as AGENTS_FAST
from tests.agents.helpers import deploy, start, wait_status
from tests.cluster.helpers import KEYS, SECRET, running_fleet
from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess, wait_for

SCOPE = b"edgenode-checkpoint-v1\x00"
#: Builds a workspace with a subdirectory, an executable, links inside and out, a FIFO and a
#: file of two pieces (over 4 MiB).
SETUP = (
    "mkdir -p sub/deep empty && printf 'hello' > a.txt && printf '#!/bin/sh\\necho ran\\n' > run.sh"
    " && chmod 755 run.sh && chmod 700 sub/deep && ln -s a.txt link && ln -s ../a.txt sub/up"
    " && ln -s /etc outside && mkfifo pipe && head -c 300000 /dev/urandom > sub/deep/blob.bin"
    " && head -c 5000000 /dev/urandom > big.bin"
)
DESCRIBE = ("find . -path ./pipe -prune -o -print | sort | while read p; do "
            "if [ -L \"$p\" ]; then echo \"L $p $(readlink \"$p\")\"; "
            "elif [ -d \"$p\" ]; then echo \"D $p $(stat -c %a \"$p\")\"; "
            "else echo \"F $p $(stat -c %a \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; fi; done")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with running_fleet(tmp_path_factory.mktemp("checkpoints"), 2, env=AGENTS_FAST) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def clients(fleet: list[NodeProcess]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with fleet[0].client(timeout=120) as a, fleet[1].client(timeout=120) as b:
        yield a, b


@pytest.fixture(scope="module")
def work(clients: tuple[httpx.Client, httpx.Client]) -> dict[str, Any]:
    """Sandbox ``work`` on node A with the SETUP workspace and a first checkpoint."""
    a, _ = clients
    r = a.post("/v1/sandboxes", json={"name": "work"})
    assert r.status_code == 201, r.text
    sandbox = r.json()["id"]
    assert run(a, sandbox, SETUP)["exit_code"] == 0
    made = a.post(f"/v1/sandboxes/{sandbox}/checkpoints")
    assert made.status_code == 201, made.text
    return {"id": sandbox, "first": made.json(), "listing": run(a, sandbox, DESCRIBE)["stdout"]}


def _latest(client: httpx.Client, ref: str, manifest: str | None = None) -> Any:
    r = client.get(f"/v1/sandboxes/{ref}/checkpoints")
    if r.status_code != 200 or (manifest is not None and r.json()["manifest"] != manifest):
        return None
    return r.json()


def test_a_checkpoint_restores_files_modes_and_links_on_another_node(
        clients: tuple[httpx.Client, httpx.Client], work: dict[str, Any]) -> None:
    a, b = clients
    first = work["first"]
    # Files, directories and symlinks; the FIFO is skipped, not followed nor failed on.
    assert first["files"] == 4 and first["entries"] == 10 and first["skipped"] == ["pipe"], first
    assert first["bytes"] == 5 + 19 + 300000 + 5000000
    assert first["uploaded_bytes"] > first["bytes"] and first["reused_bytes"] == 0 and first["hashed_files"] == 4
    found = wait_for(lambda: _latest(b, "work", first["manifest"]), message="the checkpoint record on node B")
    assert found["sandbox"] == work["id"] and found["node"] == _latest(a, "work")["node"]

    r = b.post("/v1/sandboxes", json={"checkpoint": "work"})
    assert r.status_code == 201, r.text
    restored = r.json()
    assert restored["id"] == work["id"] and restored["name"] == "work"
    assert restored["restored_from"]["manifest"] == first["manifest"]
    assert run(b, "work", DESCRIBE)["stdout"] == work["listing"]
    assert "L ./outside /etc" in work["listing"] and "D ./sub/deep 700" in work["listing"]
    assert run(b, "work", "./run.sh && cat link sub/up")["stdout"] == "ran\nhellohello"
    # The restore recorded what it wrote: checkpointing the same files again reads and sends nothing.
    again = b.post("/v1/sandboxes/work/checkpoints").json()
    assert again["hashed_files"] == 0 and again["uploaded_bytes"] == 0 and again["manifest"] == first["manifest"]
    # Restoring a sandbox that is here already is a conflict, and changes nothing.
    assert_error(b.post("/v1/sandboxes", json={"checkpoint": "work"}), 409, "conflict")
    assert b.delete("/v1/sandboxes/work").status_code == 204


def test_a_second_checkpoint_sends_only_what_changed(clients: tuple[httpx.Client, httpx.Client],
                                                     work: dict[str, Any]) -> None:
    a, b = clients
    sandbox = work["id"]
    assert run(a, sandbox, "printf 'changed!' > a.txt")["exit_code"] == 0
    made = a.post(f"/v1/sandboxes/{sandbox}/checkpoints")
    assert made.status_code == 201, made.text
    second = made.json()
    assert second["hashed_files"] == 1 and second["manifest"] != work["first"]["manifest"]
    # The changed file and the manifest travel; the 5.3 MB of unchanged files do not.
    assert second["reused_bytes"] == second["bytes"] - 8
    assert 8 < second["uploaded_bytes"] < 10_000, second
    wait_for(lambda: _latest(b, sandbox, second["manifest"]), message="the second checkpoint on node B")
    r = b.post("/v1/sandboxes", json={"checkpoint": sandbox})
    assert r.status_code == 201, r.text
    assert run(b, sandbox, "cat a.txt")["stdout"] == "changed!"
    # Deleting it where it was restored keeps the fleet's checkpoint (made on A, where it lives).
    assert b.delete(f"/v1/sandboxes/{sandbox}").status_code == 204
    assert _latest(b, sandbox, second["manifest"]) is not None


async def _inject(port: int, tenant: str, sandbox: str, manifest: dict[str, Any], blobs: list[bytes],
                  limits: dict[str, int] | None = None, at: float | None = None) -> None:
    """Write ``blobs`` and a fleet-signed checkpoint record of ``manifest`` as a fleet member could."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=KEYS.client_user, password=KEYS.client_password)
    try:
        holder = type("Holder", (), {"jetstream": nc.jetstream()})()
        store = BlobStore(Bucket(holder, KEYS.stream("KV_blobs"), f"{KEYS.prefix}.kv.blobs"))  # type: ignore[arg-type]
        scope = SCOPE + tenant.encode() + b"\x00"
        for blob in blobs:
            await store.put(scope + blob)
        name = await store.put(scope + json.dumps(manifest).encode())
        key = f"checkpoint.{tenant}.{sandbox}"
        record = {"tenant": tenant, "id": sandbox, "name": None, "manifest": name, "network": {"allow": []},
                  "limits": limits or {}, "image": None, "files": 1, "bytes": 1, "entries": 1,
                  "checkpointed_at": at or time.time(), "node": "elsewhere"}
        envelope = sign(SECRET.encode(), {"v": 1, "key": key, "stamp": time.time_ns() << 8, "origin": "elsewhere",
                                          "record": record}, SIGNING_DOMAIN)
        await nc.jetstream().publish(f"{KEYS.prefix}.kv.control.{key}", json.dumps(envelope).encode())
    finally:
        await nc.close()


def _client_port(node: NodeProcess) -> int:
    port: int = json.loads((node.data_dir / "nats" / "ports.json").read_text())["client"]
    return port


def _file(path: str, content: bytes, digest: str | None = None) -> dict[str, Any]:
    blob = hashlib.sha256(SCOPE + b"default\x00" + content).hexdigest()
    return {"path": path, "type": "file", "mode": 0o644, "size": len(content), "mtime_ns": 0,
            "digest": digest or hashlib.sha256(content).hexdigest(), "blobs": [blob]}


@pytest.mark.parametrize(("case", "entries", "reason"), [
    ("dotdot", [_file("../escaped", b"x")], "escapes"),
    ("absolute", [_file("/tmp/escaped", b"x")], "escapes"),
    ("through-link", [{"path": "out", "type": "symlink", "target": "OUTSIDE"}, _file("out/escaped", b"x")],
     "escapes"),
    ("no-parent", [_file("missing/escaped", b"x")], "escapes"),
    ("bad-digest", [_file("ok.txt", b"x", digest="0" * 64)], "digest"),
])
def test_a_hostile_checkpoint_is_refused_and_writes_nothing(fleet: list[NodeProcess],
                                                            clients: tuple[httpx.Client, httpx.Client],
                                                            case: str, entries: list[dict[str, Any]],
                                                            reason: str, tmp_path: Path) -> None:
    _, b = clients
    sandbox = "sb_" + hashlib.sha256(case.encode()).hexdigest()[:16]
    entries = [{**e, "target": str(tmp_path)} if e.get("target") == "OUTSIDE" else e for e in entries]
    asyncio.run(_inject(_client_port(fleet[1]), "default", sandbox, {"v": 1, "entries": entries}, [b"x"]))
    wait_for(lambda: _latest(b, sandbox), message="the injected record on node B")
    error = assert_error(b.post("/v1/sandboxes", json={"checkpoint": sandbox}), 422, "checkpoint_invalid")
    assert error["reason"] == reason, error
    assert_error(b.get(f"/v1/sandboxes/{sandbox}"), 404, "sandbox_not_found")
    assert not (fleet[1].data_dir / "sandboxes" / sandbox).exists()
    assert not list((fleet[1].data_dir / "sandboxes").glob("escaped")) and not (fleet[1].data_dir / "escaped").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_larger_than_its_quota_is_refused(fleet: list[NodeProcess],
                                                       clients: tuple[httpx.Client, httpx.Client]) -> None:
    _, b = clients
    sandbox = "sb_overquota"
    big = {**_file("big.bin", b"x"), "size": 2 * 1024 * 1024}
    asyncio.run(_inject(_client_port(fleet[1]), "default", sandbox, {"v": 1, "entries": [big]}, [b"x"],
                        limits={"disk_mb": 1}))
    wait_for(lambda: _latest(b, sandbox), message="the injected record on node B")
    error = assert_error(b.post("/v1/sandboxes", json={"checkpoint": sandbox}), 413, "disk_quota_exceeded")
    assert error["limit"] == 1024 * 1024 and error["used"] == 2 * 1024 * 1024
    assert not (fleet[1].data_dir / "sandboxes" / sandbox).exists()


def test_another_tenant_can_never_see_or_restore_a_checkpoint(fleet: list[NodeProcess],
                                                              clients: tuple[httpx.Client, httpx.Client],
                                                              work: dict[str, Any]) -> None:
    a, b = clients
    r = a.post("/v1/tokens", json={"tenant": "acme", "name": "ckpt"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    with fleet[1].client(token=token) as acme:
        wait_for(lambda: acme.get("/v1/sandboxes").status_code == 200, message="acme's token on node B")
        for ref in ("work", work["id"]):
            assert_error(acme.get(f"/v1/sandboxes/{ref}/checkpoints"), 404, "checkpoint_not_found")
            assert_error(acme.post("/v1/sandboxes", json={"checkpoint": ref}), 404, "checkpoint_not_found")
            assert_error(acme.delete(f"/v1/sandboxes/{ref}/checkpoints"), 404, "checkpoint_not_found")
    # acme's own sandbox of the same name, on node A, is acme's alone.
    with fleet[0].client(token=token) as acme:
        created = acme.post("/v1/sandboxes", json={"name": "work"})
        assert created.status_code == 201, created.text
        assert run(acme, "work", "echo acme > mine.txt")["exit_code"] == 0
        made = acme.post("/v1/sandboxes/work/checkpoints").json()
    assert made["sandbox"] == created.json()["id"] != work["id"]
    with fleet[1].client(token=token) as acme:
        wait_for(lambda: _latest(acme, "work", made["manifest"]), message="acme's checkpoint on node B")
    assert _latest(b, "work")["sandbox"] == work["id"]  # default's, not acme's
    # Deleting the tenant on B (which holds only the record) removes its checkpoints on every node.
    assert b.delete("/v1/tenants/acme").status_code == 204
    with fleet[0].client(token=token) as acme:
        wait_for(lambda: acme.get("/v1/sandboxes").status_code == 401, message="acme deleted on node A")
    # A late record of the deleted tenant (a node that was cut off) does not bring a checkpoint back;
    # a record published after it, of another tenant, shows it has been seen.
    empty = {"v": 1, "entries": []}
    asyncio.run(_inject(_client_port(fleet[1]), "acme", "sb_late", empty, []))
    asyncio.run(_inject(_client_port(fleet[1]), "default", "sb_sentinel", empty, []))
    for client in clients:
        wait_for(lambda client=client: _latest(client, "sb_sentinel"), message="the sentinel record")
    r = a.post("/v1/tokens", json={"tenant": "acme", "name": "again"})
    for node in fleet:
        with node.client(token=r.json()["token"]) as acme:
            wait_for(lambda acme=acme: acme.get("/v1/sandboxes/work/checkpoints").status_code == 404,
                     message=f"acme's checkpoint gone on {node.node_id}")
            assert_error(acme.post("/v1/sandboxes", json={"checkpoint": "work"}), 404, "checkpoint_not_found")
            assert_error(acme.get("/v1/sandboxes/sb_late/checkpoints"), 404, "checkpoint_not_found")
    # Nor does one made before the new tenant of that name existed, arriving after it does.
    asyncio.run(_inject(_client_port(fleet[1]), "acme", "sb_older", empty, [], at=time.time() - 3600))
    asyncio.run(_inject(_client_port(fleet[1]), "default", "sb_sentinel2", empty, []))
    for client in clients:
        wait_for(lambda client=client: _latest(client, "sb_sentinel2"), message="the second sentinel record")
    for node in fleet:
        with node.client(token=r.json()["token"]) as acme:
            assert_error(acme.get("/v1/sandboxes/sb_older/checkpoints"), 404, "checkpoint_not_found")


def test_bad_input_gets_a_clear_error(clients: tuple[httpx.Client, httpx.Client], work: dict[str, Any]) -> None:
    a, b = clients
    assert_error(a.post("/v1/sandboxes/nosuch/checkpoints"), 404, "sandbox_not_found")
    assert_error(b.get("/v1/sandboxes/nosuch/checkpoints"), 404, "checkpoint_not_found")
    assert_error(b.post("/v1/sandboxes", json={"checkpoint": "nosuch"}), 404, "checkpoint_not_found")
    error = assert_error(b.post("/v1/sandboxes", json={"checkpoint": "work", "name": "x"}), 400, "validation_failed")
    assert "checkpoint" in error["message"]
    assert_error(b.post("/v1/sandboxes", json={"checkpoint": "../etc"}), 400, "validation_failed")
    assert_error(b.post("/v1/sandboxes", json={"checkpoint": 7}), 400, "validation_failed")


def test_the_sdk_and_the_cli_checkpoint_show_and_restore(fleet: list[NodeProcess], work: dict[str, Any]) -> None:
    a, b = fleet
    with Client(a.url, a.admin_token) as sdk:
        made = sdk.sandboxes.get(work["id"]).checkpoint()
    assert made["sandbox"] == work["id"] and made["hashed_files"] == 0, made
    runner = CliRunner()
    shown = runner.invoke(cli, ["--url", b.url, "--token", b.admin_token, "sandbox", "checkpoint", "work", "--show"])
    assert shown.exit_code == 0, shown.output
    assert work["id"] in shown.output and "manifest" in shown.output
    r = runner.invoke(cli, ["--url", a.url, "--token", a.admin_token, "sandbox", "checkpoint", "work"])
    assert r.exit_code == 0 and "uploaded" in r.output and "skipped  pipe" in r.output, r.output
    wait_for(lambda: _latest_on(b, made["manifest"]), message="the SDK's checkpoint on node B")
    r = runner.invoke(cli, ["--url", b.url, "--token", b.admin_token, "sandbox", "restore", "work"])
    assert r.exit_code == 0 and r.output.strip() == work["id"], r.output
    with Client(b.url, b.admin_token) as sdk:
        assert sdk.sandboxes.get("work").exec("cat a.txt").stdout == "changed!"
        sdk.sandboxes.get("work").delete()
    missing = runner.invoke(cli, ["--url", b.url, "--token", b.admin_token, "sandbox", "checkpoint", "nosuch",
                                  "--show"])
    assert missing.exit_code == 1 and "checkpoint_not_found" in missing.output + missing.stderr
    r = runner.invoke(cli, ["--url", b.url, "--token", b.admin_token, "sandbox", "checkpoint", "work", "--forget"])
    assert r.exit_code == 0 and "forgot" in r.output, r.output
    with a.client() as c:
        wait_for(lambda: c.get("/v1/sandboxes/work/checkpoints").status_code == 404,
                 message="the forgotten checkpoint gone on node A")
        assert c.get("/v1/sandboxes/work").status_code == 200  # the sandbox itself stays


def _latest_on(node: NodeProcess, manifest: str) -> Any:
    with node.client() as c:
        return _latest(c, "work", manifest)


def test_a_run_on_another_node_gets_its_sandbox_back(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    deploy(a, "builder", """
        def run(ctx, input):
            box = ctx.sandbox_create()["id"]
            ctx.sandbox_write(box, "plan.txt", "step one")
            ctx.sandbox_exec(box, "mkdir -p out && echo built > out/result && chmod 750 out")
            return box
    """)
    done = wait_status(a, start(a, "builder", None)["id"], "completed", "failed", timeout=120)
    assert done["status"] == "completed", done.get("error")
    box = done["output"]
    # Every step that changed files was checkpointed: the record is on B before any request there.
    wait_for(lambda: (_latest(b, box) or {}).get("files") == 2, message="the run's last checkpoint on node B")
    assert_error(b.get(f"/v1/sandboxes/{box}"), 404, "sandbox_not_found")
    deploy(b, "reader", READER)
    done = wait_status(b, start(b, "reader", box)["id"], "completed", "failed", timeout=120)
    assert done["status"] == "completed", done
    assert done["output"] == {"plan": "step one", "result": "built\n750\n"}, done
    assert b.get(f"/v1/sandboxes/{box}").status_code == 200
    counters = b.get("/v1/status").json()["capabilities"]["sandboxes"]["checkpoints"]
    assert counters["restored"] >= 1 and counters["failed"] == 0, counters
    assert 'edgenode_sandbox_checkpoints_total{result="restored"}' in b.get("/metrics").text


READER = """
def run(ctx, input):
    plan = ctx.sandbox_read(input, "plan.txt")
    out = ctx.sandbox_exec(input, "cat out/result && stat -c %a out")
    return {"plan": plan, "result": out["stdout"]}
"""
