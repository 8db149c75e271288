"""Real HTTP servers on loopback that speak the OpenAI chat-completions and Anthropic messages protocols.

They stand in for hosted model APIs, which tests cannot reach. Replies are
deterministic: with tools and no tool result yet, the model calls the first tool
with ``{"city": "Paris"}``; otherwise it answers ``echo: <last user text>``
(plus ``[tool: <result>]`` when a tool result is present). A model named
``broken`` answers 500; ``flaky`` answers 503 on every other request. A streamed reply of
the model ``gated`` stops after its first half until the test sets ``gate``, so a test can
see what arrives while a reply is incomplete; ``finished`` counts streamed replies sent whole.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE_IN, USAGE_OUT = 11, 7


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
            if texts:
                return " ".join(texts)
    return ""


def _tool_result(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        if m.get("role") == "tool":
            return str(m.get("content"))
        if isinstance(m.get("content"), list):
            for b in m["content"]:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    return str(b.get("content"))
    return None


class ModelServer:
    """Both protocols on one loopback port; ``requests`` records what clients sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._flaky = 0
        self.gate = threading.Event()
        self.finished = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                model = body.get("model", "")
                if model == "broken" or (model == "flaky" and server._flip()):
                    status = 500 if model == "broken" else 503
                    self._json(status, {"error": {"type": "server_error", "message": f"{model} model"}})
                    return
                if self.path.endswith("/chat/completions"):
                    server._openai(self, body)
                elif self.path.endswith("/v1/messages"):
                    server._anthropic(self, body)
                else:
                    self._json(404, {"error": {"message": "no such route"}})

            def _json(self, status: int, data: Any) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def sse(self, events: list[tuple[str | None, Any]]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.end_headers()
                for name, data in events:
                    if name == "gate":
                        server.gate.wait(120)  # bounded: a failing test must not hang the server
                        continue
                    chunk = (f"event: {name}\n" if name else "") + "data: " + (
                        data if isinstance(data, str) else json.dumps(data)) + "\n\n"
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
                server.finished += 1
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _flip(self) -> bool:
        self._flaky += 1
        return self._flaky % 2 == 1

    def __enter__(self) -> ModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- OpenAI chat completions ----------------------------------------------

    def _openai(self, h: Any, body: dict[str, Any]) -> None:
        messages, tools, model = body.get("messages", []), body.get("tools") or [], body["model"]
        result = _tool_result(messages)
        call = tools and result is None
        text = "" if call else f"echo: {_last_user(messages)}" + (f" [tool: {result}]" if result else "")
        usage = {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": USAGE_IN + USAGE_OUT}
        name = tools[0]["function"]["name"] if call else None
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call:
                message["tool_calls"] = [{"id": "call_1", "type": "function",
                                          "function": {"name": name, "arguments": '{"city": "Paris"}'}}]
            h._json(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                          "choices": [{"index": 0, "message": message,
                                       "finish_reason": "tool_calls" if call else "stop"}], "usage": usage})
            return
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        events: list[tuple[str | None, Any]] = [(None, {**base, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
        if call:
            events.append((None, {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": name, "arguments": '{"city": '}}]}, "finish_reason": None}]}))
            events.append((None, {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": None}]}))
        else:
            for i, piece in enumerate((text[: len(text) // 2], text[len(text) // 2:])):
                if i == 1 and model == "gated":
                    events.append(("gate", None))
                events.append((None, {**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                           "finish_reason": None}]}))
        events.append((None, {**base, "choices": [{"index": 0, "delta": {},
                                                   "finish_reason": "tool_calls" if call else "stop"}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {**base, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        h.sse(events)

    # -- Anthropic messages -------------------------------------------------------

    def _anthropic(self, h: Any, body: dict[str, Any]) -> None:
        messages, tools, model = body.get("messages", []), body.get("tools") or [], body["model"]
        result = _tool_result(messages)
        call = tools and result is None
        text = "" if call else f"echo: {_last_user(messages)}" + (f" [tool: {result}]" if result else "")
        stop = "tool_use" if call else "end_turn"
        content: list[dict[str, Any]] = ([{"type": "tool_use", "id": "toolu_1", "name": tools[0]["name"],
                                           "input": {"city": "Paris"}}] if call else [{"type": "text", "text": text}])
        if not body.get("stream"):
            h._json(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
                          "stop_reason": stop, "stop_sequence": None,
                          "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}})
            return
        events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}})]
        if call:
            events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": tools[0]["name"], "input": {}}}))
            for part in ('{"city": ', '"Paris"}'):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "input_json_delta", "partial_json": part}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": {"type": "text", "text": ""}}))
            for piece in (text[: len(text) // 2], text[len(text) // 2:]):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": piece}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                            "stop_sequence": None},
                                         "usage": {"output_tokens": USAGE_OUT}}))
        events.append(("message_stop", {"type": "message_stop"}))
        h.sse(events)
