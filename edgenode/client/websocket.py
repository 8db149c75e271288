"""A small blocking WebSocket client (for ``edgenode sandbox shell`` and exposed ports), on wsproto."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import wsproto
from wsproto import events as ws


class WebSocketClosed(Exception):
    """The server closed the WebSocket (or refused it); ``code`` and ``reason`` say why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"WebSocket closed: {code} {reason}".strip())
        self.code, self.reason = code, reason


class WebSocket:
    """One client WebSocket over plain TCP: ``send_text``, ``send_bytes``, ``recv``, ``close``."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float | None = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "http"):
            raise ValueError(f"only ws:// and http:// URLs are supported, not {url!r}")
        port = parts.port or 80
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout)
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.conn.send(ws.Request(host=parts.netloc, target=target, extra_headers=extra)))
        self._pending: list[ws.Event] = []
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        while True:
            event = self._next_event()
            if isinstance(event, ws.AcceptConnection):
                return
            if isinstance(event, ws.RejectConnection):
                self.sock.close()
                raise WebSocketClosed(event.status_code, "refused")
            if isinstance(event, ws.CloseConnection):
                self.sock.close()
                raise WebSocketClosed(event.code, event.reason or "")

    def pending(self) -> bool:
        """Whether events already read wait to be taken (``select`` cannot see them)."""
        return bool(self._pending)

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``."""
        return self.sock.fileno()

    def _next_event(self) -> ws.Event:
        while not self._pending:
            data = self.sock.recv(65536)
            self.conn.receive_data(data or None)
            self._pending.extend(self.conn.events())
            if not data and not self._pending:
                raise WebSocketClosed(1006, "connection lost")
        return self._pending.pop(0)

    def recv(self) -> str | bytes:
        """The next whole message (text or bytes); WebSocketClosed once the server closes."""
        text: list[str] = []
        data: list[bytes] = []
        while True:
            event = self._next_event()
            if isinstance(event, ws.TextMessage):
                text.append(event.data)
                if event.message_finished:
                    return "".join(text)
            elif isinstance(event, ws.BytesMessage):
                data.append(bytes(event.data))
                if event.message_finished:
                    return b"".join(data)
            elif isinstance(event, ws.Ping):
                self.sock.sendall(self.conn.send(event.response()))
            elif isinstance(event, ws.CloseConnection):
                try:
                    self.sock.sendall(self.conn.send(event.response()))
                except (OSError, wsproto.utilities.LocalProtocolError):
                    pass
                self.sock.close()
                raise WebSocketClosed(event.code, event.reason or "")

    def send_text(self, text: str) -> None:
        """Send a text message."""
        self.sock.sendall(self.conn.send(ws.TextMessage(data=text)))

    def send_bytes(self, data: bytes) -> None:
        """Send a binary message."""
        self.sock.sendall(self.conn.send(ws.BytesMessage(data=data)))

    def close(self) -> None:
        """Close politely (best effort) and drop the connection."""
        try:
            self.sock.sendall(self.conn.send(ws.CloseConnection(code=1000)))
        except (OSError, wsproto.utilities.LocalProtocolError):
            pass
        self.sock.close()


__all__ = ["WebSocket", "WebSocketClosed"]
