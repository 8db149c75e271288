"""The egress attacks an outside review tries after the first ones: addresses in other spellings, smuggling variants.

The address checks and the sandboxes' proxy run in-process here (the proxy on a real Unix socket,
its destination a real server on loopback), so each variant costs milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgenode.egress import AddressPolicy, Egress, HostPattern
from edgenode.errors import ValidationFailed
from edgenode.sandboxes.egress import EgressProxy, parse_policy

HOST = "127.0.0.2"


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1",  # NAT64 (well-known prefix) of 127.0.0.1
    "64:ff9b::a00:1",  # ... of 10.0.0.1
    "64:ff9b:1::c0a8:1",  # local-use NAT64 of 192.168.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:0:a00:1",  # IPv4-translated
    "::ffff:127.0.0.1",  # IPv4-mapped
])
def test_ipv6_addresses_carrying_an_internal_ipv4_are_refused(address: str) -> None:
    assert not AddressPolicy().permits(address)


def test_ipv6_addresses_carrying_a_public_ipv4_pass_and_operator_networks_apply_inside() -> None:
    assert AddressPolicy().permits("64:ff9b::808:808") and AddressPolicy().permits("2002:808:808::1")
    assert AddressPolicy(["10.0.0.0/8"]).permits("64:ff9b::a00:1")


@pytest.mark.parametrize("entry", ["example.org:\u00b2", "example.org:\u0664\u0664\u0663", "[::1]:\u00b9"])
def test_ports_in_other_scripts_digits_are_a_clear_error(entry: str) -> None:
    # str.isdigit() accepts them and int() does not: the entry must be refused, not raise ValueError.
    with pytest.raises(ValidationFailed):
        HostPattern.parse(entry)


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"upstream saw {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer((HOST, 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _through_proxy(tmp_path: Path, allow: list[str], raw: bytes) -> tuple[bytes, list[object]]:
    """Send ``raw`` to a sandbox proxy allowing ``allow``; its answer and the errors its loop saw."""
    errors: list[object] = []

    async def main() -> bytes:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        proxy = EgressProxy(parse_policy({"allow": allow}), str(tmp_path / "proxy.sock"), node_url=lambda: None,
                            addresses=AddressPolicy([f"{HOST}/32"]))
        await proxy.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "proxy.sock"))
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return answer
        finally:
            await proxy.stop()

    return asyncio.run(main()), errors


@pytest.mark.parametrize("raw", [
    # Two lengths a parser could each pick.
    "POST http://{host}/a HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "POST http://{host}/a HTTP/1.1\r\nContent-Length: 4, 40\r\n\r\nabcd",
    # A length in digits str.isdigit() accepts and int() does not.
    "POST http://{host}/a HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\nab",
    "POST http://{host}/a HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd",
    "POST http://{host}/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "POST http://{host}/a HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "POST http://{host}/a HTTP/1.1\r\nContent-Length : 4\r\n\r\nabcd",
    "POST http://{host}/a HTTP/1.1\r\nContent-Length:\x0b4\r\n\r\nabcd",
    "GET http://{host}/a HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "GET http://{host}/a HTTP/1.1\r\n\tFolded: x\r\n\r\n",
    "GET http://{host}/a\rGET /b HTTP/1.1\r\n\r\n",
])
def test_ambiguous_framing_is_refused_without_an_error_in_the_proxy(tmp_path: Path, upstream: int, raw: str) -> None:
    host = f"{HOST}:{upstream}"
    answer, errors = _through_proxy(tmp_path, [host], raw.format(host=host).encode("latin-1"))
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"upstream saw" not in answer and errors == []


@pytest.mark.parametrize("target", ["{h}:\u00b9\u00b2", "{h}:99999", "{h}:" + "9" * 5000, "{h}:0"])
def test_connect_to_a_port_that_is_not_one_is_refused(tmp_path: Path, upstream: int, target: str) -> None:
    raw = f"CONNECT {target.format(h=HOST)} HTTP/1.1\r\n\r\n".encode("latin-1")
    answer, errors = _through_proxy(tmp_path, [f"{HOST}:*"], raw)
    assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 403"), answer
    assert errors == []


def test_a_well_formed_request_still_goes_through(tmp_path: Path, upstream: int) -> None:
    host = f"{HOST}:{upstream}"
    answer, errors = _through_proxy(tmp_path, [host], f"GET http://{host}/fine HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.split(b" ")[1] == b"200" and answer.endswith(b"upstream saw /fine"), answer
    assert errors == []


class _Headers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = repr(self.headers.get("x-latin")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("header", [("x", "a\r\nx-smuggled: 1"), ("x", "\u2028"), ("x", "a\x00"), ("bad name", "v"),
                                    ("x-caf\u00e9", "v"), ("", "v")])
def test_a_fetch_header_that_is_not_http_is_refused(header: tuple[str, str]) -> None:
    server = ThreadingHTTPServer((HOST, 0), _Headers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    egress = Egress([f"{HOST}/32"])
    url = f"http://{HOST}:{server.server_address[1]}/"
    try:
        with pytest.raises(ValidationFailed):
            egress.exchange("alice", "GET", url, allow=None, until=time.monotonic() + 60, max_bytes=1 << 20,
                            headers=[header])
        # A Latin-1 value is HTTP (obs-text) and goes out as those bytes.
        fine = egress.exchange("alice", "GET", url, allow=None, until=time.monotonic() + 60, max_bytes=1 << 20,
                               headers=[("x-latin", "caf\u00e9")])
        assert fine.status == 200 and fine.body == repr("caf\u00e9").encode()
    finally:
        egress.close()
        server.shutdown()
        server.server_close()
