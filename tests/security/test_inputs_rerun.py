"""Inputs an outside review sent to get a 500: each is a clear 400 now."""

from __future__ import annotations

import pytest

from edgenode.config import Config, describe
from edgenode.errors import ValidationFailed
from edgenode.isolates.wasi import parse_request


@pytest.mark.parametrize("files", [
    {"a": "eA==", "a/b": "eQ=="},  # a file that would be a directory too, either order
    {"a/b": "eQ==", "a": "eA=="},
    {"x/a": "eA==", "x/a/b/c": "eQ=="},
    {"a": "eA==", "a/": "eQ=="},  # two names of one file
    {"a": "eA==", "./a": "eQ=="},
])
def test_wasi_files_that_collide_are_refused(files: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_request({"files": files}, max_bytes=1 << 20)
    assert caught.value.status == 400 and caught.value.details["field"] == "files"


def test_wasi_files_side_by_side_are_fine() -> None:
    _, _, _, files = parse_request({"files": {"a/b": "eA==", "a/c": "eQ==", "ab": "eg=="}}, max_bytes=1 << 20)
    assert sorted(files) == ["a/b", "a/c", "ab"]


_SIGNED = {"cluster.clock_offset_ms"}
_NUMBERS = [(dotted, env) for dotted, env, default, _ in describe()
            if isinstance(default, (int, float)) and not isinstance(default, bool) and dotted not in _SIGNED]


@pytest.mark.parametrize(("dotted", "env"), _NUMBERS, ids=[n[0] for n in _NUMBERS])
def test_no_numeric_setting_takes_a_negative_value(dotted: str, env: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        Config.load(env={env: "-1"}, overrides={"data_dir": "/nonexistent"})
    assert dotted.rsplit(".", 1)[-1] in caught.value.message


@pytest.mark.parametrize("env", ["EDGENODE_SANDBOXES_REAPER_INTERVAL_S", "EDGENODE_AGENTS_SCHEDULER_INTERVAL_S",
                                 "EDGENODE_AGENTS_PRUNE_INTERVAL_S", "EDGENODE_ARTIFACTS_ANTI_ENTROPY_INTERVAL_S",
                                 "EDGENODE_CLUSTER_SYNC_BATCH_ROWS", "EDGENODE_STATE_MAX_OPEN_NAMESPACES"])
def test_settings_that_would_spin_or_hang_at_zero_refuse_it(env: str) -> None:
    with pytest.raises(ValidationFailed):
        Config.load(env={env: "0"}, overrides={"data_dir": "/nonexistent"})


def test_a_signed_setting_takes_a_negative_value() -> None:
    assert Config.load(env={"EDGENODE_CLUSTER_CLOCK_OFFSET_MS": "-5"}).cluster.clock_offset_ms == -5
