"""Artifacts: Git repositories for agent output, served over smart HTTP and gossiped between nodes."""

from __future__ import annotations

from edgenode.artifacts.gossip import RefGossip
from edgenode.artifacts.repos import RepoInfo, RepoStore
from edgenode.artifacts.service import Artifacts, GitAccess

__all__ = ["Artifacts", "GitAccess", "RefGossip", "RepoInfo", "RepoStore"]
