"""A node restart keeps sandbox records and workspaces; processes do not survive, and the API says so."""

from __future__ import annotations

import os
import signal

from tests.sandboxes.conftest import run
from tests.sandboxes.test_processes import _host_has
from tests.support import wait_for


def test_restart_keeps_workspace_and_record(make_node) -> None:
    node = make_node("restart")
    with node.client() as c:
        created = c.post("/v1/sandboxes", json={"name": "durable", "limits": {"pids": 40},
                                                "network": {"allow": ["example.org"]}}).json()
        sid = created["id"]
        run(c, sid, "mkdir -p src && echo 'print(42)' > src/main.py && echo scratch > /tmp/scratch")
        c.put(f"/v1/sandboxes/{sid}/files/upload.bin", content=b"\x00\x01")
        proc = c.post(f"/v1/sandboxes/{sid}/processes", json={"cmd": "exec sleep 304"}).json()
        assert proc["state"] == "running"
    node.stop()
    assert not _host_has("sleep 304")
    node.start()
    with node.client() as c:
        again = c.get("/v1/sandboxes/durable").json()
        assert again["id"] == sid and again["limits"]["pids"] == 40
        assert again["network"] == {"allow": ["example.org"]}
        assert again["state"] == "stopped" and again["persistence"] == {"files": True, "processes": False}
        assert c.get(f"/v1/sandboxes/{sid}/processes").json()["processes"] == []
        assert c.get(f"/v1/sandboxes/{sid}/files/upload.bin").content == b"\x00\x01"
        assert run(c, sid, "python3 src/main.py")["stdout"] == "42\n"
        # /tmp starts empty whenever the sandbox's processes start again.
        assert run(c, sid, "ls /tmp")["stdout"] == ""


def test_a_killed_node_takes_its_sandboxes_down(make_node) -> None:
    node = make_node("killed")
    with node.client() as c:
        sid = c.post("/v1/sandboxes", json={}).json()["id"]
        c.post(f"/v1/sandboxes/{sid}/processes", json={"cmd": "exec sleep 305"})
        wait_for(lambda: _host_has("sleep 305"), message="the sleeper")
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)  # the node alone, not its process group
    node.proc.wait(10)
    wait_for(lambda: not _host_has("sleep 305"), message="bwrap --die-with-parent to reap the sandbox")
    node.kill()
    node.start()
    with node.client() as c:
        assert run(c, sid, "echo back")["stdout"] == "back\n"
