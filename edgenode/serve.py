"""Run a node under hypercorn, embedded: bind, serve, drain on SIGTERM, tell systemd.

The listening socket is bound before hypercorn starts (so ``--listen HOST:0`` can
pick a free port and report it), and the node writes its URL to ``DATA/url``
once it is ready. Signal handlers only set an event; a second SIGINT exits at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from edgenode import systemd
from edgenode.api import build_app
from edgenode.errors import EdgenodeError, Internal, ValidationFailed
from edgenode.node import Node

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too) into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValidationFailed(f"--listen takes HOST:PORT, got {listen!r}", field="listen")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket for ``listen``."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValidationFailed(f"cannot listen on {listen}: {exc.strerror}", field="listen") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    """The base URL a client on this host reaches ``sock`` at."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve(node: Node) -> None:
    """Serve ``node`` until SIGTERM or SIGINT, then drain and stop within the configured bound."""
    settings = node.config.http
    node.check_databases()  # refuse a lost or damaged database before taking the port
    sock = bind(node.config.listen)
    url = node.url = url_for(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                log.warning("second interrupt: exiting now")
                os._exit(130)
        if not stop.is_set():
            log.info("stopping: draining in-flight requests", extra={"signal": signal.Signals(signum).name})
            systemd.notify("STOPPING=1")
            stop.set()
            _hard_deadline(settings.shutdown_timeout_s + 15)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    watchdog: asyncio.Task[None] | None = None

    async def on_ready() -> None:
        nonlocal watchdog
        url_file = node.data_dir / "url"
        url_file.write_text(url + "\n")
        log.info("listening", extra={"url": url, "node": node.id})
        systemd.notify("READY=1", f"STATUS=serving on {url}")
        interval = systemd.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(_ping_watchdog(interval))

    hconfig = HypercornConfig()
    hconfig.bind = [f"fd://{sock.fileno()}"]
    hconfig.graceful_timeout = settings.shutdown_timeout_s
    hconfig.keep_alive_timeout = settings.keep_alive_s
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.include_server_header = False
    hconfig.h11_max_incomplete_size = 64 * 1024
    app = build_app(node, on_ready=on_ready)
    try:
        await hypercorn_serve(app, hconfig, shutdown_trigger=stop.wait, mode="asgi")  # type: ignore[arg-type]
    except Exception:
        if node.start_error is not None:
            raise startup_error(node.start_error) from None
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        with contextlib.suppress(FileNotFoundError):
            (node.data_dir / "url").unlink()
        with contextlib.suppress(OSError):
            sock.close()


def startup_error(exc: Exception) -> EdgenodeError:
    """A start-up failure as one clear message naming what failed (the file, where there is one)."""
    if isinstance(exc, EdgenodeError):
        return exc
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    log.debug("start-up failed", exc_info=exc)
    return Internal(f"edgenode could not start{where}: {type(exc).__name__}: {exc}")


async def _ping_watchdog(interval: float) -> None:
    # Pinging from the event loop proves the loop itself is not stuck.
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval / 2)


def _hard_deadline(seconds: float) -> None:
    """Exit the process if a graceful stop takes longer than ``seconds``."""

    def expire() -> None:
        log.error("graceful stop took too long: exiting", extra={"bound_s": seconds})
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def run(node: Node) -> None:
    """Serve ``node`` in a fresh event loop (the ``edgenode serve`` entry point)."""
    asyncio.run(serve(node))


def read_url(data_dir: Path) -> str | None:
    """The URL a running node in ``data_dir`` serves on, if it is running."""
    try:
        return (data_dir / "url").read_text().strip() or None
    except FileNotFoundError:
        return None
