"""A minimal headless-Chromium driver over the DevTools protocol (a WebSocket via wsproto).

Just enough for page tests: open a URL, evaluate JavaScript, wait for a condition.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage


def find_chromium() -> str | None:
    """The Chromium binary, if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="edgenode-chromium-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(p for p in pages if p.get("type") == "page")
        self._connect(page["webSocketDebuggerUrl"])
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _connect(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{parts.hostname}:{parts.port}", target=parts.path)))
        self._buffer: list[str] = []
        self._partial = ""
        while True:
            self.ws.receive_data(self.sock.recv(65536))
            if any(isinstance(e, AcceptConnection) for e in self.ws.events()):
                return

    def _recv(self) -> dict[str, Any]:
        while not self._buffer:
            self.ws.receive_data(self.sock.recv(1 << 20))
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self._partial += event.data
                    if event.message_finished:
                        self._buffer.append(self._partial)
                        self._partial = ""
                elif isinstance(event, CloseConnection):
                    raise RuntimeError("devtools connection closed")
        message: dict[str, Any] = json.loads(self._buffer.pop(0))
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result."""
        ident = next(self._ids)
        self.sock.sendall(self.ws.send(Message(data=json.dumps({"id": ident, "method": method, "params": params}))))
        while True:
            message = self._recv()
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page to load."""
        self.call("Page.navigate", url=url)
        self.wait("location.href !== 'about:blank' && document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page; its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"page never satisfied {expression!r}")

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        try:
            self.sock.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the browser's helper processes too
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            self.profile.cleanup()
