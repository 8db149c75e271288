"""Every name validator refuses a trailing newline (``$`` would let it through) and git's aliases of .git."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from edgenode.agents.engine import validate_name as agent_name
from edgenode.agents.engine import validate_run_id
from edgenode.agents.models import parse_spec
from edgenode.artifacts.history import validate_path
from edgenode.artifacts.repos import validate_branch, validate_repo_name
from edgenode.artifacts.tokens import looks_like_repo_token
from edgenode.auth.tokens import validate_tenant
from edgenode.errors import EdgenodeError
from edgenode.isolates.registry import validate_name as worker_name
from edgenode.state.names import validate_namespace

VALIDATORS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("tenant", validate_tenant, "alice"),
    ("namespace", validate_namespace, "notes"),
    ("worker", worker_name, "hello"),
    ("agent", agent_name, "helper"),
    ("run id", validate_run_id, "run-1"),
    ("repo", validate_repo_name, "site"),
    ("branch", validate_branch, "main"),
    ("model", parse_spec, "openai:gpt-4o"),
]


@pytest.mark.parametrize(("what", "check", "good"), VALIDATORS, ids=[v[0] for v in VALIDATORS])
def test_a_trailing_newline_is_refused(what: str, check: Callable[[Any], Any], good: str) -> None:
    check(good)
    for bad in (good + "\n", good + "\r\n", "\n" + good):
        with pytest.raises(EdgenodeError):
            check(bad)


def test_repo_tokens_with_a_newline_do_not_look_like_tokens() -> None:
    token = "edr_0123456789abcdef_" + "a" * 30
    assert looks_like_repo_token(token)
    assert not looks_like_repo_token(token + "\n")


@pytest.mark.parametrize("path", [".git/config", ".GIT/config", ".git./config", ".git /x", ".git. . /x", "Git~1/x",
                                  "a/GIT~1", ".g\u200cit/hooks/x", ".git\ufeff/x", ".git::$INDEX_ALLOCATION/x"])
def test_paths_naming_git_on_some_file_system_are_refused(path: str) -> None:
    with pytest.raises(EdgenodeError):
        validate_path(path)


@pytest.mark.parametrize("path", [".gitignore", ".github/workflows/ci.yml", "src/git~2", "docs/.git-notes"])
def test_paths_near_git_are_fine(path: str) -> None:
    assert validate_path(path) == path
