"""Helpers for SDK and MCP tests: a node with a fast agent scheduler, tenant tokens, test agents."""

from __future__ import annotations

from tests.support import NodeProcess

#: Agents wake promptly after an approval (the default runner: WebAssembly isolates).
FAST_AGENTS = {"EDGENODE_AGENTS_SCHEDULER_INTERVAL_S": "0.05"}

#: An agent that asks for an approval and reports the decision.
APPROVAL_AGENT = (
    "def run(ctx, input):\n"
    "    decision = ctx.approval('publish?', {'draft': input})\n"
    "    return {'approved': decision.approved, 'comment': decision.comment, 'draft': input}\n"
)


def tenant_token(node: NodeProcess, tenant: str) -> str:
    """A fresh bearer token of ``tenant`` (created with the admin token)."""
    with node.client() as admin:
        r = admin.post("/v1/tokens", json={"tenant": tenant, "name": "sdk-test"})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token
