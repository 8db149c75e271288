"""The daemon as a real process: readiness, identity, draining, forced exit, systemd notify."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import NodeProcess, wait_for


def _slow_upload(url: str, token: str) -> socket.socket:
    """Start a POST whose chunked body is only half sent: a request in flight.

    It returns once the server has taken the request in (it answers ``100 Continue`` when it
    has parsed the head and started the app), so a signal sent next finds it in flight.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    sock.sendall(head.encode())
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(1)
        assert chunk, "the server closed the connection"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim
    part = b'{"tenant": '
    sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    return sock


def _draining(node: NodeProcess) -> bool:
    return "stopping: draining" in node.log()


def _finish_upload(sock: socket.socket) -> bytes:
    rest = b'"drained"}'
    sock.sendall(f"{len(rest):x}\r\n".encode() + rest + b"\r\n0\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_identity_and_token_files_persist(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    first_id, token = node.node_id, node.admin_token
    assert stat.S_IMODE((tmp_path / "n" / "admin-token").stat().st_mode) == 0o600
    assert node.stop() == 0
    assert not (tmp_path / "n" / "url").exists()
    node.start()
    assert node.node_id == first_id and node.admin_token == token
    assert httpx.get(node.url + "/healthz").json()["node"] == first_id
    node.stop()


def test_admin_token_from_environment_is_not_written(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", env={"EDGENODE_ADMIN_TOKEN": "edn_admin_from_env_0123456789"}).start()
    try:
        assert not (tmp_path / "n" / "admin-token").exists()
        with node.client("edn_admin_from_env_0123456789") as c:
            assert c.get("/v1/whoami").json()["admin"] is True
    finally:
        node.stop()


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    sock = _slow_upload(node.url, node.admin_token)
    node.signal(signal.SIGTERM)
    wait_for(lambda: _draining(node), message="the node to start draining")
    assert node.proc is not None and node.proc.poll() is None, "exited with a request in flight"
    response = _finish_upload(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 201"), response
    assert node.proc.wait(60) == 0
    assert "stopping: draining" in node.log()


def test_stop_is_bounded_when_a_request_never_finishes(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", env={"EDGENODE_HTTP_SHUTDOWN_TIMEOUT_S": "1"}).start()
    sock = _slow_upload(node.url, node.admin_token)
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    node.proc.wait(25)  # raises TimeoutExpired if the bound does not hold
    sock.close()


def test_second_sigint_forces_exit(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", env={"EDGENODE_HTTP_SHUTDOWN_TIMEOUT_S": "60"}).start()
    sock = _slow_upload(node.url, node.admin_token)
    node.signal(signal.SIGINT)
    wait_for(lambda: _draining(node), message="the node to start draining")
    assert node.proc is not None and node.proc.poll() is None  # still draining
    node.signal(signal.SIGINT)
    assert node.proc.wait(60) == 130
    sock.close()


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    node = NodeProcess(tmp_path / "n", env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    node.start()
    messages: list[str] = []

    def received(word: str) -> bool:
        while not any(word in m for m in messages):
            messages.append(listener.recv(4096).decode())
        return True

    try:
        assert received("READY=1")
        assert any("STATUS=serving on" in m for m in messages)
        assert received("WATCHDOG=1")
        node.signal(signal.SIGTERM)
        assert received("STOPPING=1")
    finally:
        node.stop()
        listener.close()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "edgenode", "serve", "--data", str(tmp_path / "n"), "--listen", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )
    taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "127.0.0.1:"])
def test_bad_listen_address(tmp_path: Path, listen: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgenode", "serve", "--data", str(tmp_path / "n"), "--listen", listen],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1 and "--listen takes HOST:PORT" in result.stderr


def test_json_logs_carry_request_ids(tmp_path: Path) -> None:
    import json

    node = NodeProcess(tmp_path / "n").start()
    httpx.get(node.url + "/v1/missing", headers={"x-request-id": "find-me-42"})
    node.stop()
    lines = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("request_id") == "find-me-42"]
    assert access and access[0]["status"] == 401 and access[0]["logger"] == "edgenode.access"
    assert all({"ts", "level", "msg", "node"} <= set(entry) for entry in lines)


def test_node_keeps_serving_after_bad_requests(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    host, port = node.url.removeprefix("http://").split(":")
    for junk in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                 b"\x16\x03\x01\x00\xa5\x01\x00"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
            try:
                s.recv(1024)
            except (ConnectionResetError, TimeoutError):
                pass
    wait_for(lambda: httpx.get(node.url + "/healthz").status_code == 200, message="healthz after junk")
    node.stop()


def test_a_start_up_failure_is_one_clear_line_naming_the_file(tmp_path: Path) -> None:
    data = tmp_path / "n"
    data.mkdir()
    (data / "artifacts").write_text("a file where the node keeps a directory")
    done = subprocess.run([sys.executable, "-m", "edgenode", "serve", "--data", str(data), "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert f"edgenode could not start ({data / 'artifacts'})" in done.stderr, done.stderr
