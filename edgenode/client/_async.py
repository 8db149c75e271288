"""The async client: ``AsyncClient(url, token)``, the same surface as ``Client`` with every call awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from edgenode.client import _calls as calls
from edgenode.client.errors import NodeUnreachable, raise_for_error, transport_error
from edgenode.client.results import FINAL_STATUSES, ExecEvent, ExecResult, RunEvent, RunResult, SqlResult

T = TypeVar("T")


class AsyncClient:
    """A node's API, async: ``AsyncClient(url, token)``; both default to ``$EDGENODE_URL``/``$EDGENODE_TOKEN``.

    ``tenant`` makes an admin token act for that tenant; ``http`` is an httpx client of your own,
    used as it is (its base URL, headers and timeout). Close the client (or use it in a
    ``with`` block) to release its connections.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, tenant: str | None = None,
                 timeout: float = 60.0, http: httpx.AsyncClient | None = None) -> None:
        self.url = calls.base_url(url)
        self.http = http or httpx.AsyncClient(base_url=self.url, headers=calls.auth_headers(token, tenant),
                                         timeout=timeout)
        self.sandboxes = AsyncSandboxes(self)
        self.workers = AsyncWorkers(self)
        self.repos = AsyncRepos(self)
        self.agents = AsyncAgents(self)
        self.jobs = AsyncJobs(self)

    async def send(self, call: calls.Call[T]) -> T:
        """Send one request; its parsed reply, or the node's error raised as its exception."""
        try:
            response = await self.http.request(call.method, call.path, **call.request_kwargs(self.http.timeout))
        except httpx.TransportError as exc:
            raise call.failure(self.url, exc, self.http.timeout) from exc
        call.check(response)
        return call.parse(response)

    async def open_stream(self, call: calls.Call[Any]) -> httpx.Response:
        """Send a request whose reply is streamed; raises the node's error before any of it is read."""
        request = self.http.build_request(call.method, call.path, **call.request_kwargs(self.http.timeout))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise call.failure(self.url, exc, self.http.timeout) from exc
        if response.is_error:
            await response.aread()
            await response.aclose()
            raise_for_error(response)
        return response

    async def run(self, code: str | None = None, input: Any = None, *, files: dict[str, str] | None = None,
            allowed_hosts: list[str] | None = None, env: dict[str, str] | None = None,
            **limits: int) -> RunResult:
        """Run code once in a fresh isolate (``main(input)`` or ``handle(request)``); limits: cpu_ms, memory_mb, ..."""
        return await self.send(calls.run(code, files, input, limits, {"allowed_hosts": allowed_hosts, "env": env}))

    def kv(self, namespace: str) -> AsyncKV:
        """The key-value store of a state namespace."""
        return AsyncKV(self, namespace)

    async def sql(self, namespace: str, query: str, params: list[Any] | dict[str, Any] | None = None) -> SqlResult:
        """Run one parameterized SQL statement in a namespace's database."""
        return await self.send(calls.sql(namespace, query, params))

    async def whoami(self) -> dict[str, Any]:
        """The tenant the token acts for."""
        return await self.send(calls.Call("GET", "/v1/whoami", lambda r: dict(r.json())))

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


# -- sandboxes -------------------------------------------------------------------


class AsyncSandboxes:
    """``client.sandboxes``: create, find, list."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, name: str | None = None, *, network: str | dict[str, Any] | None = None,
               limits: dict[str, Any] | None = None) -> AsyncSandbox:
        """A new sandbox (``network``: "none" or ``{"allow": [...]}``; ``limits`` such as ``memory_mb``)."""
        return AsyncSandbox(self._client, await self._client.send(calls.sandbox_create(
            {"name": name, "network": network, "limits": limits})))

    async def get(self, ref: str) -> AsyncSandbox:
        """A sandbox by id or name."""
        return AsyncSandbox(self._client, await self._client.send(calls.sandbox_get(ref)))

    async def restore(self, ref: str) -> AsyncSandbox:
        """The tenant's sandbox ``ref`` (id or name) made again on this node from its latest fleet checkpoint.

        It keeps its id, name, network, limits and image; files come back, processes do not.
        """
        return AsyncSandbox(self._client, await self._client.send(calls.sandbox_restore(ref)))

    async def checkpoint(self, ref: str) -> dict[str, Any]:
        """The latest fleet checkpoint of sandbox ``ref``, whether or not the sandbox is on this node."""
        return await self._client.send(calls.sandbox_checkpoint_get(ref))

    async def forget_checkpoint(self, ref: str) -> None:
        """Forget sandbox ``ref``'s checkpoint fleet-wide."""
        await self._client.send(calls.sandbox_checkpoint_delete(ref))

    async def list(self) -> list[AsyncSandbox]:
        """The tenant's sandboxes."""
        return [AsyncSandbox(self._client, info) for info in await self._client.send(calls.sandbox_list())]


class AsyncSandbox:
    """One sandbox: ``exec``, ``files``, ``processes``, ``delete``."""

    def __init__(self, client: AsyncClient, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.id: str = info["id"]
        self.name: str | None = info.get("name")
        self.files = AsyncSandboxFiles(client, self.id)
        self.processes = AsyncSandboxProcesses(client, self.id)

    @overload
    async def exec(self, cmd: str | list[str], *, stream: Literal[False] = ..., **options: Any) -> ExecResult: ...
    @overload
    async def exec(self, cmd: str | list[str], *, stream: Literal[True],
                   **options: Any) -> AsyncIterator[ExecEvent]: ...

    async def exec(self, cmd: str | list[str], *, stream: bool = False,
                   **options: Any) -> ExecResult | AsyncIterator[ExecEvent]:
        """Run a command (a shell string or argv); options: cwd, env, stdin, timeout_s, max_output_bytes.

        With ``stream=True``, an async iterator of ``stdout``/``stderr`` line events ending with ``exit``.
        """
        call = calls.sandbox_exec(self.id, calls.exec_body(cmd, options), stream=stream)
        if not stream:
            return await self._client.send(call)
        return _events(self._client.url, await self._client.open_stream(call))

    async def refresh(self) -> AsyncSandbox:
        """Fetch the sandbox's current description into ``info``."""
        self.info = await self._client.send(calls.sandbox_get(self.id))
        return self

    async def checkpoint(self) -> dict[str, Any]:
        """Checkpoint the workspace into the fleet now: its ``manifest``, ``uploaded_bytes`` and ``reused_bytes``."""
        return await self._client.send(calls.sandbox_checkpoint(self.id))

    async def fork(self, name: str | None = None) -> AsyncSandbox:
        """A new sandbox whose workspace starts as a copy-on-write copy of this one's (independent after)."""
        return AsyncSandbox(self._client, await self._client.send(calls.sandbox_fork(self.id, name)))

    async def expose_port(self, port: int, *, public: bool = False) -> dict[str, Any]:
        """Serve a port a server in the sandbox listens on; answers its ``url`` (and ``public_url``, ``host_url``)."""
        return await self._client.send(calls.port_expose(self.id, port, public))

    async def ports(self) -> list[dict[str, Any]]:
        """The sandbox's exposed ports."""
        return await self._client.send(calls.port_list(self.id))

    async def unexpose_port(self, port: int) -> None:
        """Stop serving a port."""
        await self._client.send(calls.port_unexpose(self.id, port))

    async def git_checkout(self, url: str, *, branch: str | None = None, depth: int | None = None,
                     path: str | None = None) -> dict[str, Any]:
        """Clone ``url`` (or this node's repository by name, with the sandbox's ``node`` grant) into the workspace."""
        return await self._client.send(calls.git_checkout(self.id, url, branch, depth, path))

    async def delete(self) -> None:
        """Destroy the sandbox: processes killed, workspace removed."""
        await self._client.send(calls.sandbox_delete(self.id))


async def _events(url: str, response: httpx.Response) -> AsyncIterator[ExecEvent]:
    parser = calls.SseParser()
    try:
        async for line in response.aiter_lines():
            event = parser.feed(line)
            if event is not None:
                yield event
    except httpx.TransportError as exc:
        raise transport_error(url, exc) from exc
    finally:
        await response.aclose()


class AsyncSandboxFiles:
    """``sandbox.files``: read, write, list, delete workspace files."""

    def __init__(self, client: AsyncClient, sandbox_id: str) -> None:
        self._client, self._id = client, sandbox_id

    async def write(self, path: str, data: bytes | str) -> int:
        """Write a file, creating its parent directories; the number of bytes written."""
        parent = calls.file_parent(path)
        if parent:
            await self._client.send(calls.file_mkdir(self._id, parent))
        size: int = (await self._client.send(calls.file_write(self._id, path, data)))["size"]
        return size

    async def read(self, path: str) -> bytes:
        """A file's bytes."""
        return await self._client.send(calls.file_read(self._id, path))

    async def read_text(self, path: str) -> str:
        """A file as UTF-8 text."""
        return (await self.read(path)).decode()

    async def list(self, path: str = "") -> list[dict[str, Any]]:
        """A directory's entries (``name``, ``type``, ``size``, ...); the workspace root by default."""
        return await self._client.send(calls.file_list(self._id, path))

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory (``recursive`` for a non-empty one)."""
        await self._client.send(calls.file_delete(self._id, path, recursive))


class AsyncSandboxProcesses:
    """``sandbox.processes``: background processes."""

    def __init__(self, client: AsyncClient, sandbox_id: str) -> None:
        self._client, self._id = client, sandbox_id

    async def start(self, cmd: str | list[str], **options: Any) -> AsyncProcess:
        """Start a background process (the same options as exec); its output goes to its log."""
        return AsyncProcess(self._client, self._id, await self._client.send(
            calls.process_start(self._id, calls.exec_body(cmd, options))))

    async def list(self) -> list[AsyncProcess]:
        """Processes started since the sandbox's processes last started."""
        return [AsyncProcess(self._client, self._id, p) for p in await self._client.send(calls.process_list(self._id))]


class AsyncProcess:
    """A background process in a sandbox."""

    def __init__(self, client: AsyncClient, sandbox_id: str, info: dict[str, Any]) -> None:
        self._client, self._sandbox = client, sandbox_id
        self.info = info
        self.id: int = info["id"]

    async def refresh(self) -> AsyncProcess:
        """Fetch the process's state (``running`` or ``exited``, ``exit_code``) into ``info``."""
        self.info = await self._client.send(calls.process_get(self._sandbox, self.id))
        return self

    async def logs(self, *, follow: bool = False) -> str:
        """Its combined output so far (``follow``: until it exits)."""
        return await self._client.send(calls.process_logs(self._sandbox, self.id, follow))

    async def signal(self, signal: str | int = "TERM") -> dict[str, Any]:
        """Send a signal to its process group."""
        self.info = await self._client.send(calls.process_signal(self._sandbox, self.id, signal))
        return self.info

    async def kill(self) -> dict[str, Any]:
        """Kill its process group."""
        return await self.signal("KILL")


# -- workers ---------------------------------------------------------------------


class AsyncWorkers:
    """``client.workers``: deploy, invoke, list, delete."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def deploy(self, name: str, files: dict[str, str] | None = None, *, path: str | Path | None = None,
               limits: dict[str, int] | None = None, allowed_hosts: list[str] | None = None,
               env: dict[str, str] | None = None, public: bool | None = None) -> dict[str, Any]:
        """Deploy Python files (``files={"main.py": ...}`` or ``path=`` a directory or file); the new version."""
        options = {"limits": limits, "allowed_hosts": allowed_hosts, "env": env, "public": public}
        return await self._client.send(calls.worker_deploy(name, calls.deploy_files(files, path), options))

    async def invoke(self, name: str, path: str = "/", *, method: str = "GET", content: bytes | None = None,
               json: Any = None, params: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
        """Call the worker; its own response (any status). The node's errors (guest exceptions, limits) raise."""
        return await self._client.send(calls.worker_invoke(name, path, method, content=content, json=json,
                                                     params=params, headers=headers))

    async def get(self, name: str) -> dict[str, Any]:
        """A worker's current version, settings and versions."""
        return await self._client.send(calls.worker_get(name))

    async def list(self) -> list[dict[str, Any]]:
        """The tenant's workers."""
        return await self._client.send(calls.worker_list())

    async def delete(self, name: str) -> None:
        """Remove a worker and every version of it."""
        await self._client.send(calls.worker_delete(name))


# -- repositories ----------------------------------------------------------------


class AsyncJobs:
    """``client.jobs``: background work the node answered ``202`` for (an import)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, job_id: str) -> dict[str, Any]:
        """A job as it is now: ``status``, ``progress``, and ``result`` or ``error`` once finished."""
        return await self._client.send(calls.job_get(job_id))

    async def wait(self, job: str | dict[str, Any], *, timeout: float | None = None,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Follow a job to its end: its result, or its error raised; ``on_progress(job)`` after each look."""
        info = job if isinstance(job, dict) else await self.get(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        while info["status"] == "running":
            if on_progress is not None:
                on_progress(info)
            wait = calls.JOB_WAIT_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {info['id']} is still running after {timeout}s")
                wait = max(1, min(wait, int(left)))
            info = await self._client.send(calls.job_get(info["id"], wait))
        if on_progress is not None:
            on_progress(info)
        return calls.job_outcome(info)


class AsyncRepos:
    """``client.repos``: Git repositories for output."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, name: str, *, default_branch: str = "main") -> dict[str, Any]:
        """Create an empty repository."""
        return await self._client.send(calls.repo_create(name, default_branch))

    async def get(self, name: str) -> dict[str, Any]:
        """A repository with its refs."""
        return await self._client.send(calls.repo_get(name))

    async def import_url(self, name: str, url: str, *, branch: str | None = None, depth: int | None = None,
                         timeout: float | None = None,
                         on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """A new repository with the branches and tags of the Git repository at ``url`` (http or https)."""
        job = await self._client.send(calls.repo_import(name, url, branch, depth))
        result: dict[str, Any] = await self._client.jobs.wait(job, timeout=timeout, on_progress=on_progress)
        return result

    async def delete(self, name: str) -> None:
        """Delete a repository."""
        await self._client.send(calls.repo_delete(name))

    async def commit(self, name: str, files: dict[str, Any], *, message: str, branch: str = "main",
               parent: str | None = None, author: dict[str, str] | None = None) -> str:
        """Commit ``{path: text | {"base64": ...} | None}`` to ``branch``; the commit id.

        ``parent`` makes it compare-and-set (``""``: the branch must not exist yet).
        """
        return await self._client.send(calls.repo_commit(name, files, branch, message, parent, author))

    async def read_file(self, name: str, path: str, *, ref: str = "HEAD") -> bytes:
        """A file's bytes at ``ref`` (a branch, tag or commit; the default branch by default)."""
        return await self._client.send(calls.repo_read_file(name, path, ref))

    async def refs(self, name: str) -> dict[str, Any]:
        """Every ref and HEAD."""
        return await self._client.send(calls.repo_refs(name))

    async def log(self, name: str, *, ref: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Commits, newest first."""
        return await self._client.send(calls.repo_log(name, ref, limit))

    async def list(self) -> list[dict[str, Any]]:
        """The tenant's repositories."""
        return await self._client.send(calls.repo_list())


# -- state -----------------------------------------------------------------------


class AsyncKV:
    """``client.kv(namespace)``: raw values by key, each with a version."""

    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self._client, self.namespace = client, namespace

    async def get(self, key: str) -> bytes | None:
        """The value, or None when the key is absent."""
        return await self._client.send(calls.kv_get(self.namespace, key))

    async def put(self, key: str, value: bytes | str, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Set a key; the new version. ``if_match``: only if still at that version (``VersionMismatch``)."""
        return await self._client.send(calls.kv_put(self.namespace, key, value, if_match, create_only))

    async def delete(self, key: str) -> None:
        """Delete a key (absent keys too)."""
        await self._client.send(calls.kv_delete(self.namespace, key))

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> list[str]:
        """Every key starting with ``prefix``, in order (fetched a page at a time)."""
        keys: list[str] = []
        cursor: str | None = None
        while True:
            page = await self._client.send(calls.kv_list(self.namespace, prefix, cursor, page_size))
            keys += page["keys"]
            cursor = page.get("cursor")
            if not cursor:
                return keys


# -- agents ----------------------------------------------------------------------


class AsyncAgents:
    """``client.agents``: deploy agents, start and find runs."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def deploy(self, name: str, files: dict[str, str] | None = None, *, path: str | Path | None = None,
               entry: str | None = None, allowed_hosts: list[str] | None = None) -> dict[str, Any]:
        """Deploy an agent's files (``files=`` or ``path=``); its version (a new one only when the code changed)."""
        return await self._client.send(calls.agent_deploy(name, calls.deploy_files(files, path), entry, allowed_hosts))

    async def list(self) -> list[dict[str, Any]]:
        """The tenant's agents."""
        return await self._client.send(calls.agent_list())

    async def start(self, name: str, input: Any = None, *, id: str | None = None,
                    version: int | None = None) -> AsyncRun:
        """Start a run; with ``id``, starting again returns the same run."""
        return AsyncRun(self._client, await self._client.send(calls.agent_start(name, input, id, version)))

    async def run(self, run_id: str) -> AsyncRun:
        """A run by id."""
        return AsyncRun(self._client, await self._client.send(calls.run_get(run_id)))


class AsyncRun:
    """An agent run: ``status``, ``wait``, ``events``, ``approve``/``reject``, ``send_event``, ``cancel``."""

    def __init__(self, client: AsyncClient, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.id: str = info["id"]

    @property
    def status(self) -> str:
        """The status when last fetched (``refresh`` or ``wait`` fetch it again)."""
        status: str = self.info["status"]
        return status

    @property
    def output(self) -> Any:
        """What ``run`` returned, once completed."""
        return self.info.get("output")

    @property
    def error(self) -> Any:
        """Why the run failed or is blocked."""
        return self.info.get("error")

    @property
    def awaiting_approval(self) -> bool:
        """Whether the run waits for a human decision (``info["waiting"]`` has its prompt and data)."""
        return calls.awaiting_approval(self.info)

    @property
    def finished(self) -> bool:
        """Whether the run has reached a final status."""
        return self.status in FINAL_STATUSES

    async def refresh(self) -> AsyncRun:
        """Fetch the run's current state."""
        self.info = await self._client.send(calls.run_get(self.id))
        return self

    async def wait(self, timeout: float = 60.0, *, until: Callable[[AsyncRun], bool] | None = None) -> AsyncRun:
        """Poll until the run finishes (or ``until(run)`` holds); TimeoutError after ``timeout`` seconds."""
        done = until or (lambda run: run.finished)
        deadline = time.monotonic() + timeout
        delay = 0.0
        while not done(await self.refresh()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"run {self.id} is still {self.status} after {timeout}s")
            delay = calls.next_delay(delay)
            await asyncio.sleep(min(delay, left))
        return self

    async def wait_for_approval(self, timeout: float = 60.0) -> AsyncRun:
        """Poll until the run waits for an approval (or has finished)."""
        return await self.wait(timeout, until=lambda run: run.awaiting_approval or run.finished)

    async def events(self, timeout: float | None = None, *, after: str | None = None) -> AsyncIterator[RunEvent]:
        """Journal entries, status changes and model token deltas as they happen, until the run finishes.

        As :meth:`edgenode.client.Run.events`: server-sent events, resumed after a dropped connection.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            call = calls.run_events(self.id, after)
            try:
                response = await self._client.open_stream(call)
                parser = calls.RunEventParser()
                try:
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError(f"run {self.id} is still running after {timeout}s")
                        if event is None:
                            continue
                        failures = 0
                        after = event.id or after
                        if event.kind == "end":
                            self.info = event.data["run"]
                        yield event
                        if event.kind == "end":
                            return
                finally:
                    await response.aclose()
            except (httpx.TransportError, NodeUnreachable):
                failures += 1
                if failures > 3:
                    raise
                await asyncio.sleep(calls.next_delay(0.05 * 2 ** failures))

    async def approve(self, comment: str = "") -> dict[str, Any]:
        """Approve the approval the run waits for."""
        return await self._client.send(calls.run_control(self.id, "approve", {"comment": comment}))

    async def reject(self, comment: str = "") -> dict[str, Any]:
        """Reject the approval the run waits for."""
        return await self._client.send(calls.run_control(self.id, "reject", {"comment": comment}))

    async def send_event(self, type: str, payload: Any = None) -> dict[str, Any]:
        """Send an event the run may wait for."""
        return await self._client.send(calls.run_control(self.id, "events", {"type": type, "payload": payload}))

    async def cancel(self) -> dict[str, Any]:
        """Cancel the run at its next host call."""
        return await self._client.send(calls.run_control(self.id, "cancel"))


    async def restart(self, from_step: int, *, id: str | None = None, version: int | None = None) -> AsyncRun:
        """A new run that replays this finished run's journal before position ``from_step`` and goes on from there."""
        return AsyncRun(self._client, await self._client.send(calls.run_restart(self.id, from_step, id, version)))
