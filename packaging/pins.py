"""Print the pinned runtime dependency closure of edgenode, as installed in this environment.

Used by build-zipapp.sh so the single-file build carries exactly the versions the
tests ran against, and by `make constraints` to refresh packaging/constraints.txt.
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement


def closure(root: str = "edgenode", extras: tuple[str, ...] = ()) -> dict[str, str]:
    """Map of canonical distribution name to installed version for ``root``'s dependencies."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None:
                ok = any(req.marker.evaluate({**default_environment(), "extra": e}) for e in wanted or ("",))
                if not ok:
                    continue
            key = re.sub(r"[-_.]+", "-", req.name).lower()
            if key in seen or key in {"pip", "setuptools", "wheel"}:
                continue
            try:
                seen[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency not installed here
            todo.append((req.name, tuple(req.extras)))
    return dict(sorted(seen.items()))


def main() -> None:
    """Print ``name==version`` lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extra", action="append", default=[], help="Include this extra of edgenode too.")
    args = parser.parse_args()
    for name, version in closure(extras=tuple(args.extra)).items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
