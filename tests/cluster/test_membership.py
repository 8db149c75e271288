"""The peer table: configured and learned peers, node ids that move between URLs, forgetting."""

from __future__ import annotations

from edgenode.cluster import Membership


def test_self_and_bad_urls_are_never_peers() -> None:
    m = Membership("n-self")
    m.self_url = "http://10.0.0.1:8787"
    assert m.add("http://10.0.0.1:8787/") is None
    assert m.add("http://10.0.0.2:8787", node_id="n-self") is None
    assert m.add("ftp://x") is None and m.add("not a url") is None
    assert m.peers() == []


def test_a_node_that_moves_keeps_one_entry() -> None:
    m = Membership("n-self")
    m.add("http://127.0.0.1:1000", static=True)
    m.learn("n-b", "http://127.0.0.1:1000")
    m.learn("n-b", "http://127.0.0.1:2000")  # restarted on another port
    peers = m.peers()
    assert [(p.url, p.node_id, p.static) for p in peers] == [("http://127.0.0.1:2000", "n-b", True)]


def test_peer_exchange_adds_unknown_peers_only() -> None:
    m = Membership("n-self")
    m.learn("n-b", "http://b:1")
    m.merge([{"url": "http://c:1", "node_id": "n-c"}, {"url": "http://b-elsewhere:1", "node_id": "n-b"},
             {"url": "http://d:1"}, "garbage", {"url": 5}])
    assert sorted(p.url for p in m.peers()) == ["http://b:1", "http://c:1", "http://d:1"]


def test_learned_peers_that_keep_failing_are_forgotten() -> None:
    now = [1000.0]
    m = Membership("n-self", forget_after_s=60, now=lambda: now[0])
    configured = m.add("http://a:1", static=True)
    learned = m.add("http://b:1")
    assert configured is not None and learned is not None
    m.mark_failed(configured, "down")
    m.mark_failed(learned, "down")
    now[0] += 30
    assert m.forget_dead() == []
    now[0] += 31
    assert [p.url for p in m.forget_dead()] == ["http://b:1"]
    assert [p.url for p in m.peers()] == ["http://a:1"]
    m.mark_ok(configured)
    assert configured.healthy and configured.failures == 0 and configured.last_error is None
