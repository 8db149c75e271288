"""Images: a sandbox on a root file system prepared on the node, read-only, with its workspace writable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess

PROGRAMS = ("/usr/bin/python3", "/usr/bin/dash", "/usr/bin/cat", "/usr/bin/ls")

@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node



def _install(rootfs: Path, path: str) -> None:
    """``path`` of the host into ``rootfs`` at the same place: hard links for files, the same symlinks."""
    target = Path(str(rootfs) + path)
    if os.path.lexists(target):
        return
    parent = os.path.dirname(path)
    if parent != "/":
        _install(rootfs, parent)
    if os.path.islink(path):
        link = os.readlink(path)
        target.symlink_to(link)
        _install(rootfs, os.path.normpath(os.path.join(parent, link)))
    elif os.path.isdir(path):
        target.mkdir(mode=0o755)
    else:
        os.link(path, target)


def minimal_rootfs(rootfs: Path) -> None:
    """A root file system with python3, sh, cat and ls and their libraries, hard-linked from the host's."""
    rootfs.mkdir()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    ctypes_module = next(Path(f"/usr/lib/{version}/lib-dynload").glob("_ctypes.*.so"))
    for program in (*PROGRAMS, str(ctypes_module)):
        _install(rootfs, program)
        libraries = subprocess.run(["ldd", program], capture_output=True, text=True).stdout.split()
        for word in libraries:
            if word.startswith("/"):
                _install(rootfs, word)
    _install(rootfs, "/bin")  # /bin/sh runs shell commands
    if os.path.lexists("/usr/bin/sh"):
        _install(rootfs, "/usr/bin/sh")
    else:
        (rootfs / "usr/bin/sh").symlink_to("dash")
    stdlib = Path("/usr/lib") / version if (Path("/usr/lib") / version).is_dir() else None
    assert stdlib is not None, "the host's python3 stdlib"
    shutil.rmtree(rootfs / "usr/lib" / version)  # only _ctypes so far: the whole stdlib now
    subprocess.run(["cp", "-al", str(stdlib), str(rootfs / "usr/lib" / version)], check=True)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/image-release").write_text("minimal test image\n")


def test_a_sandbox_runs_on_an_image(admin: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    minimal_rootfs(tmp_path / "rootfs")
    added = admin.post("/v1/sandbox-images", json={"name": "mini", "path": str(tmp_path / "rootfs")})
    assert added.status_code == 201, added.text
    assert [i["name"] for i in admin.get("/v1/sandbox-images").json()["images"]] == ["mini"]
    sid = admin.post("/v1/sandboxes", json={"image": "mini"}).json()["id"]
    try:
        assert admin.get(f"/v1/sandboxes/{sid}").json()["image"] == "mini"
        seen = run(admin, sid, "cat /etc/image-release; ls /usr/bin")
        assert seen["stdout"].splitlines()[0] == "minimal test image"
        assert "git" not in seen["stdout"].split(), "the host's programs are not there"
        assert run(admin, sid, None, code="print(6 * 7)")["stdout"] == "42\n"
        # The image is read-only, the workspace writable.
        assert run(admin, sid, "echo x > /usr/bin/new")["exit_code"] != 0
        assert run(admin, sid, "echo kept > f.txt; cat f.txt")["stdout"] == "kept\n"
        assert not (tmp_path / "rootfs/usr/bin/new").exists()
        # A fork runs on its source's image.
        fork = admin.post(f"/v1/sandboxes/{sid}/fork", json={}).json()
        assert fork["image"] == "mini" and run(admin, fork["id"], "cat f.txt")["stdout"] == "kept\n"
        admin.delete(f"/v1/sandboxes/{fork['id']}")
        assert_error(admin.delete("/v1/sandbox-images/mini"), 409, "conflict")  # still in use
    finally:
        admin.delete(f"/v1/sandboxes/{sid}")
    assert admin.delete("/v1/sandbox-images/mini").status_code == 204


def test_an_image_from_a_tarball_and_bad_images(admin: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    minimal_rootfs(tmp_path / "rootfs")
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        tar.add(tmp_path / "rootfs", arcname=".")
    assert admin.post("/v1/sandbox-images", json={"name": "fromtar", "path": str(tmp_path / "image.tar")}
                      ).status_code == 201
    sid = admin.post("/v1/sandboxes", json={"image": "fromtar"}).json()["id"]
    assert run(admin, sid, "cat /etc/image-release")["stdout"] == "minimal test image\n"
    admin.delete(f"/v1/sandboxes/{sid}")
    assert admin.delete("/v1/sandbox-images/fromtar").status_code == 204
    (tmp_path / "empty").mkdir()
    images = "/v1/sandbox-images"
    assert_error(admin.post(images, json={"name": "empty", "path": str(tmp_path / "empty")}), 400,
                 "validation_failed")  # no python3
    assert_error(admin.post(images, json={"name": "rel", "path": "rootfs"}), 400, "validation_failed")
    assert_error(admin.post(images, json={"name": "Bad", "path": str(tmp_path / "rootfs")}), 400,
                 "validation_failed")
    assert_error(admin.post(images, json={"name": "x", "path": str(tmp_path / "nothing")}), 400,
                 "validation_failed")
    assert_error(admin.post("/v1/sandboxes", json={"image": "nosuch"}), 404, "not_found")
    issued = admin.post("/v1/tokens", json={"tenant": "imagetenant"}).json()["token"]
    with node.client(issued) as tenant:
        assert_error(tenant.post(images, json={"name": "t", "path": str(tmp_path / "rootfs")}), 403, "forbidden")
    shutil.rmtree(tmp_path / "rootfs")
