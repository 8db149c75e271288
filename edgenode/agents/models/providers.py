"""OpenAI (and OpenAI-compatible servers) and Anthropic, through their own client libraries.

Both take the gateway's normal form and return it:

- messages: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``; an assistant
  message may carry ``tool_calls`` ``[{"id", "name", "arguments": {...}}]``; a tool result is
  ``{"role": "tool", "tool_call_id", "content"}``,
- tools: ``[{"name", "description", "parameters": <JSON schema>}]``,
- reply: ``{"text", "tool_calls", "usage": {"input_tokens", "output_tokens"}, "model", "stop_reason"}``.

Replies are streamed when the provider offers it (``options["stream"]``, default on) and
assembled here; retries and timeouts are the client libraries'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai

from edgenode.errors import ModelError

#: Called with each piece of reply text as it streams in.
OnDelta = Callable[[str], None]

#: Options passed through to the provider as they are.
PASSTHROUGH = ("temperature", "top_p", "max_tokens", "stop", "seed")


def _arguments(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


# -- OpenAI chat completions ------------------------------------------------------


def _openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id", ""), "content": str(m.get("content"))})
        elif role == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
                for c in m["tool_calls"]]})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    return out


def openai_chat(client: Any, model: str, messages: list[dict[str, Any]],
                tools: list[dict[str, Any]] | None, options: dict[str, Any],
                on_delta: OnDelta | None = None) -> dict[str, Any]:
    """One chat completion, streamed unless ``options["stream"]`` is false."""
    kwargs: dict[str, Any] = {k: options[k] for k in PASSTHROUGH if k in options}
    if tools:
        kwargs["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("parameters") or {"type": "object", "properties": {}}}} for t in tools]
    try:
        if options.get("stream", True):
            return _openai_stream(client, model, _openai_messages(messages), kwargs, on_delta)
        response = client.chat.completions.create(model=model, messages=_openai_messages(messages), **kwargs)
    except openai.APIError as exc:
        raise ModelError(f"openai-protocol model {model} failed: {exc}", provider_status=getattr(
            exc, "status_code", None)) from exc
    if not response.choices:
        raise ModelError(f"model {model} returned no choices")
    choice = response.choices[0]
    calls = [{"id": c.id, "name": c.function.name, "arguments": _arguments(c.function.arguments)}
             for c in (choice.message.tool_calls or []) if getattr(c, "function", None) is not None]
    usage = response.usage
    return {"text": choice.message.content or "", "tool_calls": calls, "model": response.model or model,
            "stop_reason": choice.finish_reason,
            "usage": {"input_tokens": usage.prompt_tokens if usage else 0,
                      "output_tokens": usage.completion_tokens if usage else 0}}


def _openai_stream(client: Any, model: str, messages: list[dict[str, Any]],
                   kwargs: dict[str, Any], on_delta: OnDelta | None) -> dict[str, Any]:
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage = {"input_tokens": 0, "output_tokens": 0}
    finish: str | None = None
    served = model
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **kwargs)
    for chunk in stream:
        served = chunk.model or served
        if chunk.usage is not None:
            usage = {"input_tokens": chunk.usage.prompt_tokens or 0,
                     "output_tokens": chunk.usage.completion_tokens or 0}
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
                if on_delta is not None:
                    on_delta(delta.content)
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return {"text": "".join(text), "model": served, "stop_reason": finish, "usage": usage,
            "tool_calls": [{"id": c["id"], "name": c["name"], "arguments": _arguments(c["arguments"])}
                           for _, c in sorted(calls.items())]}


# -- Anthropic messages -------------------------------------------------------------


def _anthropic_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            system.append(str(m.get("content") or ""))
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": str(m.get("content"))}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif role == "assistant" and m.get("tool_calls"):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            blocks += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": c.get("arguments") or {}}
                       for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": "assistant" if role == "assistant" else "user", "content": str(m.get("content") or "")})
    return "\n\n".join(system), out


def anthropic_chat(client: Any, model: str, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None, options: dict[str, Any],
                   on_delta: OnDelta | None = None) -> dict[str, Any]:
    """One Messages API call, streamed unless ``options["stream"]`` is false."""
    system, converted = _anthropic_messages(messages)
    kwargs: dict[str, Any] = {k: options[k] for k in ("temperature", "top_p") if k in options}
    if system:
        kwargs["system"] = system
    if "stop" in options:
        kwargs["stop_sequences"] = options["stop"] if isinstance(options["stop"], list) else [options["stop"]]
    if tools:
        kwargs["tools"] = [{"name": t["name"], "description": t.get("description", ""),
                            "input_schema": t.get("parameters") or {"type": "object", "properties": {}}}
                           for t in tools]
    max_tokens = int(options.get("max_tokens") or 1024)
    try:
        if options.get("stream", True):
            with client.messages.stream(model=model, max_tokens=max_tokens, messages=converted,
                                        **kwargs) as stream:
                if on_delta is not None:
                    for piece in stream.text_stream:
                        on_delta(piece)
                message = stream.get_final_message()
        else:
            message = client.messages.create(model=model, max_tokens=max_tokens, messages=converted,
                                             **kwargs)
    except anthropic.APIError as exc:
        raise ModelError(f"anthropic model {model} failed: {exc}", provider_status=getattr(
            exc, "status_code", None)) from exc
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [{"id": b.id, "name": b.name, "arguments": dict(b.input) if isinstance(b.input, dict) else {}}
             for b in message.content if b.type == "tool_use"]
    return {"text": text, "tool_calls": calls, "model": message.model or model, "stop_reason": message.stop_reason,
            "usage": {"input_tokens": message.usage.input_tokens or 0,
                      "output_tokens": message.usage.output_tokens or 0}}
