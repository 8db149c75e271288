"""``git clone`` into a sandbox in one call: the node's own repositories with a short-lived token, others
through the sandbox's egress policy.

The clone runs inside the sandbox (its git, its network policy, its disk quota). A
repository of this node (``name``, ``tenant/name``, ``/git/...`` or the node's own URL)
is fetched from the node alias, which the sandbox reaches only when its policy grants
``node``; the node mints a read token for that repository alone, valid for minutes, and
hands it to git in the environment (never in the command line).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgenode.errors import ValidationFailed
from edgenode.sandboxes.egress import NODE_ALIAS
from edgenode.sandboxes.paths import check_path

_OWN = re.compile(r"^(?:/git/)?(?:(?P<tenant>[a-z0-9][a-z0-9_.-]{0,62})/)?(?P<name>[a-z0-9][a-z0-9._-]{0,99}?)"
                  r"(?:\.git)?/?\Z")
_BRANCH = re.compile(r"^(?!-)(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![/.])\Z")
#: How long the token of a checkout of the node's own repository lives, in seconds.
TOKEN_TTL_S = 300


@dataclass(frozen=True)
class Checkout:
    """A validated checkout request: an outside URL, or a repository of this node."""

    url: str | None
    tenant: str | None
    repo: str | None
    branch: str | None
    depth: int | None
    path: str

    def argv(self, url: str) -> list[str]:
        """The git command line (the URL after ``--``: never an option)."""
        argv = ["git", "-c", "advice.detachedHead=false", "-c", "credential.helper=", "clone", "--quiet"]
        if self.depth is not None:
            argv += ["--depth", str(self.depth)]
        if self.branch is not None:
            argv += ["--branch", self.branch, "--single-branch"]
        return [*argv, "--", url, self.path]


def parse_checkout(data: dict[str, Any], *, node_url: str | None) -> Checkout:
    """A Checkout from ``{"url", "branch"?, "depth"?, "path"?}``; 400 for anything git could misread."""
    unknown = set(data) - {"url", "branch", "depth", "path"}
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    url = data.get("url")
    if not isinstance(url, str) or not url or "\x00" in url:
        raise ValidationFailed("field 'url' must be a repository URL or this node's repository name", field="url")
    branch = data.get("branch")
    if branch is not None and (not isinstance(branch, str) or not _BRANCH.match(branch)):
        raise ValidationFailed("field 'branch' must be a branch or tag name", field="branch")
    depth = data.get("depth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 1_000_000):
        raise ValidationFailed("field 'depth' must be a whole number of commits, at least 1", field="depth")
    tenant = repo = None
    outside: str | None = None
    parts = urlsplit(url)
    own = node_url is not None and url.startswith(node_url.rstrip("/") + "/git/")
    if own:
        url = url[len(node_url.rstrip("/")):]  # type: ignore[union-attr]
    if parts.scheme in ("http", "https") and not own:
        if not parts.hostname or parts.username or parts.password:
            raise ValidationFailed("field 'url' must name a host, without credentials", field="url")
        outside = url
    elif parts.scheme and not own:
        # ext::, file://, ssh and the rest: git would run programs or read the node's disk.
        raise ValidationFailed(f"field 'url': only http(s) URLs or this node's repositories, not {parts.scheme}:",
                               field="url")
    else:
        match = _OWN.match(url)
        if match is None:
            raise ValidationFailed("field 'url' is not a repository of this node ([tenant/]name)", field="url")
        tenant, repo = match.group("tenant"), match.group("name")
    raw_path = data.get("path")
    if raw_path is None:
        tail = (repo or urlsplit(outside or "").path.rstrip("/").rsplit("/", 1)[-1]).removesuffix(".git")
        raw_path = tail or "checkout"
    if not isinstance(raw_path, str):
        raise ValidationFailed("field 'path' must be a path in the workspace", field="path")
    parts_of_path = check_path(raw_path)
    if not parts_of_path or parts_of_path[0].startswith("-"):
        raise ValidationFailed("field 'path' must be a directory in the workspace", field="path")
    return Checkout(outside, tenant, repo, branch, depth, "/workspace/" + "/".join(parts_of_path))


def node_clone(tenant: str, repo: str, token: str) -> tuple[str, dict[str, str]]:
    """The URL and environment for cloning the node's own ``tenant/repo`` from inside a sandbox."""
    basic = base64.b64encode(f"x:{token}".encode()).decode()
    env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
           "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}", "GIT_TERMINAL_PROMPT": "0"}
    return f"http://{NODE_ALIAS}/git/{tenant}/{repo}.git", env


__all__ = ["TOKEN_TTL_S", "Checkout", "node_clone", "parse_checkout"]
