"""The HTTP clients themselves: headers, URLs, pooling, and how failures are sorted.

The service-level behaviour (retries, fallbacks, hops) is in test_openai_client.py
and test_anthropic_client.py; here each client is driven directly.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from cfn.errors import ProviderRequestError
from cfn.providers import ChatRequest, ToolCall
from cfn.providers.clients import ClientEvent, Transient, make_client
from cfn.providers.clients.anthropic_http import AnthropicClient
from cfn.providers.clients.errors import status_error, stream_error_event, transport_error
from cfn.providers.clients.openai_http import OpenAICompatClient
from cfn.providers.routes import ProviderSpec
from cfn.system.http11 import HttpError
from tests.support.llm_servers import (
    LLMServer,
    Reply,
    anthropic_error,
    anthropic_json,
    anthropic_sse,
    openai_json,
    openai_sse,
)


def openai_spec(url: str, key: str | None = "oa-key") -> ProviderSpec:
    return ProviderSpec(
        "zai", "openai", url, ("ZAI_API_KEY",), SecretStr(key) if key is not None else None
    )


def anthropic_spec(url: str, key: str | None = "an-key") -> ProviderSpec:
    return ProviderSpec(
        "anthropic",
        "anthropic",
        url,
        ("ANTHROPIC_API_KEY",),
        SecretStr(key) if key is not None else None,
    )


@pytest.fixture
async def oa(llm: LLMServer) -> AsyncIterator[OpenAICompatClient]:
    client = OpenAICompatClient(openai_spec(llm.openai_url), timeout=2.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def an(llm: LLMServer) -> AsyncIterator[AnthropicClient]:
    client = AnthropicClient(anthropic_spec(llm.anthropic_url), timeout=2.0)
    try:
        yield client
    finally:
        await client.aclose()


async def events_of(stream: AsyncIterator[ClientEvent]) -> list[ClientEvent]:
    return [e async for e in stream]


def pooled(client: OpenAICompatClient | AnthropicClient) -> int:
    return client._wire.http.idle_connections()


def test_factory_picks_the_http_clients() -> None:
    assert isinstance(make_client(openai_spec("http://x/v1"), 1.0), OpenAICompatClient)
    assert isinstance(make_client(anthropic_spec("http://x"), 1.0), AnthropicClient)


async def test_openai_headers_url_and_trailing_slash(llm: LLMServer) -> None:
    client = OpenAICompatClient(openai_spec(llm.openai_url + "/"), timeout=2.0)
    llm.push(openai_json("hi"))
    result = await client.complete(ChatRequest.of("x"), "m")
    await client.aclose()
    assert result.text == "hi" and result.finish_reason == "stop"
    sent = llm.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer oa-key"
    assert sent.headers["content-type"] == "application/json"


async def test_keyless_openai_provider_sends_no_authorization(llm: LLMServer) -> None:
    client = OpenAICompatClient(openai_spec(llm.openai_url, key=None), timeout=2.0)
    llm.push(openai_json("local"))
    assert (await client.complete(ChatRequest.of("x"), "llama3")).text == "local"
    await client.aclose()
    assert "authorization" not in llm.requests[-1].headers


async def test_anthropic_headers_and_body(an: AnthropicClient, llm: LLMServer) -> None:
    llm.push(anthropic_json("yo", usage=(7, 3)))
    result = await an.complete(ChatRequest.of("x", temperature=0.2), "anthropic/claude-x")
    assert (result.text, result.usage.input_tokens, result.usage.output_tokens) == ("yo", 7, 3)
    sent = llm.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == "Bearer an-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 4096,
        "temperature": 0.2,
    }


async def test_non_ascii_text_round_trips(oa: OpenAICompatClient, llm: LLMServer) -> None:
    llm.push(openai_json("ça marche ✓"))
    result = await oa.complete(ChatRequest.of("héllo ✓ \ud800"), "m")
    assert result.text == "ça marche ✓"
    assert llm.requests[-1].body["messages"][0]["content"] == "héllo ✓ \ud800"


async def test_openai_stream_events_in_order(oa: OpenAICompatClient, llm: LLMServer) -> None:
    llm.push(openai_sse(["a", "b"], tool_calls=[("c1", "f", '{"x": 1}')], usage=(4, 2)))
    events = await events_of(oa.stream(ChatRequest.of("x"), "m"))
    assert [(e.kind, e.text or e.finish_reason or e.tool_call or e.usage) for e in events] == [
        ("text", "a"),
        ("text", "b"),
        ("tool_call", ToolCall("c1", "f", '{"x": 1}')),
        ("finish", "tool_calls"),
        ("usage", events[-1].usage),
    ]
    assert events[-1].usage is not None and events[-1].usage.total_tokens == 6


async def test_streams_and_calls_reuse_one_connection(
    oa: OpenAICompatClient, an: AnthropicClient, llm: LLMServer
) -> None:
    for _ in range(3):
        await events_of(oa.stream(ChatRequest.of("x"), "m"))
        await oa.complete(ChatRequest.of("x"), "m")
        await events_of(an.stream(ChatRequest.of("x"), "m"))
        await an.complete(ChatRequest.of("x"), "m")
    assert pooled(oa) == 1 and pooled(an) == 1


async def test_openai_error_chunk_in_stream_is_transient(
    oa: OpenAICompatClient, llm: LLMServer
) -> None:
    error = json.dumps({"error": {"message": "upstream overloaded", "code": 502}})
    llm.push(Reply(events=[(None, error), (None, "[DONE]")]))
    with pytest.raises(Transient) as info:
        await events_of(oa.stream(ChatRequest.of("x"), "m"))
    assert info.value.kind == "server_error" and info.value.detail == "upstream overloaded"


async def test_anthropic_request_error_event_is_a_request_error(
    an: AnthropicClient, llm: LLMServer
) -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    llm.push(Reply(events=[("error", json.dumps(error))]))
    with pytest.raises(ProviderRequestError, match=r"mid-stream \(invalid_request_error\): bad"):
        await events_of(an.stream(ChatRequest.of("x"), "m"))


async def test_anthropic_overloaded_event_mid_stream(an: AnthropicClient, llm: LLMServer) -> None:
    llm.push(anthropic_sse(["a", "b", "c"], error_after=5))
    seen: list[str] = []
    with pytest.raises(Transient) as info:
        async for event in an.stream(ChatRequest.of("x"), "m"):
            seen.append(event.text)
    assert info.value.kind == "server_error"
    assert info.value.detail == "overloaded_error event in stream: Overloaded"
    assert "".join(seen) == "ab"


async def test_stream_refused_before_any_event(an: AnthropicClient, llm: LLMServer) -> None:
    llm.push(anthropic_error(429, "slow", {"retry-after-ms": "250"}))
    with pytest.raises(Transient) as info:
        await events_of(an.stream(ChatRequest.of("x"), "m"))
    assert (info.value.kind, info.value.status_code, info.value.retry_after) == (
        "rate_limited",
        429,
        0.25,
    )
    assert info.value.detail == "slow"


async def test_anthropic_401_names_the_variable(an: AnthropicClient, llm: LLMServer) -> None:
    llm.push(anthropic_error(401, "invalid x-api-key"))
    with pytest.raises(ProviderRequestError) as info:
        await an.complete(ChatRequest.of("x"), "m")
    text = str(info.value)
    assert "ANTHROPIC_API_KEY" in text and "an-key" not in text and "(401: " in text


async def test_cut_stream_is_a_connection_error(oa: OpenAICompatClient, llm: LLMServer) -> None:
    llm.push(openai_sse(["one ", "two "], drop_after=2))
    seen: list[str] = []
    with pytest.raises(Transient) as info:
        async for event in oa.stream(ChatRequest.of("x"), "m"):
            seen.append(event.text)
    assert info.value.kind == "connection_error" and seen == ["one "]


async def test_timeout_and_refused_connection(llm: LLMServer) -> None:
    client = OpenAICompatClient(openai_spec(llm.openai_url), timeout=0.2)
    llm.push(Reply(delay=0.6, body={}))
    with pytest.raises(Transient) as info:
        await client.complete(ChatRequest.of("x"), "m")
    await client.aclose()
    assert info.value.kind == "timeout" and "ReadTimeout" in info.value.detail

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        client = AnthropicClient(anthropic_spec(f"http://127.0.0.1:{port}"), timeout=2.0)
        with pytest.raises(Transient) as info:
            await client.complete(ChatRequest.of("x"), "m")
        await client.aclose()
    assert info.value.kind == "connection_error" and info.value.detail.startswith("ConnectError")


async def test_malformed_reply_is_a_server_error(oa: OpenAICompatClient, llm: LLMServer) -> None:
    llm.push(Reply(body="not an object"), Reply(events=[(None, "{cut")]))
    with pytest.raises(Transient, match="malformed JSON reply") as info:
        await oa.complete(ChatRequest.of("x"), "m")
    assert info.value.kind == "server_error"
    with pytest.raises(Transient, match="malformed stream chunk"):
        await events_of(oa.stream(ChatRequest.of("x"), "m"))


async def test_empty_choices_and_missing_fields(oa: OpenAICompatClient, llm: LLMServer) -> None:
    llm.push(Reply(body={"choices": [], "usage": {"prompt_tokens": 3}}))
    result = await oa.complete(ChatRequest.of("x"), "m")
    assert (result.text, result.tool_calls, result.finish_reason) == ("", (), None)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 0)


def test_status_sorting() -> None:
    def sort(status: int, body: object = None, headers: dict[str, str] | None = None) -> object:
        content = json.dumps(body).encode() if body is not None else b"<html>bad gateway</html>"
        return status_error(status, headers or {}, content, "p", "P_KEY")

    for status in (408, 409, 500, 529):
        err = sort(status)
        assert isinstance(err, Transient) and err.kind == "server_error"
        assert err.detail == f"Error code: {status}" and err.status_code == status
    limited = sort(429, {"error": {"message": "later"}}, {"Retry-After": "2"})
    assert isinstance(limited, Transient)
    assert (limited.kind, limited.detail, limited.retry_after) == ("rate_limited", "later", 2.0)
    refused = sort(403, {"type": "error", "error": {"type": "permission_error", "message": "no"}})
    assert isinstance(refused, ProviderRequestError) and "check P_KEY" in str(refused)
    rejected = sort(422, {"error": "plain string"})
    assert isinstance(rejected, ProviderRequestError)
    assert str(rejected) == "provider 'p' rejected the request (422): Error code: 422"


def test_error_event_that_is_not_json() -> None:
    err = stream_error_event("upstream went away", "p")
    assert isinstance(err, Transient) and err.detail == "error event in stream: upstream went away"


def test_transport_errors() -> None:
    assert transport_error(HttpError("ReadTimeout", "slow", timeout=True)).kind == "timeout"
    assert transport_error(HttpError("ConnectTimeout", "slow", timeout=True)).kind == "timeout"
    dropped = transport_error(HttpError("RemoteProtocolError", "incomplete chunked read"))
    assert dropped.kind == "connection_error"
    assert dropped.detail == "RemoteProtocolError: incomplete chunked read"
    assert transport_error(HttpError("ReadError", "reset")).kind == "connection_error"
