"""Fleet signatures on peer requests: HMAC-SHA256 with the shared fleet secret.

The signature covers the method, the path with its query, a timestamp, a random
nonce, the sender's node id and URL, and the SHA-256 of the body. A verifier
accepts a timestamp within a window of its own clock and remembers every
signature it accepted until the window passes, so a captured request cannot be
replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgenode.errors import PeerAuthFailed

NODE_HEADER = "x-edgenode-peer"
URL_HEADER = "x-edgenode-peer-url"
TIMESTAMP_HEADER = "x-edgenode-timestamp"
NONCE_HEADER = "x-edgenode-nonce"
SIGNATURE_HEADER = "x-edgenode-signature"


def _message(method: str, target: str, timestamp: str, nonce: str, node_id: str, url: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(["edgenode-peer-v1", method.upper(), target, timestamp, nonce, node_id, url, digest]).encode()


def sign(
    secret: bytes, method: str, target: str, body: bytes, *, node_id: str, url: str, now: float | None = None
) -> dict[str, str]:
    """Headers that sign a request for ``target`` (path plus ``?query``) with the fleet secret."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(12)
    mac = hmac.new(secret, _message(method, target, timestamp, nonce, node_id, url, body), hashlib.sha256)
    return {
        NODE_HEADER: node_id,
        URL_HEADER: url,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: mac.hexdigest(),
    }


@dataclass(frozen=True)
class SignedBy:
    """Who signed a verified request."""

    node_id: str
    url: str


class Verifier:
    """Checks peer signatures: secret, timestamp window, and a replay cache."""

    def __init__(self, secret: bytes | None, *, window_s: float = 60.0, now: Callable[[], float] | None = None):
        self._secret = secret
        self.window_s = window_s
        self._now = now or time.time
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> SignedBy:
        """The signer of a request; PeerAuthFailed (401) when anything does not check out."""
        if self._secret is None:
            raise PeerAuthFailed("this node has no fleet secret; peer requests are refused")
        try:
            node_id = headers[NODE_HEADER]
            url = headers.get(URL_HEADER, "")
            timestamp = headers[TIMESTAMP_HEADER]
            nonce = headers[NONCE_HEADER]
            signature = headers[SIGNATURE_HEADER]
        except KeyError as exc:
            raise PeerAuthFailed(f"peer request is not signed (missing {exc.args[0]})") from None
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise PeerAuthFailed("peer request timestamp is not a number") from None
        now = self._now()
        if abs(now - sent_at) > self.window_s:
            raise PeerAuthFailed(
                f"peer request timestamp is {now - sent_at:.0f}s off this node's clock "
                f"(window {self.window_s:.0f}s)"
            )
        expected = hmac.new(
            self._secret, _message(method, target, timestamp, nonce, node_id, url, body), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise PeerAuthFailed("peer request signature does not match")
        with self._lock:
            if signature in self._seen:
                raise PeerAuthFailed("peer request was already seen (replay)")
            self._seen[signature] = sent_at
            if len(self._seen) > 4096:
                cutoff = now - self.window_s
                self._seen = {s: t for s, t in self._seen.items() if t >= cutoff}
        return SignedBy(node_id=node_id, url=url)


def derive(secret: bytes, purpose: str) -> str:
    """A credential for one ``purpose`` (NATS passwords, the fleet id), derived from the fleet secret.

    HMAC-SHA256 keyed by the secret over a labelled purpose: knowing one derived value
    tells nothing about the secret or about the others.
    """
    return hmac.new(secret, f"edgenode-derive-v1\n{purpose}".encode(), hashlib.sha256).hexdigest()
