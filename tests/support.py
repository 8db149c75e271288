"""Test helpers: real node processes on loopback, with their own data directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN_ENV = "EDGENODE_ADMIN_TOKEN"
#: The least time a test gives the event it waits for. The suite must pass on a loaded 2-core
#: machine, and a wait only runs this long when the test is failing anyway.
MIN_WAIT_S = 60.0
#: How long a test client waits for one answer by default: above the node's own longest bound
#: on the work behind a request (a worker build, 300 s).
REQUEST_WAIT_S = 330.0


class NodeProcess:
    """``python -m edgenode serve`` in a subprocess; its log goes to ``DATA/node.log``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        listen: str = "127.0.0.1:0",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.env = dict(env or {})
        self.listen = listen
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def admin_token(self) -> str:
        return self.env.get(ADMIN_TOKEN_ENV) or (self.data_dir / "admin-token").read_text().strip()

    @property
    def node_id(self) -> str:
        return (self.data_dir / "node-id").read_text().strip()

    def start(self, timeout: float = 120.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url_file = self.data_dir / "url"
        url_file.unlink(missing_ok=True)  # a node killed with -9 leaves it behind
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
        env.update(self.env)
        with open(self.data_dir / "node.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgenode", "serve", "--data", str(self.data_dir), "--listen", self.listen,
                 *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + max(timeout, MIN_WAIT_S)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if url_file.exists() and url_file.read_text().strip():
                self.url = url_file.read_text().strip()
                return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"node did not become ready in {timeout}s:\n{self.log()[-4000:]}")

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client for this node, with ``token`` (default: the admin token)."""
        headers = {"authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", REQUEST_WAIT_S),
                            **kwargs)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._finish()

    def kill(self) -> int:
        """SIGKILL the node's whole process group (no chance to clean up)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        return self._finish()

    def _finish(self) -> int:
        assert self.proc is not None
        return self.proc.returncode

    def log(self) -> str:
        path = self.data_dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float = MIN_WAIT_S, interval: float = 0.05, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``
    (never less than ``MIN_WAIT_S``: a bound is for a failing test, not a speed requirement)."""
    timeout = max(timeout, MIN_WAIT_S)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")
