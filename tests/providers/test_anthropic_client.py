"""Anthropic Messages providers (anthropic, max, z.ai's Anthropic endpoint) on the local server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from cfn.errors import ProviderUnavailableError
from cfn.providers import ChatRequest, LLMService, Message, StreamEvent, ToolCall, ToolSpec
from tests.providers.conftest import MakeSettings
from tests.support.llm_servers import LLMServer, anthropic_error, anthropic_json, anthropic_sse

TOOL = ToolSpec(
    "run", "Run a command", {"type": "object", "properties": {"cmd": {"type": "string"}}}
)


@pytest.fixture
async def service(served: MakeSettings) -> AsyncIterator[LLMService]:
    svc = LLMService(served(default_provider="anthropic"))
    try:
        yield svc
    finally:
        await svc.aclose()


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


async def test_complete_wire_format_and_usage(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_json("bonjour", usage=(2000, 1000)))
    reply = await service.complete(
        ChatRequest.of("hi", system="you are terse"), agent_id="coder", task_id="t1"
    )
    assert reply.text == "bonjour" and reply.finish_reason == "end_turn"
    assert reply.cost_usd == pytest.approx((2000 * 3 + 1000 * 15) / 1e6)
    sent = llm.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == "Bearer anthropic-test-key"
    assert "anthropic-version" in sent.headers
    assert sent.body["model"] == "claude-3-5-sonnet-20241022"
    assert sent.body["system"] == "you are terse"
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.body["max_tokens"] == 8192  # from the coder profile


async def test_tool_use_and_tool_results(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_json("", tool_uses=[("toolu_1", "run", {"cmd": "ls"})]))
    reply = await service.complete(
        ChatRequest.of("list", tools=(TOOL,)), agent_id="coder", task_id="t1"
    )
    assert reply.tool_calls == (ToolCall("toolu_1", "run", '{"cmd": "ls"}'),)
    assert llm.requests[-1].body["tools"][0]["input_schema"]["properties"]["cmd"]
    await service.complete(
        ChatRequest(
            (
                Message("user", "list"),
                Message("assistant", "let me look", tool_calls=reply.tool_calls),
                Message("tool", "a.py", tool_call_id="toolu_1"),
            )
        ),
        agent_id="coder",
        task_id="t1",
    )
    messages = llm.requests[-1].body["messages"]
    assert messages[1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "run",
        "input": {"cmd": "ls"},
    }
    assert messages[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.py"}],
    }


async def test_stream_events_text_tool_use_and_usage(service: LLMService, llm: LLMServer) -> None:
    llm.push(
        anthropic_sse(
            ["Bon", "jour"], tool_uses=[("toolu_2", "run", '{"cmd": "pwd"}')], usage=(33, 21)
        )
    )
    events = await collect(
        service.stream(ChatRequest.of("hi", tools=(TOOL,)), agent_id="coder", task_id="t1")
    )
    assert "".join(e.text for e in events if e.kind == "text") == "Bonjour"
    assert [e.tool_call for e in events if e.kind == "tool_call"] == [
        ToolCall("toolu_2", "run", '{"cmd": "pwd"}')
    ]
    done = events[-1].response
    assert done is not None and done.finish_reason == "tool_use"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (33, 21)
    assert llm.requests[-1].body["stream"] is True


async def test_max_route_uses_its_own_key_and_bare_model(
    served: MakeSettings, llm: LLMServer
) -> None:
    svc = LLMService(served(default_provider="max", max_api_key="max-test-key"))
    llm.push(anthropic_json("opus", usage=(1000, 0)))
    reply = await svc.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    await svc.aclose()
    assert reply.model == "anthropic/claude-3-opus-20240229"
    assert reply.cost_usd == pytest.approx(15 * 1000 / 1e6)
    assert llm.requests[-1].body["model"] == "claude-3-opus-20240229"
    assert llm.requests[-1].headers["authorization"] == "Bearer max-test-key"


async def test_zai_anthropic_compatible_endpoint(served: MakeSettings, llm: LLMServer) -> None:
    svc = LLMService(served(default_provider="zai", zai_api_style="anthropic"))
    llm.push(anthropic_json("glm via messages"))
    reply = await svc.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    await svc.aclose()
    assert reply.text == "glm via messages"
    assert llm.requests[-1].path == "/v1/messages"
    assert llm.requests[-1].headers["authorization"] == "Bearer zai-test-key"


async def test_overloaded_529_is_retried(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_error(529, "Overloaded"), anthropic_json("fine now"))
    reply = await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert [(h.outcome, h.status_code) for h in reply.hops] == [
        ("server_error", 529),
        ("ok", None),
    ]


async def test_429_retry_after_on_the_anthropic_client(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_error(429, "rate limited", {"retry-after": "0.1"}), anthropic_json("ok"))
    reply = await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert reply.hops[0].outcome == "rate_limited" and reply.hops[0].waited_s == 0.1


async def test_error_event_mid_stream(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_sse(["a", "b", "c"], error_after=5))
    seen: list[str] = []
    with pytest.raises(ProviderUnavailableError, match="dropped the stream"):
        async for event in service.stream(ChatRequest.of("hi"), agent_id="coder", task_id="t1"):
            seen.append(event.text)
    assert seen == ["a", "b"]


async def test_dropped_connection_mid_stream(service: LLMService, llm: LLMServer) -> None:
    llm.push(anthropic_sse(["x", "y", "z"], drop_after=4))
    with pytest.raises(ProviderUnavailableError, match=r"connection_error|dropped"):
        await collect(service.stream(ChatRequest.of("hi"), agent_id="coder", task_id="t1"))


async def test_request_bodies_are_json_not_logged_keys(
    service: LLMService, llm: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    llm.push(anthropic_error(500, "x"), anthropic_json("ok"))
    await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t1")
    assert "anthropic-test-key" not in caplog.text
    assert json.dumps(llm.requests[-1].body)
