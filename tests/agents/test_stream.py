"""``GET /v1/agents/runs/{id}/events``: journal entries, status changes and model token deltas as they happen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from edgenode.cli import cli
from edgenode.client import AsyncClient, Client, RunEvent
from tests.agents.helpers import FAST, deploy, error_code, journal, start, wait_status
from tests.agents.model_servers import ModelServer
from tests.support import NodeProcess

TALKER = """
def run(ctx, input):
    ctx.wait_for_event("go")
    reply = ctx.model("local:gated").chat([{"role": "user", "content": input}])
    ctx.step("after", lambda: len(reply.text))
    return reply.text
"""


@pytest.fixture(scope="module")
def models() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def stream_node(tmp_path_factory: pytest.TempPathFactory, models: ModelServer) -> Iterator[NodeProcess]:
    env = {**FAST, "EDGENODE_AGENTS_MODEL_ENDPOINTS": f"local={models.url}/compat/v1",
           "EDGENODE_AGENTS_MODEL_TIMEOUT_S": "150", "EDGENODE_AGENTS_MODEL_RETRIES": "0"}
    proc = NodeProcess(tmp_path_factory.mktemp("stream"), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture
def api(stream_node: NodeProcess) -> Iterator[httpx.Client]:
    with stream_node.client() as c:
        yield c


@pytest.fixture
def sdk(stream_node: NodeProcess) -> Iterator[Client]:
    with Client(stream_node.url, stream_node.admin_token) as client:
        yield client


def test_token_deltas_reach_a_follower_before_the_reply_is_complete(api: httpx.Client, sdk: Client,
                                                                    models: ModelServer) -> None:
    deploy(api, "talker", TALKER)
    run = start(api, "talker", "hello streaming world")
    seen: list[RunEvent] = []
    for event in sdk.agents.run(run["id"]).events(timeout=120):
        seen.append(event)
        if event.kind == "status" and event.data["status"] == "waiting" and not models.gate.is_set():
            # Followed from here on: now let the run make its model call.
            api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "go"})
        if event.kind == "delta" and not models.gate.is_set():
            # The stand-in holds the rest of its reply until the gate opens: this delta came early.
            assert models.finished == 0
            assert [e["kind"] for e in journal(api, run["id"])] == ["event"]
            models.gate.set()
    kinds = [e.kind for e in seen]
    assert kinds[-1] == "end" and seen[-1].data["status"] == "completed"
    deltas = [e.data for e in seen if e.kind == "delta"]
    assert len(deltas) == 2 and deltas[0]["position"] == 1
    entry = next(e.data for e in seen if e.kind == "journal" and e.data["kind"] == "model.chat")
    assert "".join(d["text"] for d in deltas) == entry["result"]["text"] == "echo: hello streaming world"
    # Deltas of the model call come before the journal entry holding its whole reply.
    assert kinds.index("delta") < next(i for i, e in enumerate(seen) if e.kind == "journal"
                                       and e.data["kind"] == "model.chat")
    assert seen[-1].data["run"]["output"] == "echo: hello streaming world"


def test_resume_after_the_last_event_id(api: httpx.Client, sdk: Client) -> None:
    deploy(api, "stepper", """
        def run(ctx, input):
            for i in range(3):
                ctx.step(f"s{i}", lambda: i)
            return "done"
    """)
    run = start(api, "stepper")
    wait_status(api, run["id"], "completed")
    everything = list(sdk.agents.run(run["id"]).events(timeout=60))
    stored = [e for e in everything if e.kind in ("journal", "status")]
    assert [e.data["status"] for e in stored if e.kind == "status"] == ["pending", "running", "completed"]
    assert [e.data["name"] for e in stored if e.kind == "journal"] == ["s0", "s1", "s2"]
    middle = stored[2]
    rest = list(sdk.agents.run(run["id"]).events(timeout=60, after=middle.id))
    assert [e.id for e in rest if e.kind != "end"] == [e.id for e in stored[3:]]
    # The same resume as an event source makes it: the Last-Event-ID header.
    with api.stream("GET", f"/v1/agents/runs/{run['id']}/events", headers={"last-event-id": middle.id}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        ids = [line[4:] for line in r.iter_lines() if line.startswith("id: ")]
    assert ids[:-1] == [e.id for e in stored[3:]]


def test_bad_resume_ids_are_refused(api: httpx.Client) -> None:
    deploy(api, "quick", "def run(ctx, input):\n    return 1\n")
    run = start(api, "quick")
    url = f"/v1/agents/runs/{run['id']}/events"
    for headers, params, name in (({"last-event-id": "abc"}, None, "Last-Event-ID"),
                                  ({"last-event-id": "1.2.3"}, None, "Last-Event-ID"),
                                  ({}, {"after": "-1"}, "after")):
        r = api.get(url, headers=headers, params=params)
        assert r.status_code == 400 and error_code(r) == "validation_failed", r.text
        assert r.json()["error"]["field"] == name
    r = api.get("/v1/agents/runs/missing/events")
    assert r.status_code == 404 and error_code(r) == "run_not_found"


def test_cli_follow_prints_the_run(stream_node: NodeProcess, api: httpx.Client) -> None:
    deploy(api, "quick", "def run(ctx, input):\n    ctx.now()\n    return 'followed'\n")
    run = start(api, "quick", id="follow-me")
    result = CliRunner().invoke(cli, ["--url", stream_node.url, "--token", stream_node.admin_token,
                                      "agent", "follow", run["id"]])
    assert result.exit_code == 0, result.output
    assert "now" in result.output and 'follow-me completed: "followed"' in result.output


def test_the_async_client_follows_and_restarts(stream_node: NodeProcess, api: httpx.Client) -> None:
    deploy(api, "quick", "def run(ctx, input):\n    ctx.now()\n    return 'followed'\n")
    run = start(api, "quick")
    wait_status(api, run["id"], "completed")

    async def scenario() -> None:
        async with AsyncClient(stream_node.url, stream_node.admin_token) as client:
            followed = await client.agents.run(run["id"])
            kinds = [event.kind async for event in followed.events(timeout=60)]
            assert kinds[-1] == "end" and "journal" in kinds and followed.status == "completed"
            again = await followed.restart(1)
            assert again.info["restarted_from"] == {"run": run["id"], "step": 1}
            assert (await again.wait(60)).output == "followed"

    asyncio.run(scenario())
