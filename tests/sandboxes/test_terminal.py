"""Terminals over WebSocket (resize, signals, input), ``edgenode sandbox shell`` driven by tmux, and sessions."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from edgenode.client.websocket import WebSocket, WebSocketClosed
from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess, wait_for


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node



class Terminal:
    """A terminal on the sandbox, read until some text shows up."""

    def __init__(self, node: NodeProcess, sandbox: str, token: str | None = None, **query: object) -> None:
        url = node.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox}/pty?{urlencode(query)}"
        self.sock = WebSocket(url, headers={"authorization": f"Bearer {token or node.admin_token}"}, timeout=60)
        self.output = b""
        self.exit: dict | None = None
        self.errors: list[str] = []

    def type(self, text: str) -> None:
        self.sock.send_bytes(text.encode())

    def control(self, **message: object) -> None:
        self.sock.send_text(json.dumps(message))

    def until(self, text: str) -> str:
        """Read until ``text`` is in the output (or the command exits: then fail)."""
        while text.encode() not in self.output:
            message = self.sock.recv()
            if isinstance(message, bytes):
                self.output += message
                continue
            event = json.loads(message)
            if "error" in event:
                self.errors.append(event["error"])
                continue
            self.exit = event
            raise AssertionError(f"exited before {text!r} showed: {self.output[-500:]!r}")
        return self.output.decode(errors="replace")

    def until_exit(self) -> dict:
        while self.exit is None:
            message = self.sock.recv()
            if isinstance(message, bytes):
                self.output += message
            elif "error" in (event := json.loads(message)):
                self.errors.append(event["error"])
            else:
                self.exit = event
        return self.exit


def test_a_terminal_takes_keys_resizes_and_signals(node: NodeProcess, admin: httpx.Client, sandbox: str) -> None:
    term = Terminal(node, sandbox, cmd="sh -i", rows=20, cols=70)
    term.type("stty size; tty\n")
    assert "20 70" in term.until("/dev/pts/")
    term.control(resize=[33, 101])
    term.type("stty size\n")
    term.until("33 101")
    term.type("sleep 1000\n")
    wait_for(lambda: "sleep 1000" in run(admin, sandbox, "ps -eo args")["stdout"], message="the sleep to start")
    term.control(signal="INT")  # to the terminal's foreground job, as Ctrl-C: the sleep, not the shell
    wait_for(lambda: "sleep 1000" not in run(admin, sandbox, "ps -eo args")["stdout"], message="the sleep to end")
    term.type("echo after-$((6 * 7))\n")
    term.until("after-42")
    term.control(bogus=1)
    term.control(resize=[0, 10])
    term.control(input="exit 7\n")
    assert term.until_exit() == {"exit": 7, "signal": None}
    assert len(term.errors) == 2
    term.sock.close()


def test_a_terminal_refuses_strangers(node: NodeProcess, admin: httpx.Client, sandbox: str) -> None:
    url = node.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox}/pty"
    with pytest.raises(WebSocketClosed):
        WebSocket(url).recv()
    other = admin.post("/v1/tokens", json={"tenant": "stranger"}).json()["token"]
    with pytest.raises(WebSocketClosed):
        WebSocket(url, headers={"authorization": f"Bearer {other}"}).recv()
    with pytest.raises(WebSocketClosed):
        WebSocket(url + "?rows=0", headers={"authorization": f"Bearer {node.admin_token}"}).recv()


def test_sessions_have_their_own_cwd_and_env_over_one_filesystem(node: NodeProcess, admin: httpx.Client,
                                                                 sandbox: str) -> None:
    run(admin, sandbox, "mkdir -p front back")
    front = admin.post(f"/v1/sandboxes/{sandbox}/sessions", json={"cwd": "front", "env": {"ROLE": "web"}})
    back = admin.post(f"/v1/sandboxes/{sandbox}/sessions", json={"cwd": "back", "env": {"ROLE": "api"}})
    assert front.status_code == back.status_code == 201, front.text
    a, b = front.json()["id"], back.json()["id"]
    assert run(admin, sandbox, "pwd; echo $ROLE; echo from-a > shared.txt", session=a)["stdout"] == \
        "/workspace/front\nweb\n"
    assert run(admin, sandbox, "pwd; echo $ROLE; cat ../front/shared.txt", session=b)["stdout"] == \
        "/workspace/back\napi\nfrom-a\n"
    assert run(admin, sandbox, "echo $ROLE", session=b, env={"ROLE": "override"})["stdout"] == "override\n"
    term = Terminal(node, sandbox, cmd="sh -i", session=a)
    term.type("echo $ROLE-$(pwd)\n")
    term.until("web-/workspace/front")
    term.sock.close()
    listed = admin.get(f"/v1/sandboxes/{sandbox}/sessions").json()["sessions"]
    assert {s["id"] for s in listed} == {a, b}
    assert admin.delete(f"/v1/sandboxes/{sandbox}/sessions/{a}").status_code == 204
    assert_error(admin.post(f"/v1/sandboxes/{sandbox}/exec", json={"cmd": "true", "session": a}), 404, "not_found")
    for body in ({"cwd": 3}, {"env": {"1BAD": "x"}}, {"shell": "bash"}, {"env": ["x"]}):
        assert_error(admin.post(f"/v1/sandboxes/{sandbox}/sessions", json=body), 400, "validation_failed")


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """A tmux server of this test's own (its own socket), killed at the end."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed for the interactive shell test")
    base = ["tmux", "-L", "edgenode-test-" + secrets.token_hex(4)]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True)


def test_sandbox_shell_runs_an_interactive_python(node: NodeProcess, sandbox: str, tmux: list[str]) -> None:
    env = {**os.environ, "EDGENODE_URL": node.url, "EDGENODE_TOKEN": node.admin_token}
    command = f"{sys.executable} -m edgenode sandbox shell {sandbox}; echo shell-exited-$?; sleep 600"
    subprocess.run([*tmux, "new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command], env=env, check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True).stdout

    def keys(*args: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "t", *args], check=True)

    def shows(text: str) -> None:
        try:
            wait_for(lambda: text in screen(), message=repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{screen()}") from None

    shows(f"sandbox@{sandbox}:~$")
    keys("python3 -q", "Enter")
    shows("\n>>>")  # python's prompt, live (tmux trims the space after it)
    keys("print(6 * 7, 'from', __import__('socket').gethostname())", "Enter")
    shows(f"42 from {sandbox}")
    keys("exit()", "Enter")
    keys("exit 3", "Enter")
    shows("shell-exited-3")
