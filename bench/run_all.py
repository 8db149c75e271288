"""Run every benchmark in bench/ (`make bench`); each prints its own table beside its baseline."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Import each bench module and call its ``main()``; report failures at the end."""
    sys.path.insert(0, str(HERE.parent))
    failed: list[str] = []
    only = set(sys.argv[1:])
    argv = sys.argv
    for path in sorted(HERE.glob("*.py")):
        name = path.stem
        if name.startswith("_") or name == "run_all" or (only and name not in only):
            continue
        print(f"\n=== bench/{path.name} ===", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            sys.argv = [str(path)]  # each benchmark parses its own options: none here, so its defaults
            module.main()
        except Exception as exc:  # keep going: one broken benchmark should not hide the others
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
        sys.argv = argv
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
    if failed:
        print("\nfailed benchmarks:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
