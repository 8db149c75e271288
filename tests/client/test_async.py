"""The async SDK against a real node: the same surface as the blocking one, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edgenode.client import AsyncClient, GuestException, NotFound, ValidationFailed, errors
from tests.client.helpers import APPROVAL_AGENT
from tests.support import NodeProcess


def _with_client(node: NodeProcess, token: str, body: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with AsyncClient(node.url, token, timeout=120) as client:
            return await body(client)
    return asyncio.run(main())


def test_async_run_and_errors(node: NodeProcess, token: str) -> None:
    async def body(client: AsyncClient) -> None:
        results = await asyncio.gather(*(client.run("def main(x):\n    return x + 1\n", input=i) for i in range(3)))
        assert [r.json for r in results] == [1, 2, 3]
        with pytest.raises(GuestException):
            await client.run("def main(x):\n    return 1 / 0\n")
        with pytest.raises(ValidationFailed):
            await client.run(None)
    _with_client(node, token, body)


def test_async_sandbox_exec_stream_and_files(node: NodeProcess, token: str) -> None:
    async def body(client: AsyncClient) -> None:
        box = await client.sandboxes.create()
        try:
            assert (await box.exec("echo hi")).stdout == "hi\n"
            events = [e async for e in await box.exec("echo a; echo b", stream=True)]
            assert [e.line for e in events if e.kind == "stdout"] == ["a", "b"]
            assert events[-1].result is not None and events[-1].result.ok
            await box.files.write("x/y/z.txt", "zed")
            fork = await box.fork()
            assert fork.info["forked_from"] == box.id and (await fork.files.read("x/y/z.txt")) == b"zed"
            assert (await fork.expose_port(8001))["port"] == 8001 and len(await fork.ports()) == 1
            await fork.delete()
            assert await box.files.read_text("x/y/z.txt") == "zed"
            assert [e["name"] for e in await box.files.list("x/y")] == ["z.txt"]
            proc = await box.processes.start(["sh", "-c", "echo bg"])
            assert await proc.logs(follow=True) == "bg\n"
        finally:
            await box.delete()
        with pytest.raises(errors.SandboxNotFound):
            await client.sandboxes.get(box.id)
    _with_client(node, token, body)


def test_async_workers_repos_kv_sql(node: NodeProcess, token: str) -> None:
    async def body(client: AsyncClient) -> None:
        await client.workers.deploy("echo", files={"main.py": "def handle(request):\n    return request.text()\n"})
        assert (await client.workers.invoke("echo", method="POST", content=b"ping")).text == "ping"
        assert "echo" in [w["name"] for w in await client.workers.list()]
        await client.workers.delete("echo")
        with pytest.raises(NotFound):
            await client.workers.get("echo")

        await client.repos.create("async-notes")
        commit = await client.repos.commit("async-notes", {"a.txt": "A"}, message="a")
        assert await client.repos.read_file("async-notes", "a.txt") == b"A"
        assert (await client.repos.refs("async-notes"))["refs"]["refs/heads/main"] == commit

        kv = client.kv("async-app")
        await kv.put("k", "v")
        assert await kv.get("k") == b"v" and await kv.list() == ["k"]
        await kv.delete("k")
        assert await kv.get("k") is None
        await client.sql("async-app", "CREATE TABLE t (id INTEGER PRIMARY KEY)")
        assert (await client.sql("async-app", "INSERT INTO t VALUES (1)")).rows_affected == 1
    _with_client(node, token, body)


def test_async_agent_run_to_its_approval(node: NodeProcess, token: str) -> None:
    async def body(client: AsyncClient) -> None:
        await client.agents.deploy("async-publisher", files={"main.py": APPROVAL_AGENT})
        run = await client.agents.start("async-publisher", "draft")
        await run.wait_for_approval(timeout=60)
        assert run.awaiting_approval
        await run.approve(comment="ok")
        statuses = [e.data["status"] async for e in run.events(timeout=60) if e.kind == "status"]
        assert statuses[-1] == "completed" and run.output["approved"] is True
        with pytest.raises(errors.RunFinished):
            await run.reject()
    _with_client(node, token, body)
