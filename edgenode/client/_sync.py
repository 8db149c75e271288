"""The blocking client: ``Client(url, token)`` and the resources it hands out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from edgenode.client import _calls as calls
from edgenode.client.errors import NodeUnreachable, raise_for_error, transport_error
from edgenode.client.results import FINAL_STATUSES, ExecEvent, ExecResult, RunEvent, RunResult, SqlResult

T = TypeVar("T")


class Client:
    """A node's API: ``Client("http://127.0.0.1:8787", token)``; both default to ``$EDGENODE_URL``/``$EDGENODE_TOKEN``.

    ``tenant`` makes an admin token act for that tenant; ``http`` is an httpx client of your own,
    used as it is (its base URL, headers and timeout). Close the client (or use it in a
    ``with`` block) to release its connections.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, tenant: str | None = None,
                 timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        self.url = calls.base_url(url)
        self.http = http or httpx.Client(base_url=self.url, headers=calls.auth_headers(token, tenant),
                                         timeout=timeout)
        self.sandboxes = Sandboxes(self)
        self.workers = Workers(self)
        self.repos = Repos(self)
        self.agents = Agents(self)
        self.jobs = Jobs(self)

    def send(self, call: calls.Call[T]) -> T:
        """Send one request; its parsed reply, or the node's error raised as its exception."""
        try:
            response = self.http.request(call.method, call.path, **call.request_kwargs(self.http.timeout))
        except httpx.TransportError as exc:
            raise call.failure(self.url, exc, self.http.timeout) from exc
        call.check(response)
        return call.parse(response)

    def open_stream(self, call: calls.Call[Any]) -> httpx.Response:
        """Send a request whose reply is streamed; raises the node's error before any of it is read."""
        request = self.http.build_request(call.method, call.path, **call.request_kwargs(self.http.timeout))
        try:
            response = self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise call.failure(self.url, exc, self.http.timeout) from exc
        if response.is_error:
            response.read()
            response.close()
            raise_for_error(response)
        return response

    def run(self, code: str | None = None, input: Any = None, *, files: dict[str, str] | None = None,
            allowed_hosts: list[str] | None = None, env: dict[str, str] | None = None,
            **limits: int) -> RunResult:
        """Run code once in a fresh isolate (``main(input)`` or ``handle(request)``); limits: cpu_ms, memory_mb, ..."""
        return self.send(calls.run(code, files, input, limits, {"allowed_hosts": allowed_hosts, "env": env}))

    def kv(self, namespace: str) -> KV:
        """The key-value store of a state namespace."""
        return KV(self, namespace)

    def sql(self, namespace: str, query: str, params: list[Any] | dict[str, Any] | None = None) -> SqlResult:
        """Run one parameterized SQL statement in a namespace's database."""
        return self.send(calls.sql(namespace, query, params))

    def whoami(self) -> dict[str, Any]:
        """The tenant the token acts for."""
        return self.send(calls.Call("GET", "/v1/whoami", lambda r: dict(r.json())))

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# -- jobs ------------------------------------------------------------------------


class Jobs:
    """``client.jobs``: background work the node answered ``202`` for (an import)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, job_id: str) -> dict[str, Any]:
        """A job as it is now: ``status``, ``progress``, and ``result`` or ``error`` once finished."""
        return self._client.send(calls.job_get(job_id))

    def wait(self, job: str | dict[str, Any], *, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Follow a job to its end: its result, or its error raised; ``on_progress(job)`` after each look.

        ``TimeoutError`` after ``timeout`` seconds (None: as long as the job runs).
        """
        info = job if isinstance(job, dict) else self.get(job)
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
            info = self._client.send(calls.job_get(info["id"], wait))
        if on_progress is not None:
            on_progress(info)
        return calls.job_outcome(info)


# -- sandboxes -------------------------------------------------------------------


class Sandboxes:
    """``client.sandboxes``: create, find, list."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str | None = None, *, network: str | dict[str, Any] | None = None,
               limits: dict[str, Any] | None = None) -> Sandbox:
        """A new sandbox (``network``: "none" or ``{"allow": [...]}``; ``limits`` such as ``memory_mb``)."""
        return Sandbox(self._client, self._client.send(calls.sandbox_create(
            {"name": name, "network": network, "limits": limits})))

    def get(self, ref: str) -> Sandbox:
        """A sandbox by id or name."""
        return Sandbox(self._client, self._client.send(calls.sandbox_get(ref)))

    def restore(self, ref: str) -> Sandbox:
        """The tenant's sandbox ``ref`` (id or name) made again on this node from its latest fleet checkpoint.

        It keeps its id, name, network, limits and image; files come back, processes do not.
        """
        return Sandbox(self._client, self._client.send(calls.sandbox_restore(ref)))

    def checkpoint(self, ref: str) -> dict[str, Any]:
        """The latest fleet checkpoint of sandbox ``ref``, whether or not the sandbox is on this node."""
        return self._client.send(calls.sandbox_checkpoint_get(ref))

    def forget_checkpoint(self, ref: str) -> None:
        """Forget sandbox ``ref``'s checkpoint fleet-wide."""
        self._client.send(calls.sandbox_checkpoint_delete(ref))

    def list(self) -> list[Sandbox]:
        """The tenant's sandboxes."""
        return [Sandbox(self._client, info) for info in self._client.send(calls.sandbox_list())]


class Sandbox:
    """One sandbox: ``exec``, ``files``, ``processes``, ``delete``."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.id: str = info["id"]
        self.name: str | None = info.get("name")
        self.files = SandboxFiles(client, self.id)
        self.processes = SandboxProcesses(client, self.id)

    @overload
    def exec(self, cmd: str | list[str], *, stream: Literal[False] = ..., **options: Any) -> ExecResult: ...
    @overload
    def exec(self, cmd: str | list[str], *, stream: Literal[True], **options: Any) -> Iterator[ExecEvent]: ...

    def exec(self, cmd: str | list[str], *, stream: bool = False, **options: Any) -> ExecResult | Iterator[ExecEvent]:
        """Run a command (a shell string or argv); options: cwd, env, stdin, timeout_s, max_output_bytes.

        With ``stream=True``, an iterator of ``stdout``/``stderr`` line events ending with ``exit``.
        """
        call = calls.sandbox_exec(self.id, calls.exec_body(cmd, options), stream=stream)
        if not stream:
            return self._client.send(call)
        return _events(self._client.url, self._client.open_stream(call))

    def refresh(self) -> Sandbox:
        """Fetch the sandbox's current description into ``info``."""
        self.info = self._client.send(calls.sandbox_get(self.id))
        return self

    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint the workspace into the fleet now: its ``manifest``, ``uploaded_bytes`` and ``reused_bytes``."""
        return self._client.send(calls.sandbox_checkpoint(self.id))

    def fork(self, name: str | None = None) -> Sandbox:
        """A new sandbox whose workspace starts as a copy-on-write copy of this one's (independent after)."""
        return Sandbox(self._client, self._client.send(calls.sandbox_fork(self.id, name)))

    def expose_port(self, port: int, *, public: bool = False) -> dict[str, Any]:
        """Serve a port a server in the sandbox listens on; answers its ``url`` (and ``public_url``, ``host_url``)."""
        return self._client.send(calls.port_expose(self.id, port, public))

    def ports(self) -> list[dict[str, Any]]:
        """The sandbox's exposed ports."""
        return self._client.send(calls.port_list(self.id))

    def unexpose_port(self, port: int) -> None:
        """Stop serving a port."""
        self._client.send(calls.port_unexpose(self.id, port))

    def git_checkout(self, url: str, *, branch: str | None = None, depth: int | None = None,
                     path: str | None = None) -> dict[str, Any]:
        """Clone ``url`` (or this node's repository by name, with the sandbox's ``node`` grant) into the workspace."""
        return self._client.send(calls.git_checkout(self.id, url, branch, depth, path))

    def delete(self) -> None:
        """Destroy the sandbox: processes killed, workspace removed."""
        self._client.send(calls.sandbox_delete(self.id))


def _events(url: str, response: httpx.Response) -> Iterator[ExecEvent]:
    parser = calls.SseParser()
    try:
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is not None:
                yield event
    except httpx.TransportError as exc:
        raise transport_error(url, exc) from exc
    finally:
        response.close()


class SandboxFiles:
    """``sandbox.files``: read, write, list, delete workspace files."""

    def __init__(self, client: Client, sandbox_id: str) -> None:
        self._client, self._id = client, sandbox_id

    def write(self, path: str, data: bytes | str) -> int:
        """Write a file, creating its parent directories; the number of bytes written."""
        parent = calls.file_parent(path)
        if parent:
            self._client.send(calls.file_mkdir(self._id, parent))
        size: int = self._client.send(calls.file_write(self._id, path, data))["size"]
        return size

    def read(self, path: str) -> bytes:
        """A file's bytes."""
        return self._client.send(calls.file_read(self._id, path))

    def read_text(self, path: str) -> str:
        """A file as UTF-8 text."""
        return self.read(path).decode()

    def list(self, path: str = "") -> list[dict[str, Any]]:
        """A directory's entries (``name``, ``type``, ``size``, ...); the workspace root by default."""
        return self._client.send(calls.file_list(self._id, path))

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory (``recursive`` for a non-empty one)."""
        self._client.send(calls.file_delete(self._id, path, recursive))


class SandboxProcesses:
    """``sandbox.processes``: background processes."""

    def __init__(self, client: Client, sandbox_id: str) -> None:
        self._client, self._id = client, sandbox_id

    def start(self, cmd: str | list[str], **options: Any) -> Process:
        """Start a background process (the same options as exec); its output goes to its log."""
        return Process(self._client, self._id, self._client.send(
            calls.process_start(self._id, calls.exec_body(cmd, options))))

    def list(self) -> list[Process]:
        """Processes started since the sandbox's processes last started."""
        return [Process(self._client, self._id, p) for p in self._client.send(calls.process_list(self._id))]


class Process:
    """A background process in a sandbox."""

    def __init__(self, client: Client, sandbox_id: str, info: dict[str, Any]) -> None:
        self._client, self._sandbox = client, sandbox_id
        self.info = info
        self.id: int = info["id"]

    def refresh(self) -> Process:
        """Fetch the process's state (``running`` or ``exited``, ``exit_code``) into ``info``."""
        self.info = self._client.send(calls.process_get(self._sandbox, self.id))
        return self

    def logs(self, *, follow: bool = False) -> str:
        """Its combined output so far (``follow``: until it exits)."""
        return self._client.send(calls.process_logs(self._sandbox, self.id, follow))

    def signal(self, signal: str | int = "TERM") -> dict[str, Any]:
        """Send a signal to its process group."""
        self.info = self._client.send(calls.process_signal(self._sandbox, self.id, signal))
        return self.info

    def kill(self) -> dict[str, Any]:
        """Kill its process group."""
        return self.signal("KILL")


# -- workers ---------------------------------------------------------------------


class Workers:
    """``client.workers``: deploy, invoke, list, delete."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def deploy(self, name: str, files: dict[str, str] | None = None, *, path: str | Path | None = None,
               limits: dict[str, int] | None = None, allowed_hosts: list[str] | None = None,
               env: dict[str, str] | None = None, public: bool | None = None) -> dict[str, Any]:
        """Deploy Python files (``files={"main.py": ...}`` or ``path=`` a directory or file); the new version."""
        options = {"limits": limits, "allowed_hosts": allowed_hosts, "env": env, "public": public}
        return self._client.send(calls.worker_deploy(name, calls.deploy_files(files, path), options))

    def invoke(self, name: str, path: str = "/", *, method: str = "GET", content: bytes | None = None,
               json: Any = None, params: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
        """Call the worker; its own response (any status). The node's errors (guest exceptions, limits) raise."""
        return self._client.send(calls.worker_invoke(name, path, method, content=content, json=json,
                                                     params=params, headers=headers))

    def get(self, name: str) -> dict[str, Any]:
        """A worker's current version, settings and versions."""
        return self._client.send(calls.worker_get(name))

    def list(self) -> list[dict[str, Any]]:
        """The tenant's workers."""
        return self._client.send(calls.worker_list())

    def delete(self, name: str) -> None:
        """Remove a worker and every version of it."""
        self._client.send(calls.worker_delete(name))


# -- repositories ----------------------------------------------------------------


class Repos:
    """``client.repos``: Git repositories for output."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, *, default_branch: str = "main") -> dict[str, Any]:
        """Create an empty repository."""
        return self._client.send(calls.repo_create(name, default_branch))

    def get(self, name: str) -> dict[str, Any]:
        """A repository with its refs."""
        return self._client.send(calls.repo_get(name))

    def import_url(self, name: str, url: str, *, branch: str | None = None, depth: int | None = None,
                   timeout: float | None = None,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """A new repository with the branches and tags of the Git repository at ``url`` (http or https).

        The node imports in the background; this follows its job (``on_progress(job)`` as it goes).
        """
        job = self._client.send(calls.repo_import(name, url, branch, depth))
        result: dict[str, Any] = self._client.jobs.wait(job, timeout=timeout, on_progress=on_progress)
        return result

    def delete(self, name: str) -> None:
        """Delete a repository."""
        self._client.send(calls.repo_delete(name))

    def commit(self, name: str, files: dict[str, Any], *, message: str, branch: str = "main",
               parent: str | None = None, author: dict[str, str] | None = None) -> str:
        """Commit ``{path: text | {"base64": ...} | None}`` to ``branch``; the commit id.

        ``parent`` makes it compare-and-set (``""``: the branch must not exist yet).
        """
        return self._client.send(calls.repo_commit(name, files, branch, message, parent, author))

    def read_file(self, name: str, path: str, *, ref: str = "HEAD") -> bytes:
        """A file's bytes at ``ref`` (a branch, tag or commit; the default branch by default)."""
        return self._client.send(calls.repo_read_file(name, path, ref))

    def refs(self, name: str) -> dict[str, Any]:
        """Every ref and HEAD."""
        return self._client.send(calls.repo_refs(name))

    def log(self, name: str, *, ref: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Commits, newest first."""
        return self._client.send(calls.repo_log(name, ref, limit))

    def list(self) -> list[dict[str, Any]]:
        """The tenant's repositories."""
        return self._client.send(calls.repo_list())


# -- state -----------------------------------------------------------------------


class KV:
    """``client.kv(namespace)``: raw values by key, each with a version."""

    def __init__(self, client: Client, namespace: str) -> None:
        self._client, self.namespace = client, namespace

    def get(self, key: str) -> bytes | None:
        """The value, or None when the key is absent."""
        return self._client.send(calls.kv_get(self.namespace, key))

    def put(self, key: str, value: bytes | str, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Set a key; the new version. ``if_match``: only if still at that version (``VersionMismatch``)."""
        return self._client.send(calls.kv_put(self.namespace, key, value, if_match, create_only))

    def delete(self, key: str) -> None:
        """Delete a key (absent keys too)."""
        self._client.send(calls.kv_delete(self.namespace, key))

    def list(self, prefix: str = "", *, page_size: int = 1000) -> list[str]:
        """Every key starting with ``prefix``, in order (fetched a page at a time)."""
        keys: list[str] = []
        cursor: str | None = None
        while True:
            page = self._client.send(calls.kv_list(self.namespace, prefix, cursor, page_size))
            keys += page["keys"]
            cursor = page.get("cursor")
            if not cursor:
                return keys


# -- agents ----------------------------------------------------------------------


class Agents:
    """``client.agents``: deploy agents, start and find runs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def deploy(self, name: str, files: dict[str, str] | None = None, *, path: str | Path | None = None,
               entry: str | None = None, allowed_hosts: list[str] | None = None) -> dict[str, Any]:
        """Deploy an agent's files (``files=`` or ``path=``); its version (a new one only when the code changed)."""
        return self._client.send(calls.agent_deploy(name, calls.deploy_files(files, path), entry, allowed_hosts))

    def list(self) -> list[dict[str, Any]]:
        """The tenant's agents."""
        return self._client.send(calls.agent_list())

    def start(self, name: str, input: Any = None, *, id: str | None = None, version: int | None = None) -> Run:
        """Start a run; with ``id``, starting again returns the same run."""
        return Run(self._client, self._client.send(calls.agent_start(name, input, id, version)))

    def run(self, run_id: str) -> Run:
        """A run by id."""
        return Run(self._client, self._client.send(calls.run_get(run_id)))


class Run:
    """An agent run: ``status``, ``wait``, ``events``, ``approve``/``reject``, ``send_event``, ``cancel``."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
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

    def refresh(self) -> Run:
        """Fetch the run's current state."""
        self.info = self._client.send(calls.run_get(self.id))
        return self

    def wait(self, timeout: float = 60.0, *, until: Callable[[Run], bool] | None = None) -> Run:
        """Poll until the run finishes (or ``until(run)`` holds); TimeoutError after ``timeout`` seconds."""
        done = until or (lambda run: run.finished)
        deadline = time.monotonic() + timeout
        delay = 0.0
        while not done(self.refresh()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"run {self.id} is still {self.status} after {timeout}s")
            delay = calls.next_delay(delay)
            time.sleep(min(delay, left))
        return self

    def wait_for_approval(self, timeout: float = 60.0) -> Run:
        """Poll until the run waits for an approval (or has finished)."""
        return self.wait(timeout, until=lambda run: run.awaiting_approval or run.finished)

    def events(self, timeout: float | None = None, *, after: str | None = None) -> Iterator[RunEvent]:
        """Journal entries, status changes and model token deltas as they happen, until the run finishes.

        Streamed by the node as server-sent events; the last event (``end``) carries the
        finished run, also kept in ``info``. A dropped connection is resumed from the last
        event seen (``after`` starts from a given event id). TimeoutError after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            call = calls.run_events(self.id, after)
            try:
                response = self._client.open_stream(call)
                parser = calls.RunEventParser()
                try:
                    for line in response.iter_lines():
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
                    response.close()
            except (httpx.TransportError, NodeUnreachable):
                failures += 1
                if failures > 3:
                    raise
                time.sleep(calls.next_delay(0.05 * 2 ** failures))

    def approve(self, comment: str = "") -> dict[str, Any]:
        """Approve the approval the run waits for."""
        return self._client.send(calls.run_control(self.id, "approve", {"comment": comment}))

    def reject(self, comment: str = "") -> dict[str, Any]:
        """Reject the approval the run waits for."""
        return self._client.send(calls.run_control(self.id, "reject", {"comment": comment}))

    def send_event(self, type: str, payload: Any = None) -> dict[str, Any]:
        """Send an event the run may wait for."""
        return self._client.send(calls.run_control(self.id, "events", {"type": type, "payload": payload}))

    def cancel(self) -> dict[str, Any]:
        """Cancel the run at its next host call."""
        return self._client.send(calls.run_control(self.id, "cancel"))

    def restart(self, from_step: int, *, id: str | None = None, version: int | None = None) -> Run:
        """A new run that replays this finished run's journal before position ``from_step`` and goes on from there."""
        return Run(self._client, self._client.send(calls.run_restart(self.id, from_step, id, version)))
