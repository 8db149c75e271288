"""The model gateway against loopback servers speaking the OpenAI and Anthropic protocols."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.agents.helpers import FAST, deploy, error_code, journal, start, wait_status
from tests.agents.model_servers import USAGE_IN, USAGE_OUT, ModelServer
from tests.support import NodeProcess

WEATHER = [{"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def models() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def gw_node(tmp_path_factory: pytest.TempPathFactory, models: ModelServer) -> Iterator[NodeProcess]:
    env = {**FAST,
           "EDGENODE_AGENTS_OPENAI_BASE_URL": models.url + "/v1",
           "EDGENODE_AGENTS_OPENAI_API_KEY": "sk-node",
           "EDGENODE_AGENTS_ANTHROPIC_BASE_URL": models.url,
           "EDGENODE_AGENTS_ANTHROPIC_API_KEY": "ak-node",
           "EDGENODE_AGENTS_MODEL_ENDPOINTS": f"local={models.url}/compat/v1",
           "EDGENODE_AGENTS_MODEL_RETRIES": "1",
           "EDGENODE_AGENTS_MODEL_TIMEOUT_S": "10"}
    proc = NodeProcess(tmp_path_factory.mktemp("gw"), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture
def gw(gw_node: NodeProcess) -> Iterator[httpx.Client]:
    with gw_node.client() as c:
        yield c


def chat(client: httpx.Client, model: str, messages: list, **extra: object) -> httpx.Response:
    return client.post("/v1/agents/models/chat", json={"model": model, "messages": messages, **extra})


@pytest.mark.parametrize("stream", [True, False])
def test_openai_text_and_tool_calls(gw: httpx.Client, models: ModelServer, stream: bool) -> None:
    r = chat(gw, "openai:gpt-test", HELLO, options={"stream": stream})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "echo: hello there"
    assert r.json()["usage"] == {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}
    sent = models.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["authorization"] == "Bearer sk-node"
    assert bool(sent["body"].get("stream")) is stream
    r = chat(gw, "openai:gpt-test", [{"role": "user", "content": "weather?"}], tools=WEATHER,
             options={"stream": stream})
    reply = r.json()
    assert reply["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert models.requests[-1]["body"]["tools"][0]["function"]["name"] == "get_weather"
    # The tool's result goes back as a tool message and the model answers with it.
    follow = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": "", "tool_calls": reply["tool_calls"]},
              {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = chat(gw, "openai:gpt-test", follow, tools=WEATHER, options={"stream": stream})
    assert r.json()["text"] == "echo: weather? [tool: sunny]"
    sent_messages = models.requests[-1]["body"]["messages"]
    assert sent_messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent_messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


@pytest.mark.parametrize("stream", [True, False])
def test_anthropic_text_and_tool_use(gw: httpx.Client, models: ModelServer, stream: bool) -> None:
    r = chat(gw, "anthropic:claude-test", HELLO, options={"stream": stream})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "echo: hello there"
    assert r.json()["usage"] == {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}
    sent = models.requests[-1]
    assert sent["path"] == "/v1/messages"
    headers = sent["headers"]
    assert headers.get("x-api-key") == "ak-node" or headers.get("authorization") == "Bearer ak-node"
    assert sent["body"]["system"] == "be brief" and bool(sent["body"].get("stream")) is stream
    r = chat(gw, "anthropic:claude-test", [{"role": "user", "content": "weather?"}], tools=WEATHER,
             options={"stream": stream})
    reply = r.json()
    assert reply["tool_calls"] == [{"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert reply["stop_reason"] == "tool_use"
    follow = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": "", "tool_calls": reply["tool_calls"]},
              {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
    r = chat(gw, "anthropic:claude-test", follow, tools=WEATHER, options={"stream": stream})
    assert r.json()["text"] == "echo: weather? [tool: sunny]"
    blocks = models.requests[-1]["body"]["messages"]
    assert blocks[1]["content"][0]["type"] == "tool_use"
    assert blocks[2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}


def test_openai_compatible_endpoint_and_tenant_secret(gw: httpx.Client, gw_node: NodeProcess,
                                                      models: ModelServer) -> None:
    r = chat(gw, "local:llama-3", HELLO)
    assert r.status_code == 200 and r.json()["text"] == "echo: hello there"
    assert models.requests[-1]["path"] == "/compat/v1/chat/completions"
    token = gw.post("/v1/tokens", json={"tenant": "acme"}).json()["token"]
    with gw_node.client(token) as acme:
        assert acme.put("/v1/agents/secrets/OPENAI_API_KEY", json={"value": "sk-acme"}).status_code == 204
        assert chat(acme, "openai:gpt-test", HELLO).status_code == 200
        assert models.requests[-1]["headers"]["authorization"] == "Bearer sk-acme"
        usage = acme.get("/v1/agents/usage").json()["usage"]
    # Metered per tenant: acme sees only its own call.
    assert usage == [{"provider": "openai", "model": "gpt-test", "calls": 1, "input_tokens": USAGE_IN,
                      "output_tokens": USAGE_OUT}]


def test_provider_failures_and_retries(gw: httpx.Client, models: ModelServer) -> None:
    r = chat(gw, "openai:broken", HELLO)
    assert r.status_code == 502 and error_code(r) == "model_error"
    before = len(models.requests)
    r = chat(gw, "openai:flaky", HELLO, options={"stream": False})
    assert r.status_code == 200 and r.json()["text"] == "echo: hello there"
    assert len(models.requests) - before == 2  # one 503, one retry
    r = chat(gw, "anthropic:broken", HELLO)
    assert r.status_code == 502 and error_code(r) == "model_error"
    bad = chat(gw, "openai:gpt-test", [{"role": "wizard", "content": "x"}])
    assert bad.status_code == 400 and error_code(bad) == "validation_failed"
    assert gw.get("/healthz").status_code == 200


def test_usage_is_metered(gw: httpx.Client) -> None:
    def calls() -> int:
        rows = gw.get("/v1/agents/usage").json()["usage"]
        return sum(r["calls"] for r in rows if r["provider"] == "anthropic" and r["model"] == "claude-meter")
    before = calls()
    chat(gw, "anthropic:claude-meter", HELLO)
    chat(gw, "anthropic:claude-meter", HELLO)
    assert calls() == before + 2


def test_agent_model_calls_are_journaled_and_not_repeated(gw: httpx.Client, models: ModelServer) -> None:
    deploy(gw, "weather", """
        TOOLS = [{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}]

        def run(ctx, input):
            model = ctx.model(input)
            messages = [{"role": "user", "content": "weather in Paris?"}]
            first = model.chat(messages, tools=TOOLS)
            call = first.tool_calls[0]
            result = ctx.step(call["name"], lambda: "sunny in " + call["arguments"]["city"])
            messages += [first.message(), {"role": "tool", "tool_call_id": call["id"], "content": result}]
            ctx.sleep(0.2)  # forces a replay: the model calls above are answered from the journal
            final = model.chat(messages, tools=TOOLS)
            return final.text
    """)
    for spec in ("openai:gpt-agent", "anthropic:claude-agent"):
        before = len(models.requests)
        run = start(gw, "weather", spec)
        done = wait_status(gw, run["id"], "completed", "failed")
        assert done["output"] == "echo: weather in Paris? [tool: sunny in Paris]", done
        assert len(models.requests) - before == 2
        kinds = [(e["kind"], e["name"]) for e in journal(gw, run["id"])]
        assert kinds == [("model.chat", spec), ("step", "get_weather"), ("sleep", "sleep"), ("model.chat", spec)]


def test_scripted_provider_is_deterministic(gw: httpx.Client) -> None:
    script = {"replies": ["first", {"text": "", "tool_calls": [{"name": "lookup", "arguments": {"q": 1}}]}]}
    one = chat(gw, "scripted:demo", [{"role": "user", "content": "hi"}], options=script).json()
    assert one["text"] == "first" and one["tool_calls"] == []
    two = chat(gw, "scripted:demo", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "first"}],
               options=script).json()
    assert two["tool_calls"] == [{"id": "call_1_0", "name": "lookup", "arguments": {"q": 1}}]
    echo = chat(gw, "scripted:demo", [{"role": "user", "content": "ping"}]).json()
    assert echo["text"] == "demo: ping"
    assert chat(gw, "scripted:demo", [{"role": "user", "content": "ping"}]).json() == echo
