"""The model gateway: ``provider:model`` strings to chat replies, with usage metered per tenant.

Providers: ``openai``, ``anthropic``, ``scripted`` (deterministic, for tests and demos),
and any OpenAI-compatible server configured as ``agents.model_endpoints = ["NAME=URL"]``
(vLLM, llama.cpp, Ollama), called as ``NAME:model``. Keys come from the tenant's
secrets (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``NAME_API_KEY``) or the node's
config, never from agent code. Swapping the model is one string.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgenode.agents.models import scripted
from edgenode.agents.store import record_usage
from edgenode.errors import BadModel, ValidationFailed

if TYPE_CHECKING:
    from edgenode.agents.engine import Agents

SPEC = re.compile(r"^([a-z][a-z0-9_-]{0,40}):(\S{1,200})\Z")
BUILTIN = ("openai", "anthropic", "scripted")


def parse_spec(spec: Any) -> tuple[str, str]:
    """``provider:model`` split in two, else BadModel."""
    if not isinstance(spec, str):
        raise BadModel("a model is a 'provider:model' string", field="model")
    match = SPEC.match(spec)
    if match is None:
        raise BadModel(f"bad model string {spec!r}: expected 'provider:model', e.g. 'openai:gpt-4o'", field="model")
    return match.group(1), match.group(2)


class ModelGateway:
    """Resolves model strings to clients and meters every call."""

    def __init__(self, engine: Agents) -> None:
        self.engine = engine
        self.settings = engine.settings
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def endpoints(self) -> dict[str, str]:
        """Configured OpenAI-compatible servers, by name."""
        out: dict[str, str] = {}
        for item in self.settings.model_endpoints:
            name, sep, url = item.partition("=")
            if sep and name.strip() and url.strip():
                out[name.strip().lower()] = url.strip()
        return out

    def providers(self) -> list[str]:
        """Every provider name a model string may use here."""
        return [*BUILTIN, *sorted(self.endpoints())]

    def _secret(self, tenant: str, name: str) -> str | None:
        row = self.engine.db.read_sync(lambda c: c.execute(
            "SELECT value FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)).fetchone())
        return None if row is None else str(row["value"])

    def _client(self, kind: str, base_url: str, key: str) -> Any:
        cache_key = (kind, base_url, key)
        with self._lock:
            client = self._clients.get(cache_key)
            if client is None:
                common: dict[str, Any] = {"api_key": key, "timeout": self.settings.model_timeout_s,
                                          "max_retries": self.settings.model_retries}
                if base_url:
                    common["base_url"] = base_url
                # The client libraries take a second to import; only nodes that call models pay for it.
                if kind == "openai":
                    import openai

                    client = openai.OpenAI(**common)
                else:
                    import anthropic

                    client = anthropic.Anthropic(**common)
                self._clients[cache_key] = client
            return client

    def chat(self, tenant: str, spec: str, messages: Any, *, tools: Any = None,
             options: dict[str, Any] | None = None, on_delta: Callable[[str], None] | None = None) -> dict[str, Any]:
        """One chat turn; the reply in normal form (see ``providers``). Blocking.

        ``on_delta`` gets each piece of the reply's text as the provider streams it.
        """
        provider, model = parse_spec(spec)
        options = dict(options or {})
        _check_messages(messages)
        if tools is not None and (not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)):
            raise ValidationFailed("tools must be a list of {name, description, parameters}", field="tools")
        endpoints = self.endpoints()
        if provider != "scripted":
            from edgenode.agents.models import providers
        if provider == "scripted":
            reply = scripted.chat(model, messages, tools, options)
            if on_delta is not None and reply["text"]:
                on_delta(reply["text"])
        elif provider == "openai":
            key = self._secret(tenant, "OPENAI_API_KEY") or self.settings.openai_api_key
            if not key:
                raise BadModel("no key for openai: set the tenant secret OPENAI_API_KEY or agents.openai_api_key",
                               field="model")
            client = self._client("openai", self.settings.openai_base_url, key)
            reply = providers.openai_chat(client, model, messages, tools, options, on_delta)
        elif provider == "anthropic":
            key = self._secret(tenant, "ANTHROPIC_API_KEY") or self.settings.anthropic_api_key
            if not key:
                raise BadModel("no key for anthropic: set the tenant secret ANTHROPIC_API_KEY or "
                               "agents.anthropic_api_key", field="model")
            client = self._client("anthropic", self.settings.anthropic_base_url, key)
            reply = providers.anthropic_chat(client, model, messages, tools, options, on_delta)
        elif provider in endpoints:
            key = self._secret(tenant, f"{provider.upper().replace('-', '_')}_API_KEY") or "none"
            client = self._client("openai", endpoints[provider], key)
            reply = providers.openai_chat(client, model, messages, tools, options, on_delta)
        else:
            raise BadModel(f"unknown model provider {provider!r}; known here: {', '.join(self.providers())}",
                           field="model")
        usage = reply.get("usage") or {}
        self.engine.db.write_sync(lambda c: record_usage(c, tenant, provider, model, usage))
        return reply


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("messages must be a non-empty list of {role, content}", field="messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValidationFailed("each message needs a role: system, user, assistant or tool", field="messages")
