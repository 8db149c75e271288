"""The agent API a guest sees: ``ctx.step``, ``ctx.sleep``, ``ctx.wait_for_event``, models and tools.

This module is the guest side of durable agents. It needs only the standard library,
because it runs inside the agent's sandbox (an isolate or a fresh interpreter) and
talks to the host through one function, ``call(kind, name, request) -> reply``, with
JSON-able values both ways. Every effect goes through that function; the host
journals it and, on replay, answers it from the journal. A reply is one of:

- ``{"ok": value}``: the call's result,
- ``{"error": {"code", "message"}}``: the call failed (raised as :class:`HostError`),
- ``{"suspend": reason}``: the run must wait; the guest unwinds (:class:`Suspend`),
- ``{"stop": reason}``: the host stopped the run (paused, cancelled, terminated,
  replay mismatch); the guest unwinds (:class:`Stop`),
- ``{"run": true, "attempt": n}`` (only for ``step.begin``): execute the step body.

An agent is a module with ``run(ctx, input)`` (or a class ``Agent`` with a ``run``
method). It is run again from the top each time it resumes, so everything that is
not a pure function of its input must come from ``ctx``.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from typing import Any, cast

HostCall = Callable[[str, str, Any], dict[str, Any]]


class Suspend(BaseException):
    """The run waits for a timer, an event or an approval; the guest must unwind to the host.

    A BaseException, so the agent's own ``except Exception`` does not swallow it.
    """


class Stop(BaseException):
    """The host stopped the run (paused, cancelled, terminated or a replay mismatch)."""


class HostError(Exception):
    """A host call failed; ``code`` is the host's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StepFailed(Exception):
    """A step failed on its last attempt; the failure is journaled and raised again on replay."""

    def __init__(self, name: str, error: dict[str, Any]) -> None:
        super().__init__(f"step {name!r} failed: {error.get('type', 'Error')}: {error.get('message', '')}")
        self.name = name
        self.error = error


class Approval:
    """A human's decision on :meth:`Context.approval`."""

    def __init__(self, value: dict[str, Any] | None) -> None:
        value = value or {}
        self.approved: bool = bool(value.get("approved"))
        self.timed_out: bool = bool(value.get("timed_out"))
        self.comment: str = value.get("comment") or ""
        self.by: str | None = value.get("by")
        self.data: Any = value.get("data")

    def __bool__(self) -> bool:
        return self.approved

    def __repr__(self) -> str:
        return f"Approval(approved={self.approved}, comment={self.comment!r}, by={self.by!r})"


class ChatResult:
    """A model's reply: ``text``, ``tool_calls`` ([{"id", "name", "arguments"}]), ``usage``."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.raw = value
        self.text: str = value.get("text") or ""
        self.tool_calls: list[dict[str, Any]] = value.get("tool_calls") or []
        self.usage: dict[str, Any] = value.get("usage") or {}
        self.model: str = value.get("model") or ""
        self.stop_reason: str | None = value.get("stop_reason")

    def message(self) -> dict[str, Any]:
        """This reply as an assistant message to append to the conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    def __repr__(self) -> str:
        return f"ChatResult(text={self.text!r}, tool_calls={self.tool_calls!r})"


class Model:
    """A model named by a ``provider:model`` string; every chat is one journaled call."""

    def __init__(self, ctx: Context, spec: str) -> None:
        self._ctx = ctx
        self.spec = spec

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, **options: Any
    ) -> ChatResult:
        """Send ``messages`` (``{"role", "content"}``; tool results as ``{"role": "tool", ...}``)."""
        request = {"messages": messages, "tools": tools or [], "options": options}
        return ChatResult(self._ctx._effect("model.chat", self.spec, request))


class Waited:
    """Which of :meth:`Context.wait_any`'s waits came first: ``index``, ``kind`` and, for an event, its data."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.index: int = int(value["index"])
        self.kind: str = value["kind"]
        self.type: str | None = value.get("type")
        self.payload: Any = value.get("payload")
        self.sender: str | None = value.get("sender")

    def __repr__(self) -> str:
        return f"Waited(index={self.index}, kind={self.kind!r}, type={self.type!r}, payload={self.payload!r})"


class McpServer:
    """An MCP server the deployment lists (``mcp_servers``); each call is one journaled effect."""

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx = ctx
        self.name = name

    def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools: ``[{"name", "description", "input_schema"}]``."""
        return cast("list[dict[str, Any]]", self._ctx._effect("mcp.list_tools", self.name, {}))

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call tool ``name``: ``{"content": [...], "text", "structured", "is_error"}``.

        Journaled: on replay the recorded result is returned and the server is not called again.
        """
        return cast("dict[str, Any]", self._ctx._effect("mcp.call_tool", self.name,
                                                        {"tool": name, "arguments": arguments or {}}))


class KV:
    """The agent's key-value namespace (``agent.<name>``); values are strings or bytes."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, key: str) -> str | None:
        """The value under ``key`` (decoded as UTF-8), or None."""
        return cast("str | None", self._ctx._effect("kv.get", key, {}))

    def put(self, key: str, value: str | bytes) -> None:
        """Store ``value`` under ``key``."""
        if isinstance(value, bytes):
            value = value.decode()
        self._ctx._effect("kv.put", key, {"value": value})

    def delete(self, key: str) -> None:
        """Remove ``key``."""
        self._ctx._effect("kv.delete", key, {})

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``."""
        return cast("list[str]", self._ctx._effect("kv.list", prefix, {}))


class Context:
    """What an agent uses for every effect; see the module docstring for the protocol."""

    def __init__(self, call: HostCall) -> None:
        self._call = call
        self._in_step: str | None = None
        self.kv = KV(self)

    # -- plumbing ----------------------------------------------------------

    def _raw(self, kind: str, name: str, request: Any) -> dict[str, Any]:
        if self._in_step is not None:
            # A step's body is not replayed, so calls made inside it could not be either.
            raise HostError(
                "nested_call",
                f"ctx.{kind} inside step {self._in_step!r}: make host calls "
                "before or after a step, not inside its body",
            )
        reply = self._call(kind, name, request)
        if "suspend" in reply:
            raise Suspend(reply["suspend"])
        if "stop" in reply:
            raise Stop(reply["stop"])
        return reply

    def _effect(self, kind: str, name: str, request: Any) -> Any:
        reply = self._raw(kind, name, request)
        if "error" in reply:
            error = reply["error"]
            raise HostError(error.get("code", "error"), error.get("message", ""))
        return reply.get("ok")

    # -- steps -------------------------------------------------------------

    def step(
        self, name: str, fn: Callable[[], Any], *, retries: int = 0, timeout: float | None = None, backoff: float = 1.0
    ) -> Any:
        """Run ``fn()`` once (at least once across crashes) and journal its JSON-able result.

        On failure it is retried up to ``retries`` times, waiting ``backoff * 2**n`` seconds
        between attempts (durably: the run suspends). ``timeout`` bounds one attempt, in seconds.
        A step that fails on its last attempt raises :class:`StepFailed`, now and on replay.
        """
        options = {"retries": int(retries), "timeout": timeout, "backoff": float(backoff)}
        reply = self._raw("step.begin", name, options)
        if "error" in reply:
            raise StepFailed(name, reply["error"])
        if not reply.get("run"):
            return reply.get("ok")
        self._in_step = name
        try:
            outcome = _run_with_timeout(fn, timeout)
        finally:
            self._in_step = None
        if "error" not in outcome:
            try:
                json.dumps(outcome["ok"])
            except (TypeError, ValueError) as exc:
                outcome = {"error": {"type": "TypeError", "message": f"step result is not JSON-able: {exc}"}}
        end = self._raw("step.end", name, {**options, **outcome})
        if "error" in end:
            raise StepFailed(name, end["error"])
        return end.get("ok")

    # -- time and randomness ----------------------------------------------

    def now(self) -> float:
        """Wall-clock time in seconds since the epoch, fixed by the journal on replay."""
        return float(self._effect("now", "now", {}))

    def random(self) -> float:
        """A random float in [0, 1), fixed by the journal on replay."""
        return float(self._effect("random", "random", {}))

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` durably: the run holds nothing while it waits and survives restarts."""
        self._effect("sleep", "sleep", {"seconds": float(seconds)})

    def sleep_until(self, timestamp: float) -> None:
        """Wait until ``timestamp`` (seconds since the epoch)."""
        self._effect("sleep", "sleep", {"until": float(timestamp)})

    # -- waiting on the outside world ------------------------------------

    def wait_for_event(self, type: str, timeout: float | None = None) -> Any:
        """The payload of the next event of ``type`` sent to this run; None after ``timeout`` seconds."""
        value = self._effect("event", type, {"timeout": timeout})
        return None if value is None else value.get("payload")

    def approval(self, prompt: str, data: Any = None, timeout: float | None = None) -> Approval:
        """Ask a human to approve or reject; waits (durably) for the decision."""
        return Approval(self._effect("approval", prompt, {"data": data, "timeout": timeout}))

    @staticmethod
    def on_event(type: str) -> dict[str, Any]:
        """An event of ``type``, to pass to :meth:`wait_any`."""
        return {"kind": "event", "type": type}

    @staticmethod
    def timer(seconds: float | None = None, *, until: float | None = None) -> dict[str, Any]:
        """A timer of ``seconds`` from now (or firing at ``until``), to pass to :meth:`wait_any`."""
        if until is not None:
            return {"kind": "timer", "until": float(until)}
        return {"kind": "timer", "seconds": float(seconds or 0.0)}

    def wait_any(self, *waits: dict[str, Any]) -> Waited:
        """Wait (durably) for the first of several events and timers, e.g.
        ``ctx.wait_any(ctx.on_event("paid"), ctx.on_event("cancelled"), ctx.timer(3600))``.

        An event sent before the wait began counts; when an event and a timer are both
        there, the event wins. Which came first is journaled, so a replay gets the same answer.
        """
        name = "|".join(w.get("kind", "?") + (":" + str(w.get("type")) if w.get("kind") == "event" else "")
                        for w in waits)
        return Waited(self._effect("wait_any", name, {"waits": list(waits)}))

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The agent's persistent JSON state (shared by its runs); each read is journaled."""
        return self._effect("state.get", "state", {})

    def set_state(self, value: Any) -> None:
        """Replace the agent's persistent JSON state."""
        self._effect("state.set", "state", {"value": value})

    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> dict[str, Any]:
        """Run SQL on the agent's namespace; ``{"columns", "rows"}``."""
        return cast("dict[str, Any]", self._effect("sql", query, {"params": params}))

    # -- models and tools -----------------------------------------------------

    def model(self, spec: str) -> Model:
        """A model by ``provider:model`` string, e.g. ``openai:gpt-4o`` or ``scripted:demo``."""
        return Model(self, spec)

    def mcp(self, server: str) -> McpServer:
        """An MCP server by the name the deployment gave it (``mcp_servers: {name: url}``)."""
        return McpServer(self, server)

    def fetch(
        self, url: str, method: str = "GET", headers: dict[str, Any] | None = None, body: str | None = None
    ) -> dict[str, Any]:
        """An allow-listed HTTP request: ``{"status", "headers", "body"}`` (body as text)."""
        return cast(
            "dict[str, Any]", self._effect("fetch", url, {"method": method, "headers": headers or {}, "body": body})
        )

    def run_code(self, code: str | None = None, *, files: dict[str, Any] | None = None, input: Any = None) -> Any:
        """Run Python code once in a fresh worker isolate (``handle(request)``); its JSON reply."""
        return self._effect("tool.run_code", "run_code", {"code": code, "files": files, "input": input})

    def sandbox_exec(self, sandbox: str, cmd: str | list[Any], **options: Any) -> dict[str, Any]:
        """Run a command in a sandbox: ``{"exit_code", "stdout", "stderr"}``."""
        return cast("dict[str, Any]", self._effect("tool.sandbox_exec", sandbox, {"cmd": cmd, **options}))

    def sandbox_write(self, sandbox: str, path: str, text: str) -> None:
        """Write a text file in a sandbox."""
        self._effect("tool.sandbox_write", sandbox, {"path": path, "text": text})

    def sandbox_read(self, sandbox: str, path: str) -> str:
        """Read a text file from a sandbox."""
        return cast("str", self._effect("tool.sandbox_read", sandbox, {"path": path}))

    def commit(self, repo: str, branch: str, message: str, files: dict[str, Any]) -> str:
        """Commit ``files`` ({path: text or None}) to an artifacts repo; the commit id."""
        return cast("str", self._effect("tool.commit", repo, {"branch": branch, "message": message, "files": files}))

    def read_file(self, repo: str, ref: str, path: str) -> str:
        """A file's text from an artifacts repo at ``ref``."""
        return cast("str", self._effect("tool.read_file", repo, {"ref": ref, "path": path}))

    def fork(self, repo: str, name: str, *, default_branch_only: bool = False) -> dict[str, Any]:
        """Fork artifacts repo ``repo`` as ``name`` (objects are shared); the fork's metadata.

        Forking again to a name that is already a fork of ``repo`` returns that fork.
        """
        return cast("dict[str, Any]", self._effect("tool.fork", repo, {"name": name,
                                                                      "default_branch_only": default_branch_only}))

    def sandbox_create(
        self, *, name: str | None = None, network: Any = None, limits: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A new sandbox; ``network={"allow": ["node"]}`` lets git in it reach this node's ``/git/``
        at ``$EDGENODE_URL``. Its description, with ``id`` to pass to the other sandbox tools."""
        return cast("dict[str, Any]", self._effect("tool.sandbox_create", name or "",
                                                   {"name": name, "network": network, "limits": limits}))

    def sandbox_delete(self, sandbox: str) -> None:
        """Destroy a sandbox and its files."""
        self._effect("tool.sandbox_delete", sandbox, {})

    def repo_token(self, repo: str, access: str = "read", ttl_s: float = 600) -> dict[str, Any]:
        """A short-lived repository token: ``{"token", "url", "clone_url", "expires_at", ...}``.

        ``clone_url`` (the token as the password) works from a sandbox with the ``node`` grant.
        The token is journaled, readable by the run's tenant: keep ``ttl_s`` short.
        """
        return cast("dict[str, Any]", self._effect("tool.repo_token", repo, {"access": access, "ttl_s": ttl_s}))

    def merge_request(
        self, repo: str, *, source: str, branch: str, title: str, description: str = "",
        target_branch: str | None = None,
    ) -> dict[str, Any]:
        """Record a merge request of ``source``'s ``branch`` into ``repo``; the record, with ``id``.

        It is an event of kind ``merge_request`` in ``repo``'s artifacts event log.
        """
        request = {"source": source, "branch": branch, "title": title, "description": description,
                   "target_branch": target_branch}
        return cast("dict[str, Any]", self._effect("tool.merge_request", repo, request))

    def call_agent(self, agent: str, input: Any = None) -> dict[str, Any]:
        """Start a sub-agent run and wait (durably) for it: ``{"status", "output", "error", "id"}``."""
        return cast("dict[str, Any]", self._effect("agent.call", agent, {"input": input}))

    def log(self, message: str) -> None:
        """A log line in the node's log (not journaled; repeats on replay)."""
        self._call("log", "log", {"message": str(message)})


def _run_with_timeout(fn: Callable[[], Any], timeout: float | None) -> dict[str, Any]:
    """``{"ok": result}`` or ``{"error": {...}}``; an attempt past ``timeout`` is abandoned."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["ok"] = fn()
        except Exception as exc:  # the step's failure is data: journaled and retried
            box["error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=8)}

    if timeout is None:
        target()
        return box
    worker = threading.Thread(target=target, daemon=True, name="agent-step")
    try:
        worker.start()
    except RuntimeError:
        # No threads (a WebAssembly isolate): the host's CPU and wall budget bound the step instead.
        target()
        return box
    worker.join(timeout)
    if worker.is_alive():
        # A thread cannot be killed; the host ends this activation soon after, dropping it.
        return {"error": {"type": "TimeoutError", "message": f"step timed out after {timeout}s"}}
    return box


def entry_point(module: Any) -> Callable[[Context, Any], Any]:
    """The agent's ``run(ctx, input)``: a module function, or the ``run`` method of class ``Agent``."""
    cls = getattr(module, "Agent", None)
    if isinstance(cls, type) and callable(getattr(cls, "run", None)):
        return cast("Callable[[Context, Any], Any]", cls().run)
    fn = getattr(module, "run", None)
    if callable(fn):
        return cast("Callable[[Context, Any], Any]", fn)
    raise TypeError("an agent module defines run(ctx, input) or a class Agent with a run(ctx, input) method")


def execute(run: Callable[[Context, Any], Any], call: HostCall, input: Any) -> dict[str, Any]:
    """Run the agent from the top; the activation's outcome as JSON-able data."""
    ctx = Context(call)
    try:
        output = run(ctx, input)
        json.dumps(output)
        return {"status": "completed", "output": output}
    except Suspend as exc:
        return {"status": "suspended", "reason": str(exc)}
    except Stop as exc:
        return {"status": "stopped", "reason": str(exc)}
    except Exception as exc:
        return {
            "status": "failed",
            "error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=12)},
        }
