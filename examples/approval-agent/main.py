"""An agent that drafts a release note with a model, waits for a human, then publishes it.

Input: {"changes": ["..."], "model": "scripted:writer", "repo": "optional artifacts repo"}.
With the deterministic ``scripted:`` provider it runs anywhere; swap the model string
for ``openai:gpt-4o-mini`` or ``anthropic:claude-...`` once the node has a key.
"""

from edgenode_guest.agent import HostError


def script(changes):
    """The scripted model's replies: first a tool call, then the notes."""
    return {"replies": [{"text": "", "tool_calls": [{"name": "count_changes", "arguments": {}}]},
                        f"Release notes: {len(changes)} changes, all small and safe."]}


TOOLS = [{"name": "count_changes", "description": "How many changes this release has",
          "parameters": {"type": "object", "properties": {}}}]


def run(ctx, input):
    changes = input.get("changes") or []
    model = ctx.model(input.get("model") or "scripted:writer")
    options = script(changes) if model.spec.startswith("scripted:") else {}
    messages = [
        {"role": "system", "content": "You write one-paragraph release notes."},
        {"role": "user", "content": "Write release notes for: " + "; ".join(changes)},
    ]
    reply = model.chat(messages, tools=TOOLS, **options)
    # The model may ask for tools; each tool result is a journaled step, so a crash never redoes it.
    while reply.tool_calls:
        messages.append(reply.message())
        for call in reply.tool_calls:
            result = ctx.step(call["name"], lambda: str(len(changes)))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        reply = model.chat(messages, tools=TOOLS, **options)
    draft = reply.text

    # The run now waits (for days if need be) holding nothing but a row; restarts do not matter.
    decision = ctx.approval("Publish these release notes?", {"draft": draft})
    if not decision.approved:
        ctx.set_state({"last": "rejected", "comment": decision.comment})
        return {"published": False, "comment": decision.comment}

    published = {"draft": draft, "approved_by": decision.by, "at": ctx.now()}
    if input.get("repo"):
        try:
            published["commit"] = ctx.commit(input["repo"], "main", "Release notes", {"RELEASE.md": draft + "\n"})
        except HostError as exc:  # no artifacts capability, or no such repo: fall back to state
            published["commit_error"] = exc.code
    ctx.set_state({"last": "published", **published})
    return {"published": True, **published}
