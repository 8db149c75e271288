"""Allow ``python -m edgenode``."""

from __future__ import annotations

from edgenode.cli import main

if __name__ == "__main__":
    main()
