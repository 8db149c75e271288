"""The systemd unit, the single-file build and the .deb."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edgenode.service"


def _load_abi():  # noqa: ANN202 (a module loaded from its file: packaging/ is not a package)
    spec = importlib.util.spec_from_file_location("packaging_abi", ROOT / "packaging" / "abi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


abi = _load_abi()


def _unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_unit_is_notify_hardened_and_lets_bwrap_work() -> None:
    unit = _unit_settings()
    assert unit["Type"] == "notify" and unit["User"] == "edgenode" and unit["Restart"] == "on-failure"
    assert unit["StateDirectory"] == "edgenode" and "WatchdogSec" in unit
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "RestrictAddressFamilies"):
        assert key in unit, key
    assert unit["ProtectSystem"] == "strict"
    # bwrap needs these namespaces, netlink for loopback in a new netns, and a fully visible /proc
    assert set(unit["RestrictNamespaces"].split()) >= {"user", "mnt", "pid", "net"}
    assert "AF_NETLINK" in unit["RestrictAddressFamilies"]
    for breaks_bwrap in ("ProtectKernelTunables", "ProtectProc", "ProtectKernelLogs", "MemoryDenyWriteExecute"):
        assert breaks_bwrap not in unit, breaks_bwrap
    assert "${STATE_DIRECTORY}" in unit["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists, so point it at this checkout's entry point
    entry = shutil.which("edgenode", path=str(Path(sys.executable).parent)) or "/bin/true"
    good = tmp_path / "edgenode.service"
    good.write_text(UNIT.read_text().replace("/usr/bin/edgenode", entry))
    result = subprocess.run(["systemd-analyze", "verify", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # and the same check does catch a broken unit
    broken = tmp_path / "broken.service"
    broken.write_text(good.read_text().replace("Type=notify", "Type=notifyy"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True)
    assert "notifyy" in result.stderr


@pytest.mark.slow
def test_zipapp_starts_a_node(zipapp: Path, tmp_path: Path) -> None:
    assert zipapp.read_bytes()[:2] == b"#!"
    # A cache of its own: the node must find the runtime inside the single file, not in this user's cache.
    env = {"SHIV_ROOT": str(tmp_path / "shiv"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    data = tmp_path / "data"
    # an isolated interpreter (-I): the zipapp must carry its own dependencies
    node_cmd = [sys.executable, "-I", str(zipapp)]
    proc = subprocess.run([*node_cmd, "--version"], capture_output=True, text=True, env={**os.environ, **env},
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "edgenode" in proc.stdout
    server = subprocess.Popen([*node_cmd, "serve", "--data", str(data), "--listen", "127.0.0.1:0"],
                              env={**os.environ, **env}, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = wait_for(lambda: (data / "url").exists() and (data / "url").read_text().strip(), timeout=120,
                       message="zipapp node to listen")
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        auth = {"authorization": f"Bearer {(data / 'admin-token').read_text().strip()}"}
        with httpx.Client(base_url=url, headers=auth, timeout=600) as c:
            # Python workers and agents run on the runtime the single file carries prebuilt.
            worker = {"main.py": "def handle(request):\n    return {'path': request.path}\n"}
            assert c.put("/v1/workers/hello", json={"files": worker}).status_code == 201
            assert c.get("/w/hello/from/the/pyz").json() == {"path": "/from/the/pyz"}
            agent = {"main.py": "def run(ctx, input):\n    return ctx.step('double', lambda: input * 2)\n"}
            assert c.put("/v1/agents/doubler", json={"files": agent}).status_code == 201
            assert c.post("/v1/agents/doubler/runs", json={"id": "d1", "input": 21}).status_code == 201
            wait_for(lambda: c.get("/v1/agents/runs/d1").json()["status"] == "completed", timeout=120,
                     message="the agent run to complete")
            assert c.get("/v1/agents/runs/d1").json()["output"] == 42
            runtime = c.get("/v1/status").json()["capabilities"]["workers"]["python_runtime"]
            assert runtime["builds"] == 0  # compiled from the bundled WebAssembly, never built
        assert list((tmp_path / "cache" / "edgenode" / "runtime").glob("python-*.cwasm"))
    finally:
        server.terminate()
        assert server.wait(30) == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("fakeroot") is None, reason="needs dpkg-deb")
def test_deb_package(zipapp: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "packaging" / "build-deb.sh"), str(zipapp), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    deb = next(tmp_path.glob("edgenode_*.deb"))
    info = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True).stdout
    assert "Package: edgenode" in info and "bubblewrap" in info
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python3 (>= {minor}), python3 (<< {sys.version_info[0]}.{sys.version_info[1] + 1})" in info
    # The glibc floor of the bundled manylinux wheels (pydantic-core, wasmtime, ... say which they need).
    floor = abi.glibc_floor(abi.wheel_tags(zipapp))
    assert floor is not None and f"libc6 (>= {floor[0]}.{floor[1]})" in info
    fields = dict(line.strip().split(": ", 1) for line in info.splitlines() if ": " in line and line[0] != " ")
    assert set(abi.elf_machines(zipapp).values()) == {fields["Architecture"]}  # the machine its native code is for
    contents = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True).stdout
    for path in ("./usr/bin/edgenode", "./usr/lib/edgenode/edgenode.pyz", "./lib/systemd/system/edgenode.service",
                 "./etc/edgenode/edgenode.toml", "./usr/share/doc/edgenode/copyright",
                 "./usr/share/doc/edgenode/changelog.Debian.gz"):
        assert path in contents, path
    extracted = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(extracted)], check=True)
    for script in ("postinst", "prerm", "postrm"):
        path = extracted / "DEBIAN" / script
        assert os.access(path, os.X_OK)
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0
    assert "adduser --system" in (extracted / "DEBIAN" / "postinst").read_text()
    assert (extracted / "usr/lib/edgenode/edgenode.pyz").read_bytes() == zipapp.read_bytes()
    copyright_text = (extracted / "usr/share/doc/edgenode/copyright").read_text()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    changelog = gzip.decompress((extracted / "usr/share/doc/edgenode/changelog.Debian.gz").read_bytes()).decode()
    assert changelog.startswith(f"edgenode ({fields['Version']}) ")


#: Where the arm64 single file is kept between runs, keyed by what decides its native parts.
ARM64_CACHE = ROOT / "build" / "test-arm64"


def test_the_arm64_single_file_holds_only_arm64_code_for_one_python() -> None:
    """Built with pip's platform options (it cannot run here): every ELF file is aarch64, for one CPython."""
    pins = subprocess.run([sys.executable, str(ROOT / "packaging" / "pins.py")], capture_output=True, text=True,
                          check=True).stdout
    key = hashlib.sha256((pins + (ROOT / "packaging" / "build-zipapp.sh").read_text()
                          + f"{sys.version_info[:2]}").encode()).hexdigest()[:16]
    pyz = ARM64_CACHE / key / "edgenode-arm64.pyz"
    if not pyz.exists():  # the first run fetches the wheels and builds (about half a minute); later runs reuse it
        env = {**os.environ, "PYTHON": sys.executable, "ARCH": "arm64"}
        built = subprocess.run(["bash", str(ROOT / "packaging" / "build-zipapp.sh"), str(pyz)], capture_output=True,
                               text=True, env=env, timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr[-3000:]
    machines = abi.elf_machines(pyz)
    assert len(machines) >= 5 and set(machines.values()) == {"arm64"}, machines
    assert any("pydantic_core" in name for name in machines) and any("wasmtime" in name for name in machines)
    tags = abi.wheel_tags(pyz)
    assert abi.cpython_abis(tags) == {sys.version_info[:2]}
    platforms = {tag.split("-")[-1] for dist in tags.values() for tag in dist} - {"any"}
    assert platforms and all(p.endswith("aarch64") for p in platforms), platforms
    depends = abi.depends(pyz)
    assert depends.startswith(f"python3 (>= {sys.version_info[0]}.{sys.version_info[1]}), ")
    assert "libc6 (>= 2." in depends
