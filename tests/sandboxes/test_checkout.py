"""Git checkout in one call: the node's own repositories through the node grant, with a token git never shows."""

from __future__ import annotations

import httpx
import pytest

from tests.sandboxes.conftest import assert_error, run
from tests.support import NodeProcess


@pytest.fixture(scope="module")
def node(features_node: NodeProcess) -> NodeProcess:
    """The feature modules' shared node."""
    return features_node



def _repo(admin: httpx.Client, name: str) -> str:
    assert admin.post("/v1/repos", json={"name": name}).status_code == 201
    made = admin.post(f"/v1/repos/{name}/commits", json={"branch": "main", "message": "first",
                                                         "files": {"README.md": "hello\n", "src/app.py": "x = 1\n"}})
    assert made.status_code == 201, made.text
    return str(made.json()["commit"])


def test_checkout_of_the_nodes_own_repository(admin: httpx.Client) -> None:
    commit = _repo(admin, "site")
    sid = admin.post("/v1/sandboxes", json={"network": {"allow": ["node"]}}).json()["id"]
    try:
        done = admin.post(f"/v1/sandboxes/{sid}/git/checkout", json={"url": "site", "branch": "main", "depth": 1})
        assert done.status_code == 201, done.text
        assert done.json()["path"] == "/workspace/site" and done.json()["commit"] == commit
        assert run(admin, sid, "cat site/README.md; git -C site rev-list --count HEAD")["stdout"] == "hello\n1\n"
        # The token was for this checkout only: git kept no credentials in the clone's config.
        assert "Authorization" not in run(admin, sid, "cat site/.git/config")["stdout"]
        again = admin.post(f"/v1/sandboxes/{sid}/git/checkout", json={"url": "/git/site.git", "path": "copy/two"})
        assert again.status_code == 201, again.text
        assert run(admin, sid, "cat copy/two/src/app.py")["stdout"] == "x = 1\n"
        # Into a directory that is not empty: git's refusal comes back as a clear 422.
        assert_error(admin.post(f"/v1/sandboxes/{sid}/git/checkout", json={"url": "site"}), 422, "checkout_failed")
        assert_error(admin.post(f"/v1/sandboxes/{sid}/git/checkout", json={"url": "missing-repo"}), 404,
                     "artifact_not_found")
        assert_error(admin.post(f"/v1/sandboxes/{sid}/git/checkout", json={"url": "other/site"}), 404, "not_found")
    finally:
        admin.delete(f"/v1/sandboxes/{sid}")


def test_checkout_needs_the_node_grant_and_refuses_what_git_could_misread(admin: httpx.Client,
                                                                          shared_sandbox: str) -> None:
    url = f"/v1/sandboxes/{shared_sandbox}/git/checkout"
    assert_error(admin.post(url, json={"url": "site"}), 403, "forbidden")  # no network: no node grant
    assert_error(admin.post(url, json={"url": "https://example.com/r.git"}), 403, "forbidden")
    for body in ({"url": "ext::sh -c touch% /tmp/pwned"}, {"url": "file:///etc"}, {"url": "ssh://host/r"},
                 {"url": "site", "branch": "--upload-pack=touch x"}, {"url": "site", "depth": 0},
                 {"url": "site", "depth": "1"}, {"url": "site", "path": "-x"},
                 {"url": "https://user:pw@example.com/r.git"}, {}, {"url": "site", "extra": 1}):
        assert_error(admin.post(url, json=body), 400, "validation_failed")
    assert_error(admin.post(url, json={"url": "site", "path": "../out"}), 400, "path_refused")
