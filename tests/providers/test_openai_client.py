"""OpenAI-compatible providers (zai, kimi, openrouter, ...) against the local server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from cfn.errors import ProviderRequestError, ProviderUnavailableError
from cfn.providers import ChatRequest, LLMService, Message, StreamEvent, ToolCall, ToolSpec
from tests.providers.conftest import MakeSettings
from tests.support.llm_servers import LLMServer, Reply, openai_error, openai_json, openai_sse

TOOL = ToolSpec(
    "read_file",
    "Read a file",
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)


@pytest.fixture
async def service(served: MakeSettings) -> AsyncIterator[LLMService]:
    svc = LLMService(served(default_provider="zai"))
    try:
        yield svc
    finally:
        await svc.aclose()


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


async def test_complete_text_usage_cost_and_wire_format(
    service: LLMService, llm: LLMServer
) -> None:
    llm.push(openai_json("hello there", usage=(1000, 2000)))
    reply = await service.complete(
        ChatRequest.of("hi", system="be brief", temperature=0.1, max_tokens=50),
        agent_id="coder-1-1",
        task_id="t1",
    )
    assert reply.text == "hello there" and reply.provider == "zai" and reply.model == "glm-4.6"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1000, 2000)
    assert reply.cost_usd == pytest.approx((1000 * 0.60 + 2000 * 2.20) / 1e6)
    assert not reply.offline and [h.outcome for h in reply.hops] == ["ok"]
    sent = llm.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer zai-test-key"
    assert sent.body["model"] == "glm-4.6"
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert sent.body["temperature"] == 0.1 and sent.body["max_tokens"] == 50


async def test_tool_calls_round_trip(service: LLMService, llm: LLMServer) -> None:
    llm.push(openai_json(None, tool_calls=[("call_1", "read_file", '{"path": "a.py"}')]))
    reply = await service.complete(
        ChatRequest.of("read a.py", tools=(TOOL,)), agent_id="coder", task_id="t1"
    )
    assert reply.tool_calls == (ToolCall("call_1", "read_file", '{"path": "a.py"}'),)
    assert reply.finish_reason == "tool_calls"
    assert llm.requests[-1].body["tools"][0]["function"]["name"] == "read_file"
    follow_up = ChatRequest(
        (
            Message("user", "read a.py"),
            Message("assistant", "", tool_calls=reply.tool_calls),
            Message("tool", "print('hi')", tool_call_id="call_1"),
        ),
        tools=(TOOL,),
    )
    await service.complete(follow_up, agent_id="coder", task_id="t1")
    messages = llm.requests[-1].body["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"path": "a.py"}'
    assert messages[2] == {"role": "tool", "content": "print('hi')", "tool_call_id": "call_1"}


async def test_stream_text_tool_call_deltas_and_usage(service: LLMService, llm: LLMServer) -> None:
    llm.push(
        openai_sse(
            ["Hel", "lo"],
            tool_calls=[("call_9", "read_file", '{"path": "src/x.py"}')],
            usage=(40, 12),
        )
    )
    events = await collect(
        service.stream(ChatRequest.of("hi", tools=(TOOL,)), agent_id="coder", task_id="t1")
    )
    assert [e.text for e in events if e.kind == "text"] == ["Hel", "lo"]
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    assert calls == [ToolCall("call_9", "read_file", '{"path": "src/x.py"}')]
    done = events[-1].response
    assert done is not None and done.text == "Hello" and done.tool_calls == tuple(calls)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (40, 12)
    body = llm.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_429_honours_retry_after_then_succeeds(service: LLMService, llm: LLMServer) -> None:
    llm.push(openai_error(429, "slow down", {"Retry-After": "0.3"}), openai_json("after wait"))
    started = time.monotonic()
    reply = await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert time.monotonic() - started >= 0.3
    assert reply.text == "after wait"
    first, second = reply.hops
    assert (first.outcome, first.status_code, first.waited_s) == ("rate_limited", 429, 0.3)
    assert "slow down" in first.detail
    assert second.outcome == "ok" and second.attempt == 2


async def test_long_retry_after_moves_to_the_next_provider_at_once(
    served: MakeSettings, llm: LLMServer
) -> None:
    svc = LLMService(served(default_provider="zai", cfn_retry_after_max=1.0))
    llm.push(openai_error(429, "quota", {"Retry-After": "3600"}), openai_json("from kimi"))
    started = time.monotonic()
    reply = await svc.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    await svc.aclose()
    assert time.monotonic() - started < 1.0
    assert reply.provider == "kimi" and reply.model == "kimi-latest"
    assert [(h.provider, h.outcome) for h in reply.hops] == [
        ("zai", "rate_limited"),
        ("kimi", "ok"),
    ]
    assert llm.requests[-1].headers["authorization"] == "Bearer kimi-test-key"


async def test_5xx_retries_with_backoff_then_falls_back(
    service: LLMService, llm: LLMServer
) -> None:
    llm.push(openai_error(500, "boom"), openai_error(503, "still down"), openai_json("kimi ok"))
    reply = await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert reply.provider == "kimi"
    outcomes = [(h.provider, h.attempt, h.outcome, h.status_code) for h in reply.hops]
    assert outcomes == [
        ("zai", 1, "server_error", 500),
        ("zai", 2, "server_error", 503),
        ("kimi", 1, "ok", None),
    ]
    assert reply.hops[0].waited_s > 0  # backoff before the retry
    assert reply.hops[1].waited_s == 0  # moved on instead


async def test_fallback_skips_providers_without_keys(served: MakeSettings, llm: LLMServer) -> None:
    svc = LLMService(served(default_provider="zai", moonshot_api_key=None))
    llm.push(openai_error(500, "a"), openai_error(500, "b"), openai_json("router ok"))
    reply = await svc.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    await svc.aclose()
    assert [h.outcome for h in reply.hops] == [
        "server_error",
        "server_error",
        "skipped_no_credentials",
        "ok",
    ]
    assert "MOONSHOT_API_KEY" in reply.hops[2].detail
    assert reply.provider == "openrouter" and reply.model == "anthropic/claude-3-5-sonnet"


async def test_timeout_and_dropped_connection_are_retried(
    served: MakeSettings, llm: LLMServer
) -> None:
    svc = LLMService(served(default_provider="zai", cfn_provider_timeout=0.3))
    llm.push(Reply(delay=1.0, body={}), Reply(drop=True), openai_json("third time"))
    svc.settings.cfn_provider_max_retries = 2
    reply = await svc.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    await svc.aclose()
    assert reply.text == "third time"
    assert [h.outcome for h in reply.hops] == ["timeout", "connection_error", "ok"]


async def test_every_provider_failing_lists_every_hop(service: LLMService, llm: LLMServer) -> None:
    llm.default = openai_error(502, "bad gateway")
    with pytest.raises(ProviderUnavailableError) as info:
        await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    text = str(info.value)
    for route in ("zai:glm-4.6", "kimi:kimi-latest", "openrouter:anthropic/claude-3-5-sonnet"):
        assert text.count(route) >= 2  # chain and hops
    assert text.count("server_error 502") == 6


async def test_4xx_is_not_retried(service: LLMService, llm: LLMServer) -> None:
    llm.push(openai_error(400, "messages: field required"))
    with pytest.raises(ProviderRequestError, match="rejected the request \\(400\\)"):
        await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert len(llm.requests) == 1


async def test_401_names_the_variable_not_the_key(service: LLMService, llm: LLMServer) -> None:
    llm.push(openai_error(401, "Invalid API key"))
    with pytest.raises(ProviderRequestError) as info:
        await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert "ZAI_API_KEY" in str(info.value) and "zai-test-key" not in str(info.value)


async def test_stream_429_before_first_event_is_retried(
    service: LLMService, llm: LLMServer
) -> None:
    llm.push(openai_error(429, "wait", {"retry-after-ms": "50"}), openai_sse(["ok!"]))
    events = await collect(service.stream(ChatRequest.of("hi"), agent_id="coder", task_id="t1"))
    done = events[-1].response
    assert done is not None and done.text == "ok!"
    assert [h.outcome for h in done.hops] == ["rate_limited", "ok"]
    assert done.hops[0].waited_s == pytest.approx(0.05)


async def test_stream_dropped_mid_way_is_an_error_after_partial_text(
    service: LLMService, llm: LLMServer
) -> None:
    llm.push(openai_sse(["one ", "two ", "three"], drop_after=3))
    seen: list[str] = []
    with pytest.raises(ProviderUnavailableError, match="dropped the stream"):
        async for event in service.stream(ChatRequest.of("hi"), agent_id="coder", task_id="t1"):
            seen.append(event.text)
    assert seen == ["one ", "two "]
    assert len(llm.requests) == 1  # not silently restarted


async def test_local_server_by_base_url_needs_no_key(
    make_settings: MakeSettings, llm: LLMServer
) -> None:
    svc = LLMService(
        make_settings(ollama_base_url=llm.openai_url, provider_routes=["ollama:llama3:8b"])
    )
    llm.push(openai_json("local", usage=(5, 5)))
    reply = await svc.complete(
        ChatRequest.of("hi"), agent_id="coder", task_id="t1", provider="ollama"
    )
    await svc.aclose()
    assert reply.text == "local" and reply.cost_usd == 0 and not reply.offline
    assert llm.requests[-1].body["model"] == "llama3:8b"


async def test_record_of_every_call_reaches_the_sinks(served: MakeSettings, llm: LLMServer) -> None:
    from cfn.providers import CallRecord, StoreSink

    stored: list[CallRecord] = []

    def record_llm_call(record: CallRecord) -> None:
        stored.append(record)

    svc = LLMService(served(default_provider="zai"), sinks=[StoreSink(record_llm_call)])
    llm.push(openai_error(500, "x"), openai_json("ok", usage=(3, 4)))
    await svc.complete(ChatRequest.of("hi"), agent_id="coder-1-1", task_id="t9")
    await svc.aclose()
    (record,) = stored
    assert (record.task_id, record.agent_id, record.provider, record.status) == (
        "t9",
        "coder-1-1",
        "zai",
        "ok",
    )
    assert (record.input_tokens, record.output_tokens) == (3, 4)
    assert [h.outcome for h in record.hops] == ["server_error", "ok"]
    assert json.loads(record.to_json())["hops"][0]["status_code"] == 500
