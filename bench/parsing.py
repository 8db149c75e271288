"""Parsing benchmark: the request parser and response encoder against the standard json module.

Each body is parsed by ``json.loads`` (the baseline, which checks nothing) and by
``edgenode.api.parsing.parse_json`` (depth, numbers, surrogates), interleaved in rounds
so both see the same load; likewise ``json.dumps`` against ``dumps``.

Run: ``python -m bench.parsing [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from edgenode.api.parsing import dumps, parse_json


def bodies() -> dict[str, bytes]:
    """Bodies shaped like the API's: small objects, a deploy with big files, many small arrays."""
    return {
        "token request (60 B)": json.dumps({"tenant": "acme", "name": "ci", "ttl_s": 3600}).encode(),
        "deploy, 1 MB of files": json.dumps({"files": {f"m{i}.py": "x = 1\n" * 17_000 for i in range(10)}}).encode(),
        "sql batch, 2000 rows": json.dumps({"batch": [{"sql": "INSERT INTO t VALUES (?, ?)", "params": [i, "v"]}
                                                      for i in range(2000)]}).encode(),
        "event, 4 MB of pairs": json.dumps({"payload": [[i, "s"] for i in range(300_000)]}).encode(),
        "text with \\u escapes": json.dumps({"text": "caf\u00e9 \U0001f600 " * 20_000}).encode(),
    }


def once(fn: Callable[[Any], Any], arg: Any) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> None:
    """Print one row per body: baseline and parser medians (ms), and their ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv if argv is not None else [])
    print(f"{'body':<26} {'bytes':>9} {'json.loads ms':>14} {'parse_json ms':>14} {'x':>6} "
          f"{'json.dumps ms':>14} {'dumps ms':>10} {'x':>6}")
    for name, raw in bodies().items():
        value = json.loads(raw)
        samples: dict[str, list[float]] = {"loads": [], "parse": [], "dumps": [], "ours": []}
        for _ in range(args.rounds):  # interleaved: each pair runs under the same conditions
            samples["loads"].append(once(json.loads, raw))
            samples["parse"].append(once(parse_json, raw))
            samples["dumps"].append(once(_stdlib_dumps, value))
            samples["ours"].append(once(dumps, value))
        m = {k: statistics.median(v) * 1000 for k, v in samples.items()}
        print(f"{name:<26} {len(raw):>9} {m['loads']:>14.3f} {m['parse']:>14.3f} {m['parse'] / m['loads']:>6.2f} "
              f"{m['dumps']:>14.3f} {m['ours']:>10.3f} {m['ours'] / m['dumps']:>6.2f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
