"""Inputs an outside review sent to get a 500: each is a clear 400 now."""

from __future__ import annotations

import pytest

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
