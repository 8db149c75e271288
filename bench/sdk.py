"""The SDK's per-call overhead over raw httpx, and an MCP tool call against its HTTP route, on one node.

Baseline in the same run: the same request sent with a bare ``httpx.Client`` (same
connection reuse, same token). Calls alternate between the two in small rounds so that
drift on a busy machine affects both alike; the table shows p50 and p90 per call.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import quantile  # noqa: E402
from edgenode.client import Client  # noqa: E402
from tests.support import NodeProcess  # noqa: E402

ROUNDS = 40
PER_ROUND = 10
CODE = "def main(input):\n    return input + 1\n"


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _pair(baseline: Callable[[], Any], candidate: Callable[[], Any]) -> tuple[list[float], list[float]]:
    base, cand = [], []
    baseline(), candidate()  # warm both paths (connections, compiled code)
    for _ in range(ROUNDS):
        base += [_timed(baseline) for _ in range(PER_ROUND)]
        cand += [_timed(candidate) for _ in range(PER_ROUND)]
    return base, cand


def _mcp_run_code_samples(url: str, token: str, n: int) -> list[float]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> list[float]:
        headers = {"authorization": f"Bearer {token}"}
        async with (httpx2.AsyncClient(headers=headers, timeout=60) as http,
                    streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            samples = []
            for i in range(n + 1):
                started = time.perf_counter()
                result = await session.call_tool("run_code", {"code": CODE, "input": i})
                assert not result.is_error, result.content
                samples.append((time.perf_counter() - started) * 1000)
            return samples[1:]

    return asyncio.run(main())


def main() -> None:
    """Print the table."""
    with tempfile.TemporaryDirectory() as tmp, NodeProcess(Path(tmp) / "node") as node:
        token = node.admin_token
        raw = httpx.Client(base_url=node.url, headers={"authorization": f"Bearer {token}"}, timeout=60)
        sdk = Client(node.url, token, timeout=60)
        kv = sdk.kv("bench")
        rows = []
        pairs = {
            "GET /v1/whoami": (lambda: raw.get("/v1/whoami").json(), sdk.whoami),
            "PUT /v1/kv (16 B)": (lambda: raw.put("/v1/kv/bench/k", content=b"x" * 16).json(),
                                  lambda: kv.put("k", b"x" * 16)),
            "POST /v1/run": (lambda: raw.post("/v1/run", json={"code": CODE, "input": 1}).json(),
                             lambda: sdk.run(CODE, input=1)),
        }
        for name, (baseline, candidate) in pairs.items():
            base, cand = _pair(baseline, candidate)
            rows.append((name, "raw httpx", quantile(base, 0.5), quantile(base, 0.9)))
            rows.append((name, "edgenode.client", quantile(cand, 0.5), quantile(cand, 0.9)))
            rows.append((name, "  overhead", quantile(cand, 0.5) - quantile(base, 0.5), None))
        mcp = _mcp_run_code_samples(node.url, token, ROUNDS * PER_ROUND // 2)
        rows.append(("run_code via MCP", "official mcp client", quantile(mcp, 0.5), quantile(mcp, 0.9)))
        raw.close()
        sdk.close()
    print(f"{'call':<20} {'client':<22} {'p50 ms':>8} {'p90 ms':>8}")
    for name, who, p50, p90 in rows:
        print(f"{name:<20} {who:<22} {p50:>8.3f} {'' if p90 is None else f'{p90:>8.3f}':>8}")
    print(f"({ROUNDS * PER_ROUND} calls per row, alternating in rounds of {PER_ROUND}; same node, same token)")


if __name__ == "__main__":
    main()
