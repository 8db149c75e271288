"""`edgenode rollout` against a local fleet: three hosts on loopback addresses, each a
directory holding the installed edgenode.pyz and a `restart` script that plays its
service manager, with the copy/run templates pointed at them instead of scp/ssh. The gate
runs the installed single file's `selftest` on each host (a canary worker, a sandbox command)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
ROLLOUT = ROOT / "packaging" / "rollout.py"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # all loopback on Linux: one address per host

pytestmark = pytest.mark.slow

RESTART = """#!/bin/sh
# This host's service manager: stop the running node, then start the installed edgenode.pyz.
cd "$(dirname "$0")" || exit 1
echo {host} >> ../restarts.log
if [ -f node.pid ]; then
    pid=$(cat node.pid)
    kill "$pid" 2>/dev/null
    n=0
    # an orphaned node may linger as a zombie if nobody reaps it; that counts as stopped
    while [ $n -lt 300 ] && [ -e /proc/$pid ] && ! grep -q '^State:.*zombie' /proc/$pid/status 2>/dev/null; do
        sleep 0.1; n=$((n + 1))
    done
    kill -9 "$pid" 2>/dev/null
    rm -f node.pid
fi
SHIV_ROOT={shiv} {python} -I edgenode.pyz serve --data data --listen {host}:{port} >>node.log 2>&1 </dev/null &
echo $! > node.pid
"""


#: The gate on a test host: the installed single file checks its own node (URL and token from its data directory).
SELFTEST = f"{shlex.quote(sys.executable)} -I edgenode.pyz --data data selftest --expect-version {{version}}"


def _env(shiv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENODE_")}
    return {**env, "SHIV_ROOT": str(shiv)}


def _bump_version(pyz: Path, out: Path) -> str:
    """The same build as a newer release: edgenode's version and shiv's build id changed."""
    with zipfile.ZipFile(pyz) as old:
        init = old.read("site-packages/edgenode/__init__.py").decode()
        version = re.search(r'__version__ = "([^"]+)"', init)
        assert version
        new_version = version.group(1) + ".post1"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as new:
            for info in old.infolist():
                data = old.read(info)
                if info.filename == "site-packages/edgenode/__init__.py":
                    data = init.replace(version.group(0), f'__version__ = "{new_version}"').encode()
                elif info.filename == "environment.json":  # a new build id: unpacked apart from the old one
                    data = re.sub(rb'"build_id": "[0-9a-f]+"', b'"build_id": "' + b"1" * 64 + b'"', data)
                new.writestr(info, data)
    shebang = pyz.read_bytes().split(b"\n", 1)[0] + b"\n"
    out.write_bytes(shebang + buf.getvalue())  # zipimport finds the archive after the shebang
    out.chmod(0o755)
    return new_version


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, zipapp: Path) -> dict[str, Any]:
    """The current build (old), the same with a bumped version (new), and a broken .pyz."""
    dist = tmp_path_factory.mktemp("dist")
    old = dist / "old" / "edgenode.pyz"
    old.parent.mkdir()
    shutil.copy2(zipapp, old)
    (dist / "new").mkdir()
    new = dist / "new" / "edgenode.pyz"
    new_version = _bump_version(old, new)
    (dist / "broken").mkdir()
    broken = dist / "broken" / "edgenode.pyz"
    broken.write_bytes(b"#!/usr/bin/env python3\nthis is not a zipapp\n")
    return {"old": old, "new": new, "new_version": new_version, "broken": broken}


def _free_port() -> int:
    """A port free on every host address (the node binds each address separately)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in HOSTS:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class Fleet:
    """Three local hosts: FLEET/<address>/{edgenode.pyz, restart, node.pid, data/}."""

    def __init__(self, root: Path, port: int, package: Path) -> None:
        self.root, self.port = root, port
        self.shiv = root / "shiv"
        self.env = _env(self.shiv)
        for host in HOSTS:
            home = root / host
            (home / "data").mkdir(parents=True)
            (home / "edgenode.pyz").write_bytes(package.read_bytes())
            script = home / "restart"
            script.write_text(RESTART.format(host=host, port=port, python=shlex.quote(sys.executable),
                                             shiv=shlex.quote(str(self.shiv))))
            script.chmod(0o755)
        for host in HOSTS:
            subprocess.run([str(root / host / "restart")], check=True, env=self.env, timeout=60)
        for host in HOSTS:
            wait_for(lambda h=host: self.health(h).get("status") == "ok", timeout=120, interval=0.2,
                     message=f"{host} to start")

    def health(self, host: str) -> dict[str, Any]:
        try:
            body: dict[str, Any] = httpx.get(f"http://{host}:{self.port}/healthz", timeout=5).json()
            return body
        except httpx.HTTPError:
            return {}

    def pid(self, host: str) -> int:
        return int((self.root / host / "node.pid").read_text())

    def state(self, host: str) -> dict[str, Any]:
        """What a rollout could change on a host: its files, installed package and running node."""
        home = self.root / host
        pid = self.pid(host)
        return {"files": sorted(p.name for p in home.iterdir()), "pid": pid, "alive": _running(pid),
                "pyz": hashlib.sha256((home / "edgenode.pyz").read_bytes()).hexdigest()}

    def restarts(self) -> list[str]:
        return (self.root / "restarts.log").read_text().split()

    def rollout(self, package: Path, *args: str,
                installs: tuple[str, ...] = ("install -m 0755 {remote} edgenode.pyz", "./restart"),
                gate: tuple[str, ...] = (SELFTEST,)) -> subprocess.CompletedProcess[str]:
        """Run packaging/rollout.py with templates that reach this fleet's directories, not ssh."""
        root = shlex.quote(str(self.root))
        templates = [
            "--copy", f"cp {{package}} {root}/{{host}}/{{remote}}",
            "--remote", "incoming-{name}",
            "--run", f"env -C {root}/{{host}} sh -c {{command}}",
            *(arg for step in installs for arg in ("--install", step)),
            "--health", f"http://{{address}}:{self.port}/healthz",
            *(arg for step in gate for arg in ("--gate", step)),
        ]
        return subprocess.run([sys.executable, str(ROLLOUT), str(package), *templates, *args],
                              capture_output=True, text=True, env=self.env, timeout=180)

    def stop(self) -> None:
        for host in HOSTS:
            pid_file = self.root / host / "node.pid"
            if pid_file.exists() and _running(pid := int(pid_file.read_text())):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, packages: dict[str, Any]) -> Any:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), _free_port(), packages["old"])
    try:
        yield fleet
    finally:
        fleet.stop()


def _table(stdout: str) -> dict[str, str]:
    """host -> status from the summary table."""
    rows = {}
    for line in stdout.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if parts[0] in HOSTS and len(parts) >= 2:
            rows[parts[0]] = parts[1]
    return rows


def test_dry_run_prints_the_commands_and_touches_nothing(fleet: Fleet, packages: dict[str, Any]) -> None:
    before = {h: fleet.state(h) for h in HOSTS}
    restarts = fleet.restarts()
    result = fleet.rollout(packages["new"], *HOSTS, "--dry-run", "--batch", "2")
    assert result.returncode == 0, result.stderr
    # the version was read from the package itself
    assert f"version {packages['new_version']}" in result.stdout
    for host in HOSTS:
        assert f"$ cp {packages['new']} {fleet.root}/{host}/incoming-edgenode.pyz" in result.stdout
        # the install step reaches the "remote shell" as one quoted argument, as ssh would pass it
        assert f"$ env -C {fleet.root}/{host} sh -c 'install -m 0755 incoming-edgenode.pyz edgenode.pyz'" \
            in result.stdout
        assert f"http://{host}:{fleet.port}/healthz" in result.stdout
    assert "== canary: 127.0.0.2" in result.stdout and "== batch 1: 127.0.0.3, 127.0.0.4" in result.stdout
    assert {h: fleet.state(h) for h in HOSTS} == before and fleet.restarts() == restarts


@pytest.mark.parametrize("bad", ["-oProxyCommand=touch", "host;reboot", "two words", "../etc", "host:22",
                                 "$(id)", "user@", ""])
def test_bad_host_names_are_refused(fleet: Fleet, packages: dict[str, Any], bad: str) -> None:
    before = {h: fleet.state(h) for h in HOSTS}
    result = fleet.rollout(packages["new"], "--dry-run", "--", HOSTS[0], bad)
    assert result.returncode == 2
    assert f"not a valid host name: {bad!r}" in result.stderr
    assert "$ cp" not in result.stdout
    assert {h: fleet.state(h) for h in HOSTS} == before


def test_bad_inputs_give_clear_errors(fleet: Fleet, packages: dict[str, Any], tmp_path: Path) -> None:
    before = {h: fleet.state(h) for h in HOSTS}
    missing = fleet.rollout(tmp_path / "nope.pyz", *HOSTS)
    assert missing.returncode == 2 and "nope.pyz' does not exist" in missing.stderr
    (tmp_path / "edgenode.tar").write_bytes(b"x")
    wrong = fleet.rollout(tmp_path / "edgenode.tar", *HOSTS)
    assert wrong.returncode == 2 and "expected a .deb or .pyz package" in wrong.stderr
    unreadable = fleet.rollout(packages["broken"], *HOSTS)
    assert unreadable.returncode == 2 and "cannot read the version" in unreadable.stderr
    assert "--expect-version" in unreadable.stderr
    no_hosts = fleet.rollout(packages["new"])
    assert no_hosts.returncode == 2 and "no hosts" in no_hosts.stderr
    (tmp_path / "hosts.txt").write_text("# fleet\n127.0.0.2\nbad host\n")
    from_file = fleet.rollout(packages["new"], "--hosts-file", str(tmp_path / "hosts.txt"))
    assert from_file.returncode == 2 and "'bad host'" in from_file.stderr
    typo = fleet.rollout(packages["new"], *HOSTS, "--health", "http://{adress}/healthz")
    assert typo.returncode == 2 and "unknown placeholder {adress}" in typo.stderr
    assert {h: fleet.state(h) for h in HOSTS} == before


def test_broken_package_stops_at_the_canary_and_rolls_it_back(fleet: Fleet, packages: dict[str, Any]) -> None:
    canary, *others = HOSTS
    before = {h: fleet.state(h) for h in HOSTS}
    restarts = fleet.restarts()
    result = fleet.rollout(packages["broken"], *HOSTS, "--expect-version", packages["new_version"],
                           "--health-timeout", "6", "--batch", "2", "--rollback-package", str(packages["old"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _table(result.stdout) == {canary: "rolled back", others[0]: "not touched", others[1]: "not touched"}
    assert "not healthy within 6s" in result.stdout
    # the canary was restarted twice (broken, then the rollback) and runs the old package again
    assert fleet.restarts() == [*restarts, canary, canary]
    after = fleet.state(canary)
    assert after["pyz"] == before[canary]["pyz"] and after["alive"] and after["pid"] != before[canary]["pid"]
    health = fleet.health(canary)
    assert health["status"] == "ok" and health["version"] != packages["new_version"]
    for host in others:
        assert fleet.state(host) == before[host] and fleet.health(host)["status"] == "ok"


def test_a_host_still_on_the_old_version_is_not_upgraded(fleet: Fleet, packages: dict[str, Any]) -> None:
    # an install that forgets to restart: /healthz stays ok but reports the old version
    canary, *others = HOSTS
    before = {h: fleet.state(h) for h in HOSTS}
    result = fleet.rollout(packages["new"], *HOSTS, "--health-timeout", "2",
                           installs=("install -m 0755 {remote} edgenode.pyz",))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _table(result.stdout) == {canary: "failed", others[0]: "not touched", others[1]: "not touched"}
    assert f"status 'ok', version '{fleet.health(canary)['version']}'" in result.stdout
    # no rollback package was given: the new file stays on the canary, still unrestarted
    assert fleet.state(canary)["pid"] == before[canary]["pid"]
    assert fleet.state(canary)["pyz"] == hashlib.sha256(packages["new"].read_bytes()).hexdigest()
    for host in others:
        assert fleet.state(host) == before[host]
    # put the canary's old package back for the tests that follow
    rollback = fleet.rollout(packages["old"], canary, "--health-timeout", "10",
                             installs=("install -m 0755 {remote} edgenode.pyz",))
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert {k: fleet.state(canary)[k] for k in ("pid", "pyz")} == {k: before[canary][k] for k in ("pid", "pyz")}


def test_a_failing_gate_stops_the_rollout_and_rolls_the_canary_back(fleet: Fleet, packages: dict[str, Any]) -> None:
    # Healthy on the new version, but the gate fails there (it passes on the old one, for the rollback).
    canary, *others = HOSTS
    before = {h: fleet.state(h) for h in HOSTS}
    refuse_new = f"test {{version}} != {packages['new_version']}"
    result = fleet.rollout(packages["new"], *HOSTS, "--health-timeout", "60", "--rollback-package",
                           str(packages["old"]), gate=(SELFTEST, refuse_new))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _table(result.stdout) == {canary: "rolled back", others[0]: "not touched", others[1]: "not touched"}
    assert "gate failed: env exited with 1" in result.stdout
    assert f"[{canary}] gate passed on version {fleet.health(canary)['version']}" in result.stdout
    assert fleet.state(canary)["pyz"] == before[canary]["pyz"]
    for host in others:
        assert fleet.state(host) == before[host]


def test_good_package_rolls_through_the_fleet_canary_first(fleet: Fleet, packages: dict[str, Any]) -> None:
    canary, *others = HOSTS
    before = {h: fleet.state(h) for h in HOSTS}
    restarts = fleet.restarts()
    result = fleet.rollout(packages["new"], *HOSTS, "--canary", "1", "--batch", "2", "--health-timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _table(result.stdout) == dict.fromkeys(HOSTS, "upgraded")
    # the canary was healthy on the new version before any other host was touched
    out = result.stdout
    assert out.index(f"[{canary}] healthy") < min(out.index(f"[{h}] $ cp") for h in others)
    # ... and had passed the gate (a canary worker and a sandbox command on the new version) before that too
    assert out.index(f"[{canary}] gate passed on version {packages['new_version']}") < \
        min(out.index(f"[{h}] $ cp") for h in others)
    assert all(f"[{h}] gate passed" in out for h in HOSTS) and "selftest --expect-version" in out
    new = fleet.restarts()[len(restarts):]
    assert new[0] == canary and sorted(new[1:]) == sorted(others)
    new_hash = hashlib.sha256(packages["new"].read_bytes()).hexdigest()
    for host in HOSTS:
        state = fleet.state(host)
        assert state["pyz"] == new_hash and state["alive"] and state["pid"] != before[host]["pid"]
        health = fleet.health(host)
        assert (health["status"], health["version"]) == ("ok", packages["new_version"])


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("fakeroot") is None, reason="needs dpkg-deb")
def test_dry_run_of_a_deb_with_the_default_ssh_templates(packages: dict[str, Any], tmp_path: Path) -> None:
    build = subprocess.run(["bash", str(ROOT / "packaging" / "build-deb.sh"), str(packages["old"]), str(tmp_path)],
                           capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    assert build.returncode == 0, build.stderr
    deb = next(tmp_path.glob("edgenode_*.deb"))
    version = deb.name.split("_")[1]
    result = subprocess.run([sys.executable, "-m", "edgenode", "rollout", str(deb), "ops@node1.example", "10.0.0.7",
                             "--dry-run"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"(version {version})" in result.stdout  # read with dpkg-deb --field
    assert f"$ scp -q {deb} ops@node1.example:/var/tmp/{deb.name}" in result.stdout
    assert f"$ ssh -o BatchMode=yes ops@node1.example 'sudo dpkg -i /var/tmp/{deb.name}'" in result.stdout
    # The shipped config listens on the host's loopback: health is checked there, by the gate, not from here.
    assert "wait for http" not in result.stdout
    assert (f"$ ssh -o BatchMode=yes ops@node1.example 'sudo edgenode --data /var/lib/edgenode selftest "
            f"--expect-version {version} --health-timeout 120'") in result.stdout
    assert "== canary: ops@node1.example" in result.stdout and "== batch 1: 10.0.0.7" in result.stdout
