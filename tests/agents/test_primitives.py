"""Each ctx primitive over a real node: steps, time, randomness, sleeps, events, approvals, state."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

from tests.agents.helpers import FAST, deploy, error_code, journal, run_of, start, wait_status
from tests.support import NodeProcess, wait_for


def test_step_result_is_journaled_and_now_random_sleep_replay(api: httpx.Client) -> None:
    deploy(api, "basics", """
        def run(ctx, input):
            a = ctx.step("add", lambda: input["x"] + 1)
            t = ctx.now()
            r = ctx.random()
            ctx.sleep(0.2)
            # After the sleep the code ran again from the top: the journal fixed t and r.
            return {"a": a, "t": t, "r": r, "t2": ctx.now()}
    """)
    run = start(api, "basics", {"x": 41})
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["status"] == "completed", done
    out = done["output"]
    entries = journal(api, run["id"])
    assert [(e["kind"], e["name"]) for e in entries] == [
        ("step", "add"), ("now", "now"), ("random", "random"), ("sleep", "sleep"), ("now", "now")]
    assert out["a"] == 42 and entries[0]["result"] == 42
    assert out["t"] == entries[1]["result"] and out["r"] == entries[2]["result"]
    assert out["t2"] >= entries[3]["request"]["until"]
    assert done["activations"] >= 2


def test_step_retries_with_backoff_then_succeeds(api: httpx.Client, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    deploy(api, "flaky", """
        from pathlib import Path

        def flaky(path):
            p = Path(path)
            n = int(p.read_text()) + 1 if p.exists() else 1
            p.write_text(str(n))
            if n < 3:
                raise RuntimeError(f"attempt {n} fails")
            return n

        def run(ctx, input):
            return ctx.step("flaky", lambda: flaky(input), retries=3, backoff=0.05)
    """)
    run = start(api, "flaky", str(counter))
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == 3
    assert counter.read_text() == "3"
    [entry] = journal(api, run["id"])
    assert entry["status"] == "ok" and entry["attempts"] == 3


def test_step_that_exhausts_retries_raises_step_failed(api: httpx.Client) -> None:
    deploy(api, "doomed", """
        from edgenode_guest.agent import StepFailed

        def boom():
            raise ValueError("always")

        def run(ctx, input):
            try:
                ctx.step("boom", boom, retries=1, backoff=0.01)
            except StepFailed as exc:
                return {"caught": exc.error["type"], "name": exc.name}
    """)
    run = start(api, "doomed")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"caught": "ValueError", "name": "boom"}
    [entry] = journal(api, run["id"])
    assert entry["status"] == "error" and entry["attempts"] == 2


def test_step_timeout(api: httpx.Client) -> None:
    deploy(api, "slowstep", """
        import time
        from edgenode_guest.agent import StepFailed

        def run(ctx, input):
            try:
                ctx.step("slow", lambda: time.sleep(30), timeout=0.2)
            except StepFailed as exc:
                return exc.error["type"]
    """)
    run = start(api, "slowstep")
    assert wait_status(api, run["id"], "completed", "failed")["output"] == "TimeoutError"


def test_uncaught_exception_fails_the_run(api: httpx.Client) -> None:
    deploy(api, "crasher", """
        def run(ctx, input):
            ctx.now()
            raise KeyError("missing")
    """)
    run = start(api, "crasher")
    done = wait_status(api, run["id"], "failed", "completed")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "agent_error" and done["error"]["type"] == "KeyError"


def test_wait_for_event_delivers_payload_and_buffers_early_events(api: httpx.Client) -> None:
    deploy(api, "listener", """
        def run(ctx, input):
            first = ctx.wait_for_event("ping")
            ctx.sleep(0.3)
            second = ctx.wait_for_event("pong", timeout=60)
            return [first, second]
    """)
    run = start(api, "listener")
    wait_for(lambda: (run_of(api, run["id"])["waiting"] or {}).get("type") == "ping", message="waiting for ping")
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "ping", "payload": {"n": 1}})
    assert r.status_code == 202 and r.json()["delivered"] is True
    # Sent while the run sleeps, before it waits: the event is kept for it.
    wait_for(lambda: (run_of(api, run["id"])["waiting"] or {}).get("kind") == "sleep", message="sleeping")
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "pong", "payload": "early"})
    assert r.json()["delivered"] is False
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == [{"n": 1}, "early"]


def test_wait_for_event_times_out_with_none(api: httpx.Client) -> None:
    deploy(api, "impatient", """
        def run(ctx, input):
            return {"got": ctx.wait_for_event("never", timeout=0.3)}
    """)
    run = start(api, "impatient")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"got": None}
    [entry] = journal(api, run["id"])
    assert entry["kind"] == "event" and entry["status"] == "ok" and entry["result"] is None


def test_event_for_a_finished_run_is_a_conflict(api: httpx.Client) -> None:
    deploy(api, "quick", "def run(ctx, input):\n    return 'done'\n")
    run = start(api, "quick")
    wait_status(api, run["id"], "completed")
    r = api.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "late", "payload": 1})
    assert r.status_code == 409 and error_code(r) == "run_finished"


APPROVER = """
    def run(ctx, input):
        draft = ctx.step("draft", lambda: "hello " + input)
        decision = ctx.approval("publish?", {"draft": draft})
        if decision.approved:
            ctx.set_state({"published": draft, "by": decision.by})
        return {"approved": decision.approved, "comment": decision.comment}
"""


def test_approval_flow_over_http(api: httpx.Client) -> None:
    deploy(api, "approver", APPROVER)
    run = start(api, "approver", "world")
    wait_status(api, run["id"], "waiting")
    pending = api.get("/v1/agents/approvals").json()["approvals"]
    mine = [p for p in pending if p["run"] == run["id"]]
    assert mine and mine[0]["prompt"] == "publish?" and mine[0]["data"] == {"draft": "hello world"}
    r = api.post(f"/v1/agents/runs/{run['id']}/approve", json={"comment": "ship it"})
    assert r.status_code == 200
    again = api.post(f"/v1/agents/runs/{run['id']}/approve", json={})
    assert again.status_code == 409
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"approved": True, "comment": "ship it"}
    # decision.by: the approving token's name (the admin token's is "admin")
    assert api.get("/v1/agents/approver").json()["state"] == {"published": "hello world", "by": "admin"}
    r = api.post(f"/v1/agents/runs/{run['id']}/reject")
    assert r.status_code == 409 and error_code(r) == "run_finished"


def test_reject_and_approval_by_another_tenant(api: httpx.Client, agent_node: NodeProcess) -> None:
    deploy(api, "approver", APPROVER)
    run = start(api, "approver", "x")
    wait_status(api, run["id"], "waiting")
    token = api.post("/v1/tokens", json={"tenant": "mallory"}).json()["token"]
    with agent_node.client(token) as other:
        # Another tenant's run answers as a missing one does: 404, the same body but for the request id.
        missing = other.get("/v1/agents/runs/run_0000000000000000")
        for r in (other.post(f"/v1/agents/runs/{run['id']}/approve", json={}),
                  other.get(f"/v1/agents/runs/{run['id']}"),
                  other.get(f"/v1/agents/runs/{run['id']}/history"),
                  other.post(f"/v1/agents/runs/{run['id']}/events", json={"type": "x"})):
            assert r.status_code == 404 and error_code(r) == "run_not_found", r.text
            assert r.json()["error"]["message"].replace(run["id"], "?") == \
                missing.json()["error"]["message"].replace("run_0000000000000000", "?")
        assert other.get("/v1/agents/approvals").json()["approvals"] == []
    r = api.post(f"/v1/agents/runs/{run['id']}/reject", json={"comment": "no"})
    assert r.status_code == 200
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"approved": False, "comment": "no"}


def test_approval_without_pending_approval_is_a_conflict(api: httpx.Client) -> None:
    deploy(api, "listener2", "def run(ctx, input):\n    return ctx.wait_for_event('x')\n")
    run = start(api, "listener2")
    wait_status(api, run["id"], "waiting")
    r = api.post(f"/v1/agents/runs/{run['id']}/approve", json={})
    assert r.status_code == 409 and error_code(r) == "run_state_conflict"
    api.post(f"/v1/agents/runs/{run['id']}/cancel")


def test_sub_agent_result(api: httpx.Client) -> None:
    deploy(api, "child", "def run(ctx, input):\n    return input * 2\n")
    deploy(api, "parent", """
        def run(ctx, input):
            result = ctx.call_agent("child", 21)
            missing = None
            try:
                ctx.call_agent("no-such-agent", 1)
            except Exception as exc:
                missing = type(exc).__name__
            return {"child": result["output"], "status": result["status"], "missing": missing}
    """)
    run = start(api, "parent")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"child": 42, "status": "completed", "missing": "HostError"}
    child = run_of(api, f"{run['id']}.0")
    assert child["parent_id"] == run["id"] and child["status"] == "completed"


def test_fetch_is_allow_listed(api: httpx.Client, agent_node: NodeProcess) -> None:
    port = agent_node.url.rsplit(":", 1)[1]
    deploy(api, "fetcher", """
        def run(ctx, input):
            ok = ctx.fetch(input + "/healthz")
            denied = []
            for url in ("http://example.invalid/", input.replace(":" + input.rsplit(":", 1)[1], ":1") + "/",
                        "https://127.0.0.1:" + input.rsplit(":", 1)[1] + "/"):
                try:
                    ctx.fetch(url)
                    denied.append(None)
                except Exception as exc:
                    denied.append(exc.code)
            return {"status": ok["status"], "denied": denied}
    """, allowed_hosts=[f"http://127.0.0.1:{port}"])
    run = start(api, "fetcher", agent_node.url)
    done = wait_status(api, run["id"], "completed", "failed")
    # Other hosts, other ports and other schemes are refused: the one grammar of every allow-list.
    assert done["output"] == {"status": 200, "denied": ["fetch_denied"] * 3}


def test_agent_fetch_refuses_names_resolving_to_loopback(make_node: Any) -> None:
    node = make_node(env=FAST)  # no operator network: loopback is refused
    port = node.url.rsplit(":", 1)[1]
    with node.client() as c:
        deploy(c, "prober", """
            def run(ctx, input):
                try:
                    ctx.fetch(input)
                except Exception as exc:
                    return [exc.code, str(exc)]
        """, allowed_hosts=[f"localhost:{port}"])
        run = start(c, "prober", f"http://localhost:{port}/healthz")
        done = wait_status(c, run["id"], "completed", "failed")
    assert done["output"][0] == "fetch_denied" and "egress policy" in done["output"][1], done


def test_host_calls_inside_a_step_body_are_refused(api: httpx.Client) -> None:
    deploy(api, "nested", """
        from edgenode_guest.agent import StepFailed

        def run(ctx, input):
            try:
                ctx.step("outer", lambda: ctx.now())
            except StepFailed as exc:
                return exc.error["message"]
    """)
    run = start(api, "nested")
    done = wait_status(api, run["id"], "completed", "failed")
    assert "nested_call" in done["output"] and "outer" in done["output"]
    assert [e["kind"] for e in journal(api, run["id"])] == ["step"]


def test_a_run_cannot_grow_its_journal_without_bound(make_node: Any) -> None:
    node = make_node(env={**FAST, "EDGENODE_AGENTS_MAX_JOURNAL_ENTRIES": "5"})
    with node.client() as c:
        deploy(c, "looper", """
            def run(ctx, input):
                while True:
                    ctx.now()
        """)
        run = start(c, "looper")
        done = wait_status(c, run["id"], "failed", "completed")
        assert done["error"]["code"] == "journal_full"
        assert len(journal(c, run["id"])) == 5


def test_approval_timeout_and_sleep_until(api: httpx.Client) -> None:
    deploy(api, "deadline", """
        def run(ctx, input):
            ctx.sleep_until(ctx.now() + 0.2)
            decision = ctx.approval("quick?", timeout=0.3)
            return {"approved": decision.approved, "timed_out": decision.timed_out}
    """)
    run = start(api, "deadline")
    done = wait_status(api, run["id"], "completed", "failed")
    assert done["output"] == {"approved": False, "timed_out": True}
    assert [e["kind"] for e in journal(api, run["id"])] == ["now", "sleep", "approval"]


def test_pause_stops_an_executing_run_at_its_next_call(api: httpx.Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    deploy(api, "pausable", """
        import time
        from pathlib import Path

        def wait_for_gate(path):
            while not Path(path).exists():
                time.sleep(0.02)
            return "through"

        def run(ctx, input):
            a = ctx.step("gate", lambda: wait_for_gate(input))
            b = ctx.step("after", lambda: "after")
            return [a, b]
    """)
    run = start(api, "pausable", str(gate))
    wait_status(api, run["id"], "running")
    assert api.post(f"/v1/agents/runs/{run['id']}/pause").json()["status"] == "paused"
    gate.write_text("open")
    # The step in progress could not report back; nothing past the pause was journaled.
    wait_for(lambda: api.get("/v1/status").json()["capabilities"]["agents"]["active"] == 0, message="stopped")
    assert run_of(api, run["id"])["status"] == "paused"
    assert journal(api, run["id"]) == []
    api.post(f"/v1/agents/runs/{run['id']}/resume")
    assert wait_status(api, run["id"], "completed")["output"] == ["through", "after"]


def test_ctx_log_goes_to_the_node_log(api: httpx.Client, agent_node: NodeProcess) -> None:
    deploy(api, "logger", """
        def run(ctx, input):
            ctx.log("hello from the agent")
            return "logged"
    """)
    run = start(api, "logger")
    assert wait_status(api, run["id"], "completed", "failed")["output"] == "logged"
    wait_for(lambda: "hello from the agent" in agent_node.log(), message="the line in the node log")


def test_an_agent_named_ui_is_refused_not_a_crash(api: httpx.Client) -> None:
    for method, path, body in (("PUT", "/v1/agents/ui", {"files": {"main.py": "def run(ctx, i):\n    return 1\n"}}),
                               ("POST", "/v1/agents/ui/runs", {}), ("DELETE", "/v1/agents/ui", None)):
        r = api.request(method, path, json=body)
        assert r.status_code == 400 and error_code(r) == "validation_failed", r.text
    assert api.get("/v1/agents/ui/", headers={"authorization": ""}).status_code == 200


def _raw_post(node: NodeProcess, path: str, head: str, body: bytes) -> bytes:
    """Send a request head and part of a body on a raw socket; the answer the node gives meanwhile."""
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.admin_token}\r\n"
                  f"Content-Type: application/json\r\n{head}\r\n".encode() + body)
        return s.recv(200)  # the body is never finished: only a bounded reader answers


def test_decisions_refuse_a_huge_body_without_reading_it(api: httpx.Client, agent_node: NodeProcess) -> None:
    deploy(api, "approver", APPROVER)
    run = start(api, "approver", "x")
    wait_status(api, run["id"], "waiting")
    path = f"/v1/agents/runs/{run['id']}/approve"
    declared = _raw_post(agent_node, path, "Content-Length: 50331648\r\n", b"{")
    assert declared.startswith(b"HTTP/1.1 413"), declared
    chunk = b"x" * 65536
    chunked = _raw_post(agent_node, path, "Transfer-Encoding: chunked\r\n",
                        b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(32)))
    assert chunked.startswith(b"HTTP/1.1 413"), chunked
    assert run_of(api, run["id"])["status"] == "waiting"
