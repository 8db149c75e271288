"""edgenode: an open, self-hosted agent cloud for small edge machines."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
