"""Workspace files over the API: read, write (streamed), list, mkdir, move, delete, and every refused path."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


def test_write_read_list_delete(admin: httpx.Client, shared_sandbox: str) -> None:
    base = f"/v1/sandboxes/{shared_sandbox}/files"
    assert admin.put(f"{base}/notes.txt", content=b"hello\n").json() == {"path": "notes.txt", "size": 6}
    assert admin.get(f"{base}/notes.txt").content == b"hello\n"
    assert run(admin, shared_sandbox, "cat notes.txt; stat -c %U notes.txt")["stdout"] == "hello\nsandbox\n"
    listing = admin.get(base).json()
    assert listing["type"] == "directory"
    assert {"name": "notes.txt", "type": "file", "size": 6} .items() <= next(
        e for e in listing["entries"] if e["name"] == "notes.txt").items()
    assert admin.delete(f"{base}/notes.txt").status_code == 204
    assert_error(admin.get(f"{base}/notes.txt"), 404, "not_found")


def test_files_written_inside_are_readable_outside(admin: httpx.Client, shared_sandbox: str) -> None:
    run(admin, shared_sandbox, "mkdir -p out && printf built > out/artifact.bin")
    assert admin.get(f"/v1/sandboxes/{shared_sandbox}/files/out/artifact.bin").content == b"built"
    names = [e["name"] for e in admin.get(f"/v1/sandboxes/{shared_sandbox}/files/out").json()["entries"]]
    assert names == ["artifact.bin"]


def test_streaming_upload_and_download(admin: httpx.Client, shared_sandbox: str) -> None:
    chunk = os.urandom(64 * 1024)

    def body():
        for _ in range(48):  # 3 MiB in chunks, no content-length
            yield chunk

    base = f"/v1/sandboxes/{shared_sandbox}/files"
    put = admin.put(f"{base}/big.bin", content=body())
    assert put.status_code == 201 and put.json()["size"] == 48 * len(chunk)
    with admin.stream("GET", f"{base}/big.bin") as response:
        assert int(response.headers["content-length"]) == 48 * len(chunk)
        received = b"".join(response.iter_bytes())
    assert received == chunk * 48
    assert run(admin, shared_sandbox, "stat -c %s big.bin")["stdout"] == f"{48 * len(chunk)}\n"
    admin.delete(f"{base}/big.bin")


def test_mkdir_move_and_recursive_delete(admin: httpx.Client, shared_sandbox: str) -> None:
    base = f"/v1/sandboxes/{shared_sandbox}"
    assert admin.post(f"{base}/mkdir", json={"path": "a/b/c"}).status_code == 201
    assert_error(admin.post(f"{base}/mkdir", json={"path": "a/b/c", "parents": False}), 409, "conflict")
    admin.put(f"{base}/files/a/b/c/f.txt", content=b"x")
    assert admin.post(f"{base}/move", json={"from": "a/b/c/f.txt", "to": "a/g.txt"}).status_code == 200
    assert admin.get(f"{base}/files/a/g.txt").content == b"x"
    admin.put(f"{base}/files/a/h.txt", content=b"y")
    assert_error(admin.post(f"{base}/move", json={"from": "a/g.txt", "to": "a/h.txt"}), 409, "conflict")
    assert admin.post(f"{base}/move", json={"from": "a/g.txt", "to": "a/h.txt", "overwrite": True}).status_code == 200
    assert_error(admin.delete(f"{base}/files/a"), 409, "conflict")  # not empty
    assert admin.delete(f"{base}/files/a?recursive=true").status_code == 204
    assert_error(admin.get(f"{base}/files/a"), 404, "not_found")
    assert_error(admin.post(f"{base}/move", json={"from": "nope", "to": "x"}), 404, "not_found")


def test_put_into_a_missing_directory_is_404(admin: httpx.Client, shared_sandbox: str) -> None:
    assert_error(admin.put(f"/v1/sandboxes/{shared_sandbox}/files/missing/dir/f", content=b"x"), 404, "not_found")


def test_symlinks_inside_the_workspace_work(admin: httpx.Client, shared_sandbox: str) -> None:
    run(admin, shared_sandbox, "mkdir -p real && echo in > real/f && ln -sfn real linkdir && ln -sfn real/f linkfile")
    base = f"/v1/sandboxes/{shared_sandbox}/files"
    assert admin.get(f"{base}/linkdir/f").content == b"in\n"
    assert admin.get(f"{base}/linkfile").content == b"in\n"
    listing = {e["name"]: e for e in admin.get(base).json()["entries"]}
    assert listing["linkdir"]["type"] == "symlink" and listing["linkdir"]["target"] == "real"


def _raw(admin: httpx.Client, method: str, raw_path: str, **kwargs) -> httpx.Response:
    """Send ``raw_path`` exactly as written (httpx would otherwise normalise dot segments)."""
    request = admin.build_request(method, "/", **kwargs)
    request.url = request.url.copy_with(raw_path=raw_path.encode())
    return admin.send(request)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_traversal_is_refused(admin: httpx.Client, shared_sandbox: str, method: str, node: NodeProcess) -> None:
    response = _raw(admin, method, f"/v1/sandboxes/{shared_sandbox}/files/a/%2e%2e/%2e%2e/%2e%2e/node-id",
                    content=b"x" if method == "PUT" else None)
    error = assert_error(response, 400, "path_refused")
    assert error["reason"] == "traversal"
    assert (node.data_dir / "node-id").read_text().strip() == node.node_id
    assert admin.get("/healthz").status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_absolute_paths_are_refused(admin: httpx.Client, shared_sandbox: str, method: str) -> None:
    response = _raw(admin, method, f"/v1/sandboxes/{shared_sandbox}/files//etc/passwd",
                    content=b"x" if method == "PUT" else None)
    assert assert_error(response, 400, "path_refused")["reason"] == "absolute"
    assert admin.get("/healthz").status_code == 200


def test_move_and_mkdir_refuse_escapes(admin: httpx.Client, shared_sandbox: str) -> None:
    base = f"/v1/sandboxes/{shared_sandbox}"
    admin.put(f"{base}/files/m.txt", content=b"m")
    assert assert_error(admin.post(f"{base}/move", json={"from": "m.txt", "to": "../m.txt"}),
                        400, "path_refused")["reason"] == "traversal"
    assert assert_error(admin.post(f"{base}/move", json={"from": "m.txt", "to": "/tmp/m.txt"}),
                        400, "path_refused")["reason"] == "absolute"
    assert assert_error(admin.post(f"{base}/mkdir", json={"path": "../../x"}), 400, "path_refused")
    assert assert_error(_raw(admin, "DELETE", f"{base}/files/%2e"), 400, "path_refused")["reason"] == "root"


def test_symlinks_pointing_out_are_refused(admin: httpx.Client, shared_sandbox: str, node: NodeProcess) -> None:
    # Planted from inside the sandbox: links to the host's and the node's files.
    run(admin, shared_sandbox, f"ln -sfn /etc escape-dir && ln -sfn {node.data_dir}/admin-token escape-file "
                               "&& ln -sfn ../../.. escape-up")
    base = f"/v1/sandboxes/{shared_sandbox}/files"
    for path in ("escape-dir/hostname", "escape-file", "escape-up/node-id", "escape-dir"):
        error = assert_error(admin.get(f"{base}/{path}"), 400, "path_refused")
        assert error["reason"] == "escapes", path
    error = assert_error(admin.put(f"{base}/escape-dir/planted", content=b"x"), 400, "path_refused")
    assert error["reason"] == "escapes"
    assert not os.path.exists("/etc/planted")
    assert_error(admin.post(f"/v1/sandboxes/{shared_sandbox}/mkdir", json={"path": "escape-up/newdir"}),
                 400, "path_refused")
    # Writing over the link itself replaces the link; the target is untouched.
    token_before = (node.data_dir / "admin-token").read_text()
    assert admin.put(f"{base}/escape-file", content=b"replaced").status_code == 201
    assert (node.data_dir / "admin-token").read_text() == token_before
    assert admin.get(f"{base}/escape-file").content == b"replaced"
    assert admin.get("/healthz").status_code == 200


def test_upload_past_the_disk_quota_is_413(admin: httpx.Client) -> None:
    def streamed():
        for _ in range(32):
            yield b"x" * 65536

    created = admin.post("/v1/sandboxes", json={"limits": {"disk_mb": 1}}).json()
    try:
        base = f"/v1/sandboxes/{created['id']}/files"
        error = assert_error(admin.put(f"{base}/too-big", content=b"x" * (2 * 1024 * 1024)),
                             413, "disk_quota_exceeded")
        assert error["limit"] == 1024 * 1024
        # Without a declared length the node finds out while writing, and still answers 413.
        assert_error(admin.put(f"{base}/too-big", content=streamed()), 413, "disk_quota_exceeded")
        names = [e["name"] for e in admin.get(base).json()["entries"]]
        assert names == []  # no partial file, no temp file left behind
        assert admin.put(f"{base}/small", content=b"ok").status_code == 201
    finally:
        admin.delete(f"/v1/sandboxes/{created['id']}")


def test_reading_a_fifo_does_not_hang_the_node(admin: httpx.Client, shared_sandbox: str) -> None:
    run(admin, shared_sandbox, "rm -f pipe && mkfifo pipe")
    for _ in range(12):  # more than the node's worker threads: none may be left blocked
        assert_error(admin.get(f"/v1/sandboxes/{shared_sandbox}/files/pipe", timeout=60), 409, "conflict")
    assert admin.get(f"/v1/sandboxes/{shared_sandbox}/files").status_code == 200
