"""The namespace pool opens namespaces outside its lock: one tenant's slow opens hold up no one else."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from edgenode.cluster import Hlc
from edgenode.errors import StoreError
from edgenode.state import NamespaceDatabase, Replica
from edgenode.state.pool import NamespacePool

BOUND_S = 60.0


class Opener:
    """Opens real namespace databases; the namespace ``slow`` waits for ``gate`` first, ``broken`` fails once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self.calls: Counter[str] = Counter()

    def __call__(self, tenant: str, namespace: str) -> Replica:
        self.calls[namespace] += 1
        if namespace == "slow":
            self.slow_started.set()
            assert self.gate.wait(BOUND_S), "the gate never opened"
        if namespace == "broken" and self.calls[namespace] == 1:
            raise StoreError("the disk said no")
        db = NamespaceDatabase(self.path(tenant, namespace), readers=1, synchronous="OFF").open()
        return Replica(db, tenant, namespace, "n-a", Hlc())

    def path(self, tenant: str, namespace: str) -> Path:
        return self.root / f"{tenant}-{namespace}.db"


@pytest.fixture
def opener(tmp_path: Path) -> Opener:
    return Opener(tmp_path)


def _in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_slow_open_holds_up_neither_other_tenants_nor_other_opens(opener: Opener) -> None:
    pool = NamespacePool(opener, opener.path)
    with pool.lease("bob", "notes") as notes:
        assert notes is not None
        notes.kv_put("greeting", b"hi")
    try:
        slow, slow_got = _in_thread(lambda: pool.acquire("alice", "slow"))
        assert opener.slow_started.wait(BOUND_S)
        twin, twin_got = _in_thread(lambda: pool.acquire("alice", "slow"))  # waits for the same open

        def bob() -> bytes:
            with pool.lease("bob", "notes") as r, pool.lease("bob", "fresh") as fresh:
                assert r is not None and fresh is not None
                return r.kv_get("greeting")[0]  # type: ignore[index]

        served, bob_got = _in_thread(bob)
        served.join(BOUND_S)
        assert bob_got == [b"hi"]  # served while alice's open is still under way
        assert slow.is_alive() and twin.is_alive()
    finally:
        opener.gate.set()
    slow.join(BOUND_S)
    twin.join(BOUND_S)
    assert slow_got and slow_got == twin_got and opener.calls["slow"] == 1
    for replica in (*slow_got, *twin_got):
        pool.release(replica)  # type: ignore[arg-type]
    pool.close_all()


def test_a_failed_open_leaves_nothing_behind_and_the_next_caller_opens_it(opener: Opener) -> None:
    pool = NamespacePool(opener, opener.path)
    with pytest.raises(StoreError, match="the disk said no"):
        pool.acquire("alice", "broken")
    with pool.lease("alice", "broken") as replica:  # the failed open left nothing behind
        assert replica is not None
    assert opener.calls["broken"] == 2
    pool.close_all()
