"""Agent tools against the node's real capabilities: kv and sql, artifacts, sandboxes, workers."""

from __future__ import annotations

import httpx
import pytest

from tests.agents.helpers import deploy, journal, start, wait_status


def test_kv_and_sql_are_journaled(api: httpx.Client) -> None:
    deploy(api, "stateful", """
        def run(ctx, input):
            ctx.kv.put("greeting", "hi " + input)
            ctx.sql("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
            ctx.sql("INSERT INTO notes (body) VALUES (?)", [input])
            ctx.sleep(0.1)  # replay: the reads below come back from the journal, the writes are not redone
            rows = ctx.sql("SELECT COUNT(*) FROM notes")["rows"]
            return {"kv": ctx.kv.get("greeting"), "keys": ctx.kv.list("gr"), "count": rows[0][0]}
    """)
    run = start(api, "stateful", "there")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"kv": "hi there", "keys": ["greeting"], "count": 1}, done
    r = api.get("/v1/kv/agent.stateful/greeting")
    assert r.status_code == 200 and r.content == b"hi there"
    kinds = [e["kind"] for e in journal(api, run["id"])]
    assert kinds == ["kv.put", "sql", "sql", "sleep", "sql", "kv.get", "kv.list"]


def test_commit_and_read_an_artifact(api: httpx.Client) -> None:
    assert api.post("/v1/repos", json={"name": "agent-notes"}).status_code == 201
    deploy(api, "committer", """
        def run(ctx, input):
            sha = ctx.commit("agent-notes", "main", "agent note", {"NOTE.md": input})
            return {"sha": sha, "text": ctx.read_file("agent-notes", "main", "NOTE.md")}
    """)
    run = start(api, "committer", "# hello\n")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert done["output"]["text"] == "# hello\n" and len(done["output"]["sha"]) == 40


def test_sandbox_exec_and_files(api: httpx.Client) -> None:
    r = api.post("/v1/sandboxes", json={"name": "agent-box"})
    assert r.status_code == 201, r.text
    box = r.json()["id"]
    deploy(api, "boxer", """
        def run(ctx, input):
            ctx.sandbox_write(input, "hello.txt", "from the agent")
            out = ctx.sandbox_exec(input, "cat hello.txt && echo done > out.txt")
            return {"exit": out["exit_code"], "stdout": out["stdout"], "file": ctx.sandbox_read(input, "out.txt")}
    """)
    run = start(api, "boxer", box)
    done = wait_status(api, run["id"], "completed", "failed", timeout=60)
    assert done["output"] == {"exit": 0, "stdout": "from the agent", "file": "done\n"}, done
    api.delete(f"/v1/sandboxes/{box}")


@pytest.mark.slow
def test_run_code_in_a_worker_isolate(api: httpx.Client) -> None:
    deploy(api, "coder", """
        CODE = "\\n".join(["def handle(request):", "    return {'sum': sum(request.json())}"])

        def run(ctx, input):
            return ctx.run_code(CODE, input=input)
    """)
    run = start(api, "coder", [1, 2, 3])
    done = wait_status(api, run["id"], "completed", "failed", timeout=120)
    assert done["status"] == "completed", done
    assert done["output"]["status"] == 200 and done["output"]["body"] == {"sum": 6}
