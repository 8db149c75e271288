"""The one egress policy: checked addresses, connections by the checked address, cookies, deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgenode.egress import AddressPolicy, AllowList, Egress, HostPattern
from edgenode.errors import EgressDenied, EgressTimeout, EgressTooLarge


class _Server(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        body = f"cookie={self.headers.get('cookie')}".encode()
        self.send_response(200)
        self.send_header("set-cookie", "sid=secret; Path=/")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def test_addresses_are_checked_after_resolution() -> None:
    policy = AddressPolicy()
    for address in ("127.0.0.1", "::1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                    "::ffff:127.0.0.1", "fe80::1", "224.0.0.1"):
        assert not policy.permits(address), address
    assert policy.permits("93.184.216.34") and policy.permits("2606:4700::1111")
    with pytest.raises(EgressDenied):
        policy.addresses("localhost", 80)  # really resolved: loopback
    assert AddressPolicy(["127.0.0.0/8"]).addresses("localhost", 80) == ["127.0.0.1"]


def test_the_connection_goes_to_the_address_that_was_checked(port: int) -> None:
    answers = [["127.0.0.1"], ["10.255.255.1"]]  # a name that rebinds after its first answer
    asked: list[str] = []

    def rebinding(host: str, _: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked) - 1, 1)]

    egress = Egress(["127.0.0.1/32"], resolver=rebinding)
    reply = egress.exchange("t", "GET", f"http://rebind.test:{port}/", allow=AllowList.parse([f"rebind.test:{port}"]),
                            until=_soon(), max_bytes=1000)
    assert reply.status == 200 and asked == ["rebind.test"]  # resolved once, dialled by that answer
    with pytest.raises(EgressDenied):  # the second answer is checked, and refused, before any dial
        egress.client("other").get(f"http://rebind.test:{port}/", timeout=5)
    egress.close()


def test_no_cookie_jar_anywhere(port: int) -> None:
    egress = Egress(["127.0.0.0/8"])
    allow = AllowList.parse([f"127.0.0.1:{port}"])
    first = egress.exchange("alice", "GET", f"http://127.0.0.1:{port}/", allow=allow, until=_soon(), max_bytes=100)
    assert ("set-cookie", "sid=secret; Path=/") in first.headers  # the caller sees it...
    for tenant in ("alice", "bob"):  # ...but no later request carries it
        again = egress.exchange(tenant, "GET", f"http://127.0.0.1:{port}/", allow=allow, until=_soon(), max_bytes=100)
        assert again.body == b"cookie=None"
    egress.close()


def test_one_deadline_for_the_whole_exchange(port: int) -> None:
    egress = Egress(["127.0.0.0/8"])
    allow = AllowList.parse([f"127.0.0.1:{port}"])
    with pytest.raises(EgressTimeout):  # each read is quick; the whole (20 s) is not
        egress.exchange("t", "GET", f"http://127.0.0.1:{port}/slow", allow=allow, until=_soon(1.0), max_bytes=1000)
    with pytest.raises(EgressTooLarge):
        egress.exchange("t", "GET", f"http://127.0.0.1:{port}/", allow=allow, until=_soon(), max_bytes=3)
    with pytest.raises(EgressDenied):
        egress.exchange("t", "GET", f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/", allow=allow,
                        until=_soon(), max_bytes=3)
    egress.close()


@pytest.mark.parametrize(("entry", "scheme", "port", "allowed"), [
    ("example.org", "http", 80, True), ("example.org", "https", 443, True), ("example.org", "https", 80, False),
    ("example.org", None, 443, True), ("example.org", None, 22, False), ("example.org:8443", "http", 8443, True),
    ("https://example.org", None, 443, True), ("https://example.org", None, 80, False),
    ("example.org:*", None, 22, True), ("*", "https", 443, True),
])
def test_one_grammar_for_fetch_and_tunnels(entry: str, scheme: str | None, port: int, allowed: bool) -> None:
    assert HostPattern.parse(entry).matches(scheme, "example.org", port) is allowed
