#!/usr/bin/env python3
"""Moved: the rolling upgrade is the ``edgenode rollout`` command (edgenode/cli/rollout.py).

It runs wherever edgenode does, the single file included, with the system Python:
``python3 dist/edgenode.pyz rollout PACKAGE HOSTS...``. This script forwards to it from a
checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    from edgenode.cli.rollout import main
except ImportError as exc:  # click or httpx missing: not the project's environment
    sys.exit(f"rollout: {exc}; run `edgenode rollout` or `python3 dist/edgenode.pyz rollout` instead")

if __name__ == "__main__":
    main()
