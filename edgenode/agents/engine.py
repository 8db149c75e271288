"""The agents capability: deployments, runs and the scheduler that wakes them.

A run is a row. The scheduler activates runs that are ``pending`` or whose
``wake_at`` has passed, on a bounded thread pool; an activation replays the
journal (``edgenode.agents.replay``) and ends with an outcome. Nothing is held
for a waiting run. At start, runs left ``running`` by a crash go back to
``pending``, so they resume from their last journaled call, and overdue timers
fire on the first scheduler tick.

In a fleet, a run is placed ``fleet`` (the default there) or ``local``. A fleet run is
executed by whichever node holds its lease, and its journal is replicated
(:mod:`edgenode.agents.fleetjournal`): the scheduler's claim acquires the lease, the end of
an activation releases it unless the run is to go on here, and runs whose owner is gone
are taken over. A local run is pinned to its node: it never needs the fleet, works cut off
from it, and never fails over. A node without a fleet has only local runs and behaves as
before fleets existed. ``fleet`` is the default in a fleet because an agent's promise is
that it finishes: losing a node must not lose its runs. ``local`` is the choice for work
that must go on while the node is cut off (a fleet run cannot start then: 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgenode.agents.effects import Effects
from edgenode.agents.feed import RunFeed
from edgenode.agents.mcp_client import validate_servers
from edgenode.agents.models import ModelGateway
from edgenode.agents.replay import Activation
from edgenode.agents.runner import Runner, make_runner
from edgenode.agents.schedules import Schedules
from edgenode.agents.store import (
    MIGRATIONS,
    PLACEMENTS,
    TERMINAL,
    dumps,
    finish_run,
    get_run,
    load_entries,
    loads,
    run_dict,
    run_key,
)
from edgenode.egress import AllowList, Egress
from edgenode.errors import (
    AgentNotFound,
    BuildFailed,
    Conflict,
    PayloadTooLarge,
    ReplayMismatch,
    RunFenced,
    RunNotFound,
    Unavailable,
    ValidationFailed,
)
from edgenode.fleet.changes import ChangeFeed

if TYPE_CHECKING:
    from edgenode.agents.fleetjournal import FleetJournal
    from edgenode.auth import Principal
    from edgenode.node import Node

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,200}\.py\Z")
#: Names that are route segments under /v1/agents, so no agent may take them.
RESERVED = frozenset({"runs", "approvals", "schedules", "models", "usage", "secrets", "ui"})


def validate_name(name: Any, field: str = "name") -> str:
    """An agent or schedule name: lower-case letters, digits, ``-`` and ``_``."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValidationFailed(f"{field} must be 1-63 lower-case letters, digits, '-' or '_'", field=field)
    if name in RESERVED:
        raise ValidationFailed(f"{name!r} is reserved", field=field)
    return name


def validate_run_id(run_id: Any) -> str:
    """A run id a client may choose (for idempotent starts)."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ValidationFailed("a run id is 1-128 letters, digits, '.', '_', ':' or '-'", field="id")
    return run_id


class Agents:
    """Durable agent runs: journal, replay, scheduler, lifecycle."""

    name = "agents"

    def __init__(self, node: Node, *, now: Callable[[], float] = time.time, runner: Runner | None = None) -> None:
        self.node = node
        self.settings = node.config.agents
        self.db = node.database("agents.db", MIGRATIONS)
        self.now = now
        if runner is None and self.settings.runner == "isolate":
            if getattr(node, "workers", None) is not None:
                from edgenode.agents.isolate import IsolateRunner

                runner = IsolateRunner(self)
            else:
                log.warning("agents.runner is isolate but this node has no workers; using the process runner")
                runner = make_runner("process")
        self.runner: Runner = runner or make_runner(self.settings.runner)
        self.egress = Egress(node.config.egress.allow_networks)
        self.effects = Effects(self)
        self.models = ModelGateway(self)
        self.schedules = Schedules(self)
        #: Running activations by run key.
        self.active: dict[str, Activation] = {}
        self.feed = RunFeed()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._last_prune = 0.0
        self._stopping = False
        self.activations = 0
        #: Told of every deployment and tenant secret that changed (the fleet control plane listens).
        self.changes = ChangeFeed()
        #: Fleet runs' leases and replicated journal (None for a node outside a fleet).
        self.fleet: FleetJournal | None = None

    # -- lifecycle of the capability --------------------------------------------

    async def start(self) -> None:
        """Open the database, recover runs a crash left running, start the scheduler."""
        self.db.open()
        # Fleet runs left running stay so until a node claims their lease (this one, or another).
        recovered = await self.db.write(lambda c: c.execute(
            "UPDATE runs SET status = 'pending', wake_at = ? WHERE status = 'running' AND placement = 'local'",
            (self.now(),)).rowcount)
        if recovered:
            log.info("recovered in-flight agent runs", extra={"runs": recovered})
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, self.settings.max_active_runs),
                                                           thread_name_prefix="agent")
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        transport = getattr(self.node, "transport", None)
        if transport is not None:
            from edgenode.agents.fleetjournal import FleetJournal

            members = getattr(getattr(self.node, "cluster", None), "members", None)
            self.fleet = FleetJournal(self, transport, stopped=_stopped_by(members))
            await self.fleet.start()
        self._task = asyncio.create_task(self._scheduler(), name="agents-scheduler")

    async def stop(self) -> None:
        """Stop the scheduler and running activations; their runs resume at next start."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for act in list(self.active.values()):
            act.stop_reason = "shutdown"
            self.runner.kill(act.handle)
        if self._pool is not None:
            pool = self._pool
            try:
                # Activations stop at their next host call; one blocked in a long model call is not
                # waited for (its run is still "running" and resumes at the next start).
                await asyncio.wait_for(asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True), 5.0)
            except TimeoutError:
                log.warning("agent activations still busy at stop", extra={"runs": list(self.active)})
        if self.fleet is not None:
            await self.fleet.stop()
        self.egress.close()
        self.db.close()

    async def purge_tenant(self, tenant: str) -> None:
        """Stop ``tenant``'s activations and delete its agents, runs, journals, schedules, secrets and usage."""
        for act in list(self.active.values()):
            if act.run["tenant"] == tenant:
                act.stop_reason = "deleted"
                self.runner.kill(act.handle)

        def purge(c: sqlite3.Connection) -> None:
            runs = "SELECT key FROM runs WHERE tenant = ?"
            c.execute(f"DELETE FROM journal WHERE run_id IN ({runs})", (tenant,))
            c.execute(f"DELETE FROM events WHERE run_id IN ({runs})", (tenant,))
            c.execute(f"DELETE FROM run_log WHERE run_key IN ({runs})", (tenant,))
            for table in ("runs", "agents", "agent_versions", "schedules", "secrets", "usage"):
                c.execute(f"DELETE FROM {table} WHERE tenant = ?", (tenant,))

        await self.db.write(purge)

    def status(self) -> dict[str, Any]:
        """Counts of runs by status and of activations so far."""
        try:
            rows = self.db.read_sync(lambda c: c.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")
                                     .fetchall())
        except Exception:  # a status call must never fail the node's status
            rows = []
        return {"runner": self.runner.name, "active": len(self.active), "activations": self.activations,
                "runs": {r[0]: r[1] for r in rows}, "fleet": self.fleet.status() if self.fleet else None}

    def run_async(self, make: Callable[[], Any], timeout_s: float = 900.0) -> Any:
        """Run a coroutine of another capability on the node's loop, from an activation thread."""
        if self._loop is None or self._loop.is_closed():
            from edgenode.errors import Unavailable

            raise Unavailable("the node is not running")

        async def wrapper() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout_s)

    def kick(self) -> None:
        """Wake the scheduler now (thread-safe)."""
        if self._loop is not None and self._kick is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._kick.set)

    # -- the scheduler ---------------------------------------------------------

    async def _scheduler(self) -> None:
        assert self._kick is not None
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent scheduler tick failed")
            try:
                await asyncio.wait_for(self._kick.wait(), self.settings.scheduler_interval_s)
            except TimeoutError:
                pass
            self._kick.clear()

    async def _tick(self) -> None:
        if self.node.started_at is None:
            return  # schedules and activations wait until every capability (state, workers, ...) is up
        now = self.now()
        await self.schedules.fire_due(now)
        if now - self._last_prune >= self.settings.prune_interval_s:
            self._last_prune = now
            await self.prune(now)
        free = self.settings.max_active_runs - len(self.active)
        if free <= 0:
            return
        fleet = self.fleet
        if fleet is not None and fleet.joined.is_set():
            await fleet.adopt_unpublished()
            await fleet.take_due(now, free - sum(1 for k in fleet.held if k not in self.active))
        held = [k for k in (fleet.held if fleet is not None else ()) if k not in self.active]
        busy = list(self.active)
        share = self.tenant_share()
        taken: dict[str, int] = {}
        for running in self.active.values():
            taken[running.run["tenant"]] = taken.get(running.run["tenant"], 0) + 1

        def claim(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            marks = ",".join("?" * len(busy))
            exclude = f"AND key NOT IN ({marks})" if busy else ""
            # A fleet run only once this node holds its lease.
            exclude += f" AND (placement = 'local' OR key IN ({','.join('?' * len(held))}))"
            # Due runs taken tenant by tenant in turn (each tenant's oldest first), and no tenant
            # past its share of the activation slots: one tenant's backlog cannot hold them all.
            due = conn.execute(
                f"""SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY wake_at, key) AS turn
                                   FROM runs WHERE (status = 'pending' OR (status = 'waiting' AND wake_at <= ?))
                                   {exclude})
                    WHERE turn <= ? ORDER BY turn, wake_at LIMIT ?""",
                (now, *busy, *held, share, free + len(taken) * share),
            ).fetchall()
            rows: list[sqlite3.Row] = []
            for row in due:
                if len(rows) >= free or taken.get(row["tenant"], 0) >= share:
                    continue
                taken[row["tenant"]] = taken.get(row["tenant"], 0) + 1
                rows.append(row)
            for row in rows:
                conn.execute("UPDATE runs SET status = 'running', activations = activations + 1, updated_at = ? "
                             "WHERE key = ?", (now, row["key"]))
            return rows

        for row in await self.db.write(claim):
            run = {**run_dict(row), "key": row["key"]}
            if fleet is not None and run["placement"] == "fleet":
                try:
                    await fleet.append(row["key"])
                except RunFenced:
                    await fleet.resync(row["key"])
                    continue
                except Exception as exc:  # cut off from the fleet: the run stays for a later tick
                    log.info("could not record a fleet run's activation", extra={"run": run["id"],
                                                                                 "error": repr(exc)[:200]})
                    await self.db.write(functools.partial(_unclaim, key=row["key"]))
                    continue
            act = self._prepare(run)
            if act is None:
                continue
            self.active[act.key] = act
            self.feed.changed(act.key)
            assert self._pool is not None
            self._pool.submit(self._activate, act)

    def tenant_share(self) -> int:
        """Activations one tenant may have running at once."""
        return self.settings.tenant_active_runs or max(1, self.settings.max_active_runs - 1)

    def _prepare(self, run: dict[str, Any]) -> Activation | None:
        version = self.db.read_sync(lambda c: c.execute(
            "SELECT files, config FROM agent_versions WHERE tenant = ? AND name = ? AND version = ?",
            (run["tenant"], run["agent"], run["version"]),
        ).fetchone())
        if version is None and run["placement"] == "fleet":
            # Deployed on another node and not installed here yet: the control plane brings it.
            self.db.write_sync(lambda c: c.execute(
                "UPDATE runs SET status = 'pending', wake_at = ? WHERE key = ? AND status = 'running'",
                (self.now() + 1.0, run["key"])))
            return None
        if version is None:
            self.db.write_sync(lambda c: finish_run(c, run["key"], "failed", self.now(), error={
                "code": "agent_not_found", "message": f"agent {run['agent']} v{run['version']} no longer exists"}))
            return None
        entries = self.db.read_sync(lambda c: load_entries(c, run["key"]))
        return Activation(self, run, entries, loads(version["config"]), loads(version["files"]))

    def _activate(self, act: Activation) -> None:
        """Run one activation on a pool thread and record what came of it."""
        self.activations += 1
        outcome: dict[str, Any]
        try:
            outcome = self.runner.activate(
                act.files, act.config.get("entry", "main.py"), act.run["input"], act.call,
                lambda handle: setattr(act, "handle", handle),
            )
        except Exception as exc:
            log.exception("agent activation failed", extra={"run": act.run_id})
            outcome = {"status": "crashed", "error": {"type": type(exc).__name__, "message": str(exc)}}
        try:
            self._settle(act, outcome)
            if self.fleet is not None and act.run.get("placement") == "fleet":
                self._settle_fleet(act)
        except Exception:
            log.exception("could not record an activation's outcome", extra={"run": act.run_id})
        finally:
            self.active.pop(act.key, None)
            self.feed.changed(act.key)
            self.kick()

    def _settle_fleet(self, act: Activation) -> None:
        """Append the activation's outcome to the fleet journal and release the lease if it parked or ended."""
        fleet = self.fleet
        assert fleet is not None
        key = act.key
        self.active.pop(key, None)
        if act.stop_reason != "fenced":
            try:
                self.run_async(lambda: fleet.settle(key), timeout_s=30.0)
                return
            except RunFenced:
                pass
        log.warning("stopped a fleet run here: another node owns it now", extra={"run": act.run_id})
        self.run_async(lambda: fleet.resync(key), timeout_s=30.0)

    def _settle(self, act: Activation, outcome: dict[str, Any]) -> None:
        now = self.now()
        status = outcome.get("status")
        if act.stop_reason == "fenced":
            return  # another node owns the run: nothing of this activation's end is ours to record
        if status == "crashed" and act.open_step is not None and act.stop_reason is None:
            # The runner cut a step off at its timeout: that is the step's failure, not the run's.
            act.step_timed_out()
            status = "stopped"
        if status == "completed" and act.mismatch is None:
            left = act.unconsumed()
            if left is not None:
                act.mismatch = {"position": left["position"],
                                "expected": {"kind": left["kind"], "name": left["name"]},
                                "actual": {"kind": "return", "name": "run finished"}}
        if act.mismatch is not None:
            m = act.mismatch
            exc = ReplayMismatch(f"replay mismatch at position {m['position']}: the journal has "
                                 f"{m['expected']['kind']} {m['expected']['name']!r}, the code made "
                                 f"{m['actual']['kind']} {m['actual']['name']!r}",
                                 position=m["position"], expected=m["expected"], actual=m["actual"])
            error = {"code": exc.code, "message": exc.message, **exc.details}
            self.db.write_sync(lambda c: c.execute(
                "UPDATE runs SET status = 'blocked', error = ?, waiting = NULL, wake_at = NULL, updated_at = ? "
                "WHERE key = ? AND status = 'running'", (dumps(error), now, act.key)))
            log.warning("agent replay mismatch", extra={"run": act.run_id, **m})
            return
        if act.stop_reason == "journal_full":
            limit = self.settings.max_journal_entries
            error = {"code": "journal_full", "message": f"the run made more than {limit} journaled calls "
                     "(agents.max_journal_entries)"}
            self.db.write_sync(lambda c: finish_run(c, act.key, "failed", now, error=error,
                                                    only_from=("running",)))
        elif status == "completed":
            self.db.write_sync(lambda c: finish_run(c, act.key, "completed", now, output=outcome.get("output"),
                                                    only_from=("running",)))
        elif status in ("failed", "crashed") and act.stop_reason is None:
            error = {"code": "agent_error", **(outcome.get("error") or {})}
            self.db.write_sync(lambda c: finish_run(c, act.key, "failed", now, error=error,
                                                    only_from=("running",)))
        else:
            # Suspended (already waiting), or stopped: a run still marked running is retried later.
            retry_at = now + (1.0 if act.stop_reason in ("host_error", "shutdown") else 0.0)
            self.db.write_sync(lambda c: c.execute(
                "UPDATE runs SET status = 'pending', wake_at = ?, updated_at = ? WHERE key = ? AND status = 'running'",
                (retry_at, now, act.key)))

    # -- deployments -----------------------------------------------------------

    async def deploy(self, tenant: str, name: str, files: Any, *, entry: str = "main.py",
                     allowed_hosts: Any = None, mcp_servers: Any = None) -> dict[str, Any]:
        """Store a new version of an agent (or return the current one if the code is unchanged)."""
        validate_name(name)
        self.node.store.require_space("agent deployments")
        if not isinstance(files, dict) or not files:
            raise ValidationFailed("files must be an object of {path: source}", field="files")
        size = 0
        for path, text in files.items():
            if not isinstance(path, str) or not FILE_NAME.match(path) or ".." in path.split("/"):
                raise ValidationFailed(f"bad file name {path!r}: a relative path ending in .py", field="files")
            if not isinstance(text, str):
                raise ValidationFailed(f"file {path!r} must be a string of source", field="files")
            size += len(text.encode())
        if size > self.settings.max_code_bytes:
            raise PayloadTooLarge(f"agent code is {size} bytes; the limit is {self.settings.max_code_bytes}",
                                  limit=self.settings.max_code_bytes)
        if entry not in files:
            raise ValidationFailed(f"the entry file {entry!r} is not among the files", field="entry")
        for path, text in files.items():
            try:
                compile(text, path, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                # Caught here in milliseconds, instead of by a build or at the first run.
                raise BuildFailed(f"{path} does not compile: {exc}", output=str(exc)) from None
        hosts = allowed_hosts or []
        AllowList.parse(hosts)  # the node's one egress grammar; stored as given
        servers = validate_servers(mcp_servers)
        config: dict[str, Any] = {"entry": entry, "allowed_hosts": hosts}
        if servers:
            config["mcp_servers"] = servers  # absent when empty, so earlier deployments keep their hash
        prepare = getattr(self.runner, "prepare", None)
        if prepare is not None:
            await prepare(files, entry)  # a compile error rejects the deploy instead of failing every run
        digest = hashlib.sha256(dumps([sorted(files.items()), config]).encode()).hexdigest()
        now = self.now()

        def txn(conn: sqlite3.Connection) -> dict[str, Any]:
            current = conn.execute(
                "SELECT v.version, v.hash FROM agents a JOIN agent_versions v ON v.tenant = a.tenant "
                "AND v.name = a.name AND v.version = a.current_version WHERE a.tenant = ? AND a.name = ?",
                (tenant, name)).fetchone()
            if current is not None and current["hash"] == digest:
                return {"name": name, "version": current["version"], "hash": digest, "created": False}
            top = conn.execute("SELECT MAX(version) FROM agent_versions WHERE tenant = ? AND name = ?",
                               (tenant, name)).fetchone()[0]
            version = (top or 0) + 1
            conn.execute("INSERT INTO agent_versions (tenant, name, version, hash, files, config, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (tenant, name, version, digest, dumps(files), dumps(config),
                                                          now))
            conn.execute("INSERT INTO agents (tenant, name, current_version, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, name) DO UPDATE SET "
                         "current_version = excluded.current_version, updated_at = excluded.updated_at",
                         (tenant, name, version, now, now))
            return {"name": name, "version": version, "hash": digest, "created": True}

        deployed = await self.db.write(txn)
        if deployed["created"]:
            await self.changes.emit("agent", tenant, name)
        return deployed

    async def install_version(self, tenant: str, name: str, version: int, *, hash: str, files: dict[str, str],
                              config: dict[str, Any], created_at: float) -> None:
        """Make a version deployed on another node of the fleet current here (its source compiles at first run)."""
        def txn(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO agent_versions (tenant, name, version, hash, files, config,"
                         " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (tenant, name, version, hash, dumps(files), dumps(config), created_at))
            conn.execute("INSERT INTO agents (tenant, name, current_version, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, name) DO UPDATE SET "
                         "current_version = excluded.current_version, updated_at = excluded.updated_at",
                         (tenant, name, version, created_at, self.now()))

        await self.db.write(txn)

    async def get_agent(self, tenant: str, name: str) -> dict[str, Any]:
        """An agent's current version, its versions and its state."""
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT * FROM agents WHERE tenant = ? AND name = ?", (tenant, name)).fetchone()
            if row is None:
                raise AgentNotFound(f"no agent named {name!r}")
            versions = [{"version": v["version"], "hash": v["hash"], "created_at": v["created_at"]}
                        for v in conn.execute("SELECT version, hash, created_at FROM agent_versions WHERE tenant = ? "
                                              "AND name = ? ORDER BY version", (tenant, name))]
            return {"name": name, "version": row["current_version"], "versions": versions,
                    "state": loads(row["state"]), "created_at": row["created_at"], "updated_at": row["updated_at"]}
        return await self.db.read(read)

    async def list_agents(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's agents."""
        return await self.db.read(lambda c: [
            {"name": r["name"], "version": r["current_version"], "updated_at": r["updated_at"]}
            for r in c.execute("SELECT * FROM agents WHERE tenant = ? ORDER BY name", (tenant,))])

    # -- runs --------------------------------------------------------------------

    def create_run_txn(self, conn: sqlite3.Connection, *, tenant: str, agent: str, input: Any,
                       run_id: str | None = None, version: int | None = None, parent_id: str | None = None,
                       schedule: str | None = None, restarted_from: tuple[str, int] | None = None,
                       placement: str | None = None) -> tuple[dict[str, Any], bool]:
        """Create a run (or find the one with this id: idempotent start); returns (run, created)."""
        if run_id is not None:
            existing = get_run(conn, run_key(tenant, run_id))
            if existing is not None:
                if existing["agent"] != agent:
                    raise Conflict(f"run id {run_id!r} is already used by a run of agent {existing['agent']!r}")
                return run_dict(existing), False
        agent_row = conn.execute("SELECT current_version FROM agents WHERE tenant = ? AND name = ?",
                                 (tenant, agent)).fetchone()
        if agent_row is None:
            raise AgentNotFound(f"no agent named {agent!r}")
        if version is None:
            version = agent_row["current_version"]
        elif conn.execute("SELECT 1 FROM agent_versions WHERE tenant = ? AND name = ? AND version = ?",
                          (tenant, agent, version)).fetchone() is None:
            raise ValidationFailed(f"agent {agent!r} has no version {version}", field="version")
        text = dumps(input)
        if len(text) > self.settings.max_event_bytes:
            raise PayloadTooLarge("run input is too large", limit=self.settings.max_event_bytes)
        now = self.now()
        run_id = run_id or "run_" + secrets.token_hex(8)
        conn.execute(
            "INSERT INTO runs (key, id, tenant, agent, version, status, input, wake_at, parent_id, schedule, "
            "restarted_from, restart_step, placement, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_key(tenant, run_id), run_id, tenant, agent, version, text, now, parent_id, schedule,
             None if restarted_from is None else restarted_from[0],
             None if restarted_from is None else restarted_from[1], placement or self.placement(None), now, now))
        row = get_run(conn, run_key(tenant, run_id))
        assert row is not None
        return run_dict(row), True

    def placement(self, requested: Any) -> str:
        """Where a new run executes: the request's choice, else ``agents.placement`` (auto: fleet in a fleet)."""
        choice = requested if requested is not None else self.settings.placement
        if choice == "auto":
            return "fleet" if self.fleet is not None else "local"
        if choice not in PLACEMENTS:
            raise ValidationFailed("placement must be 'local' or 'fleet'", field="placement")
        if choice == "fleet" and self.fleet is None:
            raise ValidationFailed("placement 'fleet' needs a node in a fleet; this node is alone",
                                   field="placement")
        return str(choice)

    async def start_run(self, tenant: str, agent: str, input: Any = None, *, run_id: str | None = None,
                        version: int | None = None, placement: Any = None) -> tuple[dict[str, Any], bool]:
        """Start a run of ``agent``; with ``run_id``, a second start returns the first run.

        A fleet run is in the fleet's journal before this returns (and a run id already used
        anywhere in the fleet returns that run).
        """
        if run_id is not None:
            validate_run_id(run_id)
        where = self.placement(placement)
        if where == "fleet":
            assert self.fleet is not None
            await self.fleet.ready()
            if run_id is not None:
                await self.fleet.catch_up(run_key(tenant, run_id))
        run, created = await self.db.write(lambda c: self.create_run_txn(
            c, tenant=tenant, agent=agent, input=input, run_id=run_id, version=version, placement=where))
        if created and where == "fleet":
            assert self.fleet is not None
            key = run_key(tenant, run["id"])
            try:
                adopted = await self.fleet.adopt(key)
                for _ in range(3):
                    # A copy of the lease bucket that is still catching up (a server that just
                    # rejoined) can answer for a moment as if another node held a fresh run.
                    if adopted or await self.fleet.catch_up(key, own=True):
                        break
                    await asyncio.sleep(0.3)
                    adopted = await self.fleet.adopt(key)
            except Exception as exc:
                await self.db.write(lambda c: c.execute("DELETE FROM runs WHERE key = ?", (key,)))
                raise Unavailable(f"the fleet did not take the run: {exc!r}"[:300], retry_after=1) from None
            if not adopted:  # started on another node meanwhile (or our append went unanswered)
                await self.db.write(lambda c: c.execute(
                    "DELETE FROM runs WHERE key = ? AND key NOT IN (SELECT key FROM fleet_runs)", (key,)))
                await self.fleet.catch_up(key, own=True)
                row = await self.db.read(lambda c: get_run(c, key))
                if row is None:
                    raise Unavailable("the fleet did not take the run; try again", retry_after=1)
                if row["agent"] != agent:
                    raise Conflict(f"run id {run_id!r} is already used in the fleet by agent {row['agent']!r}")
                owner = await self.db.read(lambda c: c.execute(
                    "SELECT owner FROM fleet_runs WHERE key = ?", (key,)).fetchone())
                run, created = run_dict(row), owner is not None and owner[0] == self.node.id
        self.kick()
        return run, created

    async def get_run(self, who: Principal, run_id: str) -> dict[str, Any]:
        """A run the caller may see."""
        row = await self.db.read(lambda c: get_run(c, run_key(who.tenant, run_id)))
        return self._owned(who, row, run_id)

    @staticmethod
    def _owned(who: Principal, row: sqlite3.Row | None, run_id: str) -> dict[str, Any]:
        # Ids are per tenant, so another tenant's run with this id is simply not found: it is
        # looked up under the caller's tenant (an admin acts for one tenant at a time).
        if row is None or row["tenant"] != who.tenant:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run_dict(row)

    async def list_runs(self, tenant: str, *, agent: str | None = None, status: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's runs, newest first."""
        query, args = "SELECT * FROM runs WHERE tenant = ?", [tenant]
        if agent:
            query, args = query + " AND agent = ?", [*args, agent]
        if status:
            query, args = query + " AND status = ?", [*args, status]
        query += " ORDER BY created_at DESC LIMIT ?"
        return await self.db.read(lambda c: [run_dict(r) for r in c.execute(query, (*args, limit))])

    async def history(self, who: Principal, run_id: str) -> dict[str, Any]:
        """The run with its journal and its events, oldest first."""
        run = await self.get_run(who, run_id)
        key = run_key(who.tenant, run_id)

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            entries = load_entries(conn, key)
            events = [{"id": r["id"], "type": r["type"], "payload": loads(r["payload"]), "sender": r["sender"],
                       "created_at": r["created_at"], "consumed_position": r["consumed_position"]}
                      for r in conn.execute("SELECT * FROM events WHERE run_id = ? ORDER BY id", (key,))]
            return {"run": run, "journal": entries, "events": events}
        return await self.db.read(read)

    async def prune(self, now: float | None = None) -> int:
        """Delete the journals and events of runs finished longer ago than the retention; how many."""
        cutoff = (now or self.now()) - self.settings.retention_days * 86_400

        def txn(conn: sqlite3.Connection) -> list[str]:
            keys = [r[0] for r in conn.execute(
                "SELECT key FROM runs WHERE finished_at IS NOT NULL AND finished_at <= ? AND journal_pruned = 0 "
                "LIMIT 1000", (cutoff,))]
            for key in keys:
                conn.execute("DELETE FROM journal WHERE run_id = ?", (key,))
                conn.execute("DELETE FROM events WHERE run_id = ?", (key,))
                conn.execute("DELETE FROM run_log WHERE run_key = ?", (key,))
                conn.execute("UPDATE runs SET journal_pruned = 1 WHERE key = ?", (key,))
            return keys

        keys: list[str] = await self.db.write(txn)
        if keys:
            log.info("pruned finished agent runs", extra={"runs": len(keys)})
            if self.fleet is not None:
                await self.fleet.forget(keys)
        return len(keys)

    def is_terminal(self, status: str) -> bool:
        """Whether a run in ``status`` has finished."""
        return status in TERMINAL


def _unclaim(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("UPDATE runs SET status = 'pending' WHERE key = ? AND status = 'running'", (key,))


def _stopped_by(members: Any) -> Callable[[str], bool]:
    """Whether the membership view reports ``node`` stopped cleanly (its runs are free at once)."""
    def stopped(node: str) -> bool:
        if members is None:
            return False
        return any(m.node_id == node and m.stopped for m in members.members())
    return stopped
