"""The ``scripted:`` provider: deterministic replies for tests and demos, no network.

With ``options={"replies": [...]}`` the n-th reply (n = assistant turns so far) is
taken from the list, each a string or ``{"text", "tool_calls"}``; past the end of
the list, or without one, the model echoes the last user message. The same
messages always get the same reply.
"""

from __future__ import annotations

from typing import Any

from edgenode.errors import ValidationFailed


def chat(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
         options: dict[str, Any]) -> dict[str, Any]:
    """A scripted reply in the gateway's normal form."""
    replies = options.get("replies") or []
    if not isinstance(replies, list) or not all(_is_reply(r) for r in replies):
        raise ValidationFailed("options.replies must be a list of strings or {text, tool_calls: [{name, ...}]}",
                               field="options.replies")
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    if turn < len(replies):
        reply = replies[turn]
        if isinstance(reply, str):
            reply = {"text": reply}
    else:
        last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        reply = {"text": f"{model}: {last}"}
    text = str(reply.get("text") or "")
    calls = [{"id": c.get("id") or f"call_{turn}_{i}", "name": c["name"], "arguments": c.get("arguments") or {}}
             for i, c in enumerate(reply.get("tool_calls") or [])]
    prompt_words = sum(len(str(m.get("content") or "").split()) for m in messages)
    return {"text": text, "tool_calls": calls, "model": f"scripted:{model}",
            "stop_reason": "tool_calls" if calls else "stop",
            "usage": {"input_tokens": prompt_words, "output_tokens": len(text.split())}}


def _is_reply(reply: Any) -> bool:
    if isinstance(reply, str):
        return True
    if not isinstance(reply, dict):
        return False
    calls = reply.get("tool_calls") or []
    return isinstance(calls, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls)
