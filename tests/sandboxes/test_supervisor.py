"""The in-sandbox supervisor's event loop, driven here with real commands and a forced order of events.

The supervisor is plain standard-library Python, so its ``dispatch`` runs in the test process:
the commands are real processes, the selector is the supervisor's own, and the test decides
which ready events share a batch and in which order (the interleaving that, on a busy
machine, happens by chance after a command is killed).
"""

from __future__ import annotations

import base64
import json
import os
import select
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edgenode.sandboxes import guest_init as supervisor

WAIT_S = 30.0


class Emitted:
    """What the supervisor writes to the node, read on a thread so ``emit`` never blocks."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self.read_fd, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            self.lines.extend(json.loads(line) for line in lines if line)

    def close(self) -> list[dict[str, Any]]:
        os.close(self.write_fd)
        self._thread.join(WAIT_S)
        os.close(self.read_fd)
        return self.lines


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emitted]:
    out = Emitted()
    monkeypatch.setattr(supervisor, "out_fd", out.write_fd)
    yield out
    for cmd in list(supervisor.procs.values()):
        cmd.signal(9)
        cmd.proc.wait()
    supervisor.procs.clear()


def _spawn(cid: int, argv: list[str]) -> supervisor.Command:
    supervisor.handle({"op": "spawn", "id": cid, "argv": argv, "cwd": "/", "env": {"PATH": os.environ["PATH"]},
                       "stdin": None, "rlimits": {}, "cap": 1 << 20})
    cmd: supervisor.Command = supervisor.procs[cid]
    return cmd


def _ready_together(cmd: supervisor.Command) -> list[Any]:
    """One select() batch holding the command's exit and its pipes' end, the exit first."""
    # Wait on the events themselves: the process has exited and both pipes are at their end.
    fds = [cmd.pidfd, cmd.proc.stdout.fileno(), cmd.proc.stderr.fileno()]
    pending = set(fds)
    while pending:
        readable, _, _ = select.select(list(pending), [], [], WAIT_S)
        assert readable, "the command did not finish"
        pending -= set(readable)
    batch = supervisor.sel.select(0)
    assert {key.fd for key, _ in batch} >= set(fds)
    return sorted(batch, key=lambda item: item[0].data[0] != "exit")


def test_an_exit_handled_before_its_pipes_events_in_one_batch(emitted: Emitted) -> None:
    cmd = _spawn(1, ["sh", "-c", "echo cleaned; echo oops >&2"])
    buf, alive = supervisor.dispatch(_ready_together(cmd), b"")
    # The pipes' events were stale once the exit drained and closed them; the supervisor goes on.
    assert alive and 1 not in supervisor.procs
    events = [e for e in emitted.close() if e.get("id") == 1]
    out = {e["fd"]: base64.b64decode(e["data"]) for e in events if e["ev"] == "out"}
    assert out == {1: b"cleaned\n", 2: b"oops\n"}
    exits = [e for e in events if e["ev"] == "exit"]
    assert exits == [{"ev": "exit", "id": 1, "code": 0, "signal": None}]
    assert events[-1]["ev"] == "exit"


def test_a_later_command_runs_after_a_killed_one_whose_events_were_batched(emitted: Emitted) -> None:
    killed = _spawn(1, ["sh", "-c", "while true; do head -c 65536 /dev/zero; done"])
    supervisor.handle({"op": "signal", "id": 1, "sig": 9})
    supervisor.dispatch(_ready_together(killed), b"")
    after = _spawn(2, ["sh", "-c", "echo cleaned"])
    while 2 in supervisor.procs:
        supervisor.dispatch(supervisor.sel.select(WAIT_S), b"")
    events = emitted.close()
    assert [e for e in events if e["ev"] == "exit"] == [
        {"ev": "exit", "id": 1, "code": 137, "signal": 9},
        {"ev": "exit", "id": 2, "code": 0, "signal": None},
    ]
    assert [base64.b64decode(e["data"]) for e in events if e["ev"] == "out" and e["id"] == 2] == [b"cleaned\n"]
    assert after.proc.returncode == 0
