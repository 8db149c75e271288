"""What each host call does the first time it is made (its result is then journaled).

Effects run on the activation's thread. They reach the node's other capabilities
(state, workers, sandboxes, artifacts) only if the node has them, and fail with a
journaled ``unavailable`` error otherwise, so replay stays deterministic.
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from edgenode.agents.store import dumps, loads
from edgenode.egress import AllowList
from edgenode.errors import AgentNotFound, PayloadTooLarge, Unavailable, ValidationFailed

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents
    from edgenode.agents.replay import Activation

#: Longest a sleep or wait may be, in seconds (a year, as Workflows and Inngest allow).
MAX_WAIT_S = 366 * 86_400.0
#: Most events and timers one ``wait_any`` may wait for.
MAX_WAIT_ANY = 32
#: Largest fetch response body kept, in bytes.
MAX_FETCH_BYTES = 4 * 1024 * 1024
#: Longest one fetch exchange may take, connect to last byte, in seconds.
FETCH_TIMEOUT_S = 30.0


class Effects:
    """The host side of every journaled call."""

    def __init__(self, engine: Agents) -> None:
        self.engine = engine
        self._rng = random.SystemRandom()

    # -- waits ----------------------------------------------------------------

    def wait_spec(self, act: Activation, position: int, kind: str, name: str,
                  request: dict[str, Any]) -> dict[str, Any]:
        """The journaled request of a new wait: absolute times, so replay needs no clock."""
        now = self.engine.now()
        if kind == "sleep":
            if request.get("until") is not None:
                until = float(request["until"])
            else:
                until = now + _seconds(request.get("seconds"), "seconds")
            if until - now > MAX_WAIT_S:
                raise ValidationFailed(f"a sleep may last at most {MAX_WAIT_S:.0f} s", field="seconds")
            return {"until": until}
        if kind == "wait_any":
            return _wait_any_spec(request, now)
        timeout = request.get("timeout")
        deadline = None if timeout is None else now + _seconds(timeout, "timeout")
        if kind == "event":
            return {"type": name, "deadline": deadline}
        if kind == "approval":
            data = request.get("data")
            if len(dumps(data)) > self.engine.settings.max_event_bytes:
                raise PayloadTooLarge("approval data is too large", limit=self.engine.settings.max_event_bytes)
            return {"prompt": name, "data": data, "deadline": deadline}
        if kind == "agent.call":
            tenant = act.run["tenant"]
            known = self.engine.db.read_sync(lambda c: c.execute(
                "SELECT 1 FROM agents WHERE tenant = ? AND name = ?", (tenant, name)).fetchone())
            if known is None:
                raise AgentNotFound(f"no agent named {name!r}")
            return {"agent": name, "child": f"{act.run_id}.{position}", "input": request.get("input")}
        raise ValidationFailed(f"unknown wait {kind!r}")

    def begin_wait(self, conn: sqlite3.Connection, act: Activation, position: int, kind: str,
                   spec: dict[str, Any]) -> None:
        """Side effects of starting a wait, inside its transaction (a sub-agent's run is created here)."""
        if kind == "agent.call":
            self.engine.create_run_txn(
                conn, tenant=act.run["tenant"], agent=spec["agent"], input=spec["input"], run_id=spec["child"],
                parent_id=act.run_id, placement=act.run.get("placement"),
            )

    # -- immediate effects ----------------------------------------------------

    def perform(self, act: Activation, kind: str, name: str, request: Any) -> Any:
        """Carry out one effect; its result is journaled by the caller."""
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if handler is None:
            raise ValidationFailed(f"unknown host call {kind!r}")
        return handler(act, name, request if isinstance(request, dict) else {})

    def _now(self, act: Activation, name: str, request: dict[str, Any]) -> float:
        return self.engine.now()

    def _random(self, act: Activation, name: str, request: dict[str, Any]) -> float:
        return self._rng.random()

    def _state_get(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        row = self.engine.db.read_sync(lambda c: c.execute(
            "SELECT state FROM agents WHERE tenant = ? AND name = ?", (act.run["tenant"], act.run["agent"])
        ).fetchone())
        return loads(row["state"]) if row is not None else None

    def _state_set(self, act: Activation, name: str, request: dict[str, Any]) -> None:
        text = dumps(request.get("value"))
        if len(text) > self.engine.settings.max_result_bytes:
            raise PayloadTooLarge("agent state is too large", limit=self.engine.settings.max_result_bytes)
        self.engine.db.write_sync(lambda c: c.execute(
            "UPDATE agents SET state = ?, updated_at = ? WHERE tenant = ? AND name = ?",
            (text, self.engine.now(), act.run["tenant"], act.run["agent"]),
        ))

    # -- state capability -----------------------------------------------------

    def _state(self) -> Any:
        state = getattr(self.engine.node, "state", None)
        if state is None:
            raise Unavailable("this node has no state capability (kv and sql)")
        return state

    @staticmethod
    def _namespace(act: Activation) -> str:
        return f"agent.{act.run['agent']}"

    def _kv_get(self, act: Activation, name: str, request: dict[str, Any]) -> str | None:
        value = self._state().kv_get(act.run["tenant"], self._namespace(act), name)
        return None if value is None else value.decode("utf-8", errors="replace")

    def _kv_put(self, act: Activation, name: str, request: dict[str, Any]) -> None:
        value = request.get("value")
        if not isinstance(value, str):
            raise ValidationFailed("kv values are strings", field="value")
        self._state().kv_put(act.run["tenant"], self._namespace(act), name, value.encode())

    def _kv_delete(self, act: Activation, name: str, request: dict[str, Any]) -> None:
        self._state().kv_delete(act.run["tenant"], self._namespace(act), name)

    def _kv_list(self, act: Activation, name: str, request: dict[str, Any]) -> list[str]:
        return list(self._state().kv_list(act.run["tenant"], self._namespace(act), name))

    def _sql(self, act: Activation, name: str, request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._state().sql(act.run["tenant"], self._namespace(act), name,
                                                   request.get("params"))
        return result

    # -- models -----------------------------------------------------------------

    def _model_chat(self, act: Activation, name: str, request: dict[str, Any]) -> dict[str, Any]:
        feed, key, position = self.engine.feed, act.key, act.cursor
        reply: dict[str, Any] = self.engine.models.chat(
            act.run["tenant"], name, request.get("messages") or [], tools=request.get("tools") or None,
            options=request.get("options") or {}, on_delta=lambda text: feed.delta(key, position, text),
        )
        return reply

    # -- tools ------------------------------------------------------------------

    def _fetch(self, act: Activation, name: str, request: dict[str, Any]) -> dict[str, Any]:
        allowed = AllowList.parse(act.config.get("allowed_hosts") or [])
        method = request.get("method") or "GET"
        headers = request.get("headers") or {}
        body = request.get("body")
        if not isinstance(method, str) or not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValidationFailed("fetch takes a method string and headers of strings", field="headers")
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise ValidationFailed("fetch body must be a string", field="body")
        reply = self.engine.egress.exchange(act.run["tenant"], method, name, allow=allowed,
                                            until=time.monotonic() + FETCH_TIMEOUT_S, max_bytes=MAX_FETCH_BYTES,
                                            headers=list(headers.items()), body=body)
        return {"status": reply.status, "headers": dict(reply.headers),
                "body": reply.body.decode("utf-8", errors="replace")}

    # -- MCP servers the deployment lists ----------------------------------------

    def _mcp_list_tools(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        from edgenode.agents import mcp_client

        url = mcp_client.server_url(act.config, name)
        return self._bounded(mcp_client.call(self.engine.egress.addresses, name, url, "list_tools"))

    def _mcp_call_tool(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        from edgenode.agents import mcp_client

        url = mcp_client.server_url(act.config, name)
        tool, arguments = request.get("tool"), request.get("arguments") or {}
        if not isinstance(tool, str) or not tool or len(tool) > 200:
            raise ValidationFailed("call_tool takes a tool name", field="tool")
        if not isinstance(arguments, dict):
            raise ValidationFailed("call_tool's arguments are an object", field="arguments")
        return self._bounded(mcp_client.call(self.engine.egress.addresses, name, url, "call_tool", tool,
                                             arguments))

    def _bounded(self, result: Any) -> Any:
        limit = self.engine.settings.max_result_bytes
        if len(dumps(result)) > limit:
            raise PayloadTooLarge(f"the MCP server's answer exceeds {limit} bytes (agents.max_result_bytes)",
                                  limit=limit)
        return result

    def _capability(self, name: str) -> Any:
        cap = getattr(self.engine.node, name, None)
        if cap is None:
            raise Unavailable(f"this node has no {name} capability")
        return cap

    def _tool_run_code(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        """One-off code in a fresh worker isolate: ``handle(request)`` gets ``input`` as a JSON POST."""
        from edgenode.isolates import DeploySettings, GuestRequest, Limits

        workers = self._capability("workers")
        files = request.get("files") or {"main.py": request.get("code") or ""}
        body = dumps(request.get("input")).encode()
        guest = GuestRequest("POST", "/", [], [("content-type", "application/json")], body)
        settings = DeploySettings(Limits.resolve(None, self.engine.node.config.workers), [], {}, False)
        outcome = self.engine.run_async(lambda: workers.run_once(act.run["tenant"], files, guest, settings))
        if outcome.error is not None:
            raise outcome.error
        response = outcome.response
        text = response.body.decode("utf-8", errors="replace")
        try:
            value: Any = loads(text)
        except ValueError:
            value = text
        return {"status": response.status, "body": value, "logs": [str(x) for x in outcome.logs][:50]}

    def _principal(self, act: Activation) -> Any:
        from edgenode.auth import Principal

        return Principal(tenant=act.run["tenant"])

    # -- sandboxes follow their run: the checkpoint hooks ------------------------------------

    def _sandbox_before(self, act: Activation, sandboxes: Any, ref: str) -> None:
        """Before a sandbox call: a sandbox missing here but checkpointed in the fleet is restored first.

        This is how a run taken over by another node gets its workspace back (files only; its
        processes start afresh). Outside a fleet it does nothing.
        """
        self.engine.run_async(lambda: sandboxes.checkpoints.restore_if_missing(self._principal(act), ref))

    def _sandbox_after(self, act: Activation, sandboxes: Any, ref: str) -> None:
        """After a step that may change files, before it is journaled: checkpoint the sandbox into the fleet.

        Best effort: a failed checkpoint is logged and counted (``checkpoints.failed`` in the
        sandboxes' status), never the step's failure. Outside a fleet it does nothing; nor on a
        node that has lost the run's lease (the new owner's checkpoints are the ones that count).
        """
        fleet = self.engine.fleet
        if act.fleet and fleet is not None and fleet.lost(act.key):
            return
        self.engine.run_async(lambda: sandboxes.checkpoints.after_step(self._principal(act), ref))

    def _tool_sandbox_exec(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        from edgenode.sandboxes import parse_exec

        sandboxes = self._capability("sandboxes")
        spec = parse_exec(request, max_stdin=MAX_FETCH_BYTES)

        async def run() -> Any:
            execution = await sandboxes.exec(self._principal(act), name, spec)
            return await execution.collect()

        self._sandbox_before(act, sandboxes, name)
        result = self.engine.run_async(run)
        self._sandbox_after(act, sandboxes, name)
        return result

    def _tool_sandbox_write(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        sandboxes = self._capability("sandboxes")
        data = str(request.get("text") or "").encode()

        async def chunks() -> Any:
            yield data

        self._sandbox_before(act, sandboxes, name)
        result = self.engine.run_async(lambda: sandboxes.write_file(self._principal(act), name,
                                                                    str(request.get("path")), chunks()))
        self._sandbox_after(act, sandboxes, name)
        return result

    def _tool_sandbox_read(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        import os

        sandboxes = self._capability("sandboxes")
        self._sandbox_before(act, sandboxes, name)
        workspace, _ = self.engine.run_async(lambda: sandboxes.workspace(self._principal(act), name))
        fd = workspace.open(str(request.get("path")))
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
                if sum(map(len, chunks)) > MAX_FETCH_BYTES:
                    raise PayloadTooLarge("file too large to read into a journal", limit=MAX_FETCH_BYTES)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _tool_commit(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        artifacts = self._capability("artifacts")
        result: dict[str, Any] = self.engine.run_async(lambda: artifacts.commit(
            act.run["tenant"], name, branch=request.get("branch"), message=request.get("message"), author=None,
            files=request.get("files") or {}, parent=None))
        return result["commit"]

    def _tool_read_file(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        from edgenode.artifacts import history

        artifacts = self._capability("artifacts")
        data = self.engine.run_async(lambda: artifacts.read(act.run["tenant"], name, history.blob,
                                                            str(request.get("ref")), str(request.get("path"))))
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


    # -- maintainer tools: forks, sandboxes with the node grant, repo tokens, merge requests ------

    def _tool_fork(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        """Fork artifacts repo ``name`` as ``request["name"]``; the fork's metadata."""
        from edgenode.errors import ArtifactNotFound

        artifacts = self._capability("artifacts")
        tenant, fork = act.run["tenant"], request.get("name")
        if not isinstance(fork, str):
            raise ValidationFailed("fork takes the new repository's name", field="name")
        try:
            existing = self.engine.run_async(lambda: artifacts.get(tenant, fork))
        except ArtifactNotFound:
            existing = None
        if existing is not None and existing.fork_of == name:
            # Steps are at least once: a crash after the fork but before its journal entry forks again.
            return existing.as_dict()
        info = self.engine.run_async(lambda: artifacts.fork(tenant, name, fork,
                                                            default_branch_only=bool(request.get("default_branch_only"))))
        return info.as_dict()

    def _tool_sandbox_create(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        """A new sandbox (``network``, ``limits``, optional ``name``); its description, with ``id``."""
        sandboxes = self._capability("sandboxes")
        data = {k: request[k] for k in ("name", "network", "limits") if request.get(k) is not None}
        described: dict[str, Any] = self.engine.run_async(lambda: sandboxes.create(self._principal(act), data))
        self._sandbox_after(act, sandboxes, str(described["id"]))
        return described

    def _tool_sandbox_delete(self, act: Activation, name: str, request: dict[str, Any]) -> None:
        """Destroy a sandbox of the run's tenant."""
        from edgenode.errors import NotFound

        sandboxes = self._capability("sandboxes")
        try:
            self.engine.run_async(lambda: sandboxes.delete(self._principal(act), name))
        except NotFound:
            pass  # deleted already (at least once: the delete may be repeated after a crash)
        if sandboxes.checkpoints.enabled:
            try:  # the run is done with it: its checkpoint goes too, wherever the sandbox was made
                self.engine.run_async(lambda: sandboxes.checkpoints.delete(self._principal(act), name))
            except NotFound:
                pass

    def _tool_repo_token(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        """A short-lived read or write token for repo ``name``, with the URLs a sandbox clones from.

        ``url`` is the repository on this node as a sandbox with the ``node`` grant reaches it;
        ``clone_url`` carries the token as the password. The token is journaled like every
        result (readable by the run's tenant, who may mint such tokens anyway), so keep it short.
        """
        from edgenode.sandboxes.egress import NODE_ALIAS

        artifacts = self._capability("artifacts")
        tenant = act.run["tenant"]
        access = str(request.get("access") or "read")
        ttl = request.get("ttl_s", 600)
        issued: dict[str, Any] = self.engine.run_async(lambda: artifacts.issue_token(tenant, name, access, ttl))
        url = f"http://{NODE_ALIAS}/git/{tenant}/{name}.git"
        return {"id": issued["id"], "access": issued["access"], "expires_at": issued["expires_at"],
                "token": issued["token"], "url": url,
                "clone_url": f"http://git:{issued['token']}@{NODE_ALIAS}/git/{tenant}/{name}.git"}

    def _tool_merge_request(self, act: Activation, name: str, request: dict[str, Any]) -> Any:
        """Record a merge request of ``source``'s ``branch`` into repo ``name`` (an artifacts event).

        It lives in the target repository's event log as kind ``merge_request``
        (``GET /v1/repos/{name}/events?kind=merge_request``). Its id is derived from the run,
        source and branch, so a repeated call after a crash finds the first record instead
        of adding a second.
        """
        import hashlib

        from edgenode.artifacts import history
        from edgenode.artifacts.repos import validate_branch

        artifacts = self._capability("artifacts")
        tenant = act.run["tenant"]
        source, branch = request.get("source") or name, request.get("branch")
        title, description = request.get("title"), request.get("description") or ""
        if not isinstance(source, str):
            raise ValidationFailed("source must be a repository name", field="source")
        if not isinstance(branch, str):
            raise ValidationFailed("branch must be a branch name", field="branch")
        validate_branch(branch)
        if not isinstance(title, str) or not title.strip() or len(title) > 500:
            raise ValidationFailed("title must be a non-empty string (at most 500 characters)", field="title")
        if not isinstance(description, str) or len(description) > 64 * 1024:
            raise ValidationFailed("description must be a string (at most 64 KiB)", field="description")
        target = self.engine.run_async(lambda: artifacts.get(tenant, name))
        head = self.engine.run_async(lambda: artifacts.read(tenant, source, history.refs))["refs"]
        commit = head.get(f"refs/heads/{branch}")
        if commit is None:
            raise ValidationFailed(f"repository {source!r} has no branch {branch!r}", field="branch")
        into = request.get("target_branch") or target.default_branch
        base = self.engine.run_async(lambda: artifacts.read(tenant, name, history.refs))["refs"].get(
            f"refs/heads/{into}")
        mr_id = "mr_" + hashlib.sha256(dumps([act.run_id, name, source, branch]).encode()).hexdigest()[:16]
        events = self.engine.run_async(lambda: artifacts.events.list(tenant, name, kind="merge_request",
                                                                      limit=10_000))
        for event in events:
            if event.get("mr") == mr_id:
                return _merge_request(event, name)
        record = {"mr": mr_id, "source": source, "branch": branch, "commit": commit, "target_branch": into,
                  "base": base, "title": title, "description": description, "agent": act.run["agent"],
                  "run": act.run_id, "state": "open"}
        self.engine.run_async(lambda: artifacts.events.record(tenant, name, "merge_request", **record))
        return _merge_request({**record, "at": self.engine.now()}, name)


def _merge_request(event: dict[str, Any], repo: str) -> dict[str, Any]:
    """A merge request as the agent sees it: its ``mr`` id as ``id`` (the event's ``id`` is the log's row)."""
    out = {k: v for k, v in event.items() if k not in ("id", "mr", "kind")}
    return {"id": event["mr"], "repo": repo, **out}


def _wait_any_spec(request: dict[str, Any], now: float) -> dict[str, Any]:
    """``{"waits": [{"kind": "event", "type"} | {"kind": "timer", "seconds" | "until"}]}`` with absolute times."""
    waits = request.get("waits")
    if not isinstance(waits, list) or not 1 <= len(waits) <= MAX_WAIT_ANY:
        raise ValidationFailed(f"wait_any takes 1 to {MAX_WAIT_ANY} events or timers", field="waits")
    out: list[dict[str, Any]] = []
    for wait in waits:
        kind = wait.get("kind") if isinstance(wait, dict) else None
        if kind == "event":
            event_type = wait.get("type")
            if not isinstance(event_type, str) or not event_type or len(event_type) > 200 \
                    or event_type.startswith("edgenode."):
                raise ValidationFailed("an event to wait for has a type (not starting with 'edgenode.')",
                                       field="waits")
            out.append({"kind": "event", "type": event_type})
        elif kind == "timer":
            if wait.get("until") is not None:
                at = wait["until"]
                if isinstance(at, bool) or not isinstance(at, (int, float)) or at - now > MAX_WAIT_S:
                    raise ValidationFailed(f"a timer's until is a time at most {MAX_WAIT_S:.0f} s ahead",
                                           field="waits")
                until = float(at)
            else:
                until = now + _seconds(wait.get("seconds"), "seconds")
            out.append({"kind": "timer", "until": until})
        else:
            raise ValidationFailed("each wait is {kind: 'event', type} or {kind: 'timer', seconds | until}",
                                   field="waits")
    return {"waits": out, "types": sorted({w["type"] for w in out if w["kind"] == "event"})}


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValidationFailed(f"{field} must be a non-negative number of seconds", field=field)
    if value > MAX_WAIT_S:
        raise ValidationFailed(f"{field} may be at most {MAX_WAIT_S:.0f} s", field=field)
    return float(value)
