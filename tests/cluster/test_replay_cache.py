"""The peer verifier's replay cache: pruned of signatures past the window, never of those within it."""

from __future__ import annotations

import pytest

from edgenode.cluster import Verifier, sign
from edgenode.errors import PeerAuthFailed

SECRET = b"replay-cache-secret"


def test_replay_cache_forgets_only_what_the_window_refuses_anyway() -> None:
    clock = [1_000_000.0]
    v = Verifier(SECRET, window_s=60.0, now=lambda: clock[0])

    def accept(at: float) -> dict[str, str]:
        headers = sign(SECRET, "POST", "/p", b"", node_id="n", url="http://n", now=at)
        v.verify("POST", "/p", headers, b"")
        return headers

    for _ in range(4000):
        accept(clock[0])
    clock[0] += 61.0  # the first 4000 are now outside the window: their timestamps are refused
    recent = [accept(clock[0]) for _ in range(200)]  # passing 4096 entries prunes the cache
    assert len(v._seen) <= 200 + 1
    for headers in recent:  # still remembered: a replay within the window is refused
        with pytest.raises(PeerAuthFailed, match="replay"):
            v.verify("POST", "/p", headers, b"")
