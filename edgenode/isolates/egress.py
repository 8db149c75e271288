"""Outbound allow-lists of workers: the node's one egress policy (``edgenode.egress``), under its old name."""

from __future__ import annotations

from edgenode.egress import AllowList, HostPattern

__all__ = ["AllowList", "HostPattern"]
