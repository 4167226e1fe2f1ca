"""The LLM gateway over a real socket, called by the official Anthropic and OpenAI SDKs.

Upstream is the stand-in LLM server (both wire formats); Redis and SQLite are real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cfn.coordination.connection import RedisManager
from cfn.mcp.tokens import TokenAuthority
from cfn.providers import RedisLedger
from cfn.providers.gateway.tokens import LlmTokenAuthority
from tests.providers.gateway.conftest import GatewayFactory, wait_for
from tests.support.lazy import LazyModule
from tests.support.llm_servers import (
    LLMServer,
    anthropic_sse,
    openai_error,
    openai_json,
    openai_sse,
)
from tests.support.servers import RedisServer

anthropic = LazyModule("anthropic")  # imported by the worker that runs these tests
openai = LazyModule("openai")  # imported by the worker that runs these tests
# One xdist worker runs the tests that import the SDKs (seconds of CPU each).
pytestmark = pytest.mark.xdist_group("llm-sdks")

Closing = Callable[[Any], Any]


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    """Keeps the SDK clients a test makes and closes them in its own event loop: left to
    the garbage collector, the SDK schedules their close on whatever loop runs later, where
    it fails ("Event loop is closed") and is logged in another test."""
    clients: list[Any] = []

    def keep(client: Any) -> Any:
        clients.append(client)
        return client

    yield keep
    for client in clients:
        await client.close()


async def test_anthropic_sdk_streams_text_and_tool_use_from_an_openai_provider(
    gateway_factory: GatewayFactory, llm: LLMServer, closing: Closing
) -> None:
    gw = await gateway_factory()
    llm.push(
        openai_sse(["Wri", "ting."], tool_calls=[("call_1", "Write", '{"file_path": "a.py"}')])
    )
    client = closing(
        anthropic.AsyncAnthropic(
            base_url=gw.url,
            api_key=gw.token(provider="kimi", model="kimi-latest", providers=("kimi",)),
        )
    )
    async with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=256,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "write a.py"}],
        tools=[{"name": "Write", "description": "w", "input_schema": {"type": "object"}}],
    ) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "Writing."
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.name == "Write" and tool.input == {"file_path": "a.py"}
    upstream = llm.requests[-1]
    assert upstream.path.endswith("/chat/completions")
    assert upstream.headers["authorization"] == "Bearer kimi-test-key"  # the key: gateway only
    assert upstream.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert upstream.body["tools"][0]["function"]["name"] == "Write"
    with gw.store() as store:
        await wait_for(lambda: store.llm_usage("T1").calls == 1)
        call = store.llm_calls("T1")[0]
        assert (call.provider, call.via, call.status) == ("kimi", "gateway", "ok")
        assert call.latency_ms is not None and call.latency_ms > 0
        await wait_for(lambda: any(e.kind == "llm:call" for e in store.events("T1")))
        event = next(e for e in store.events("T1") if e.kind == "llm:call")
        payload = json.loads(event.payload)
        assert payload["agentId"] == "impl-1-1" and payload["provider"] == "kimi"


async def test_openai_sdk_through_the_gateway_to_an_anthropic_provider(
    gateway_factory: GatewayFactory, llm: LLMServer, redis_server: RedisServer, closing: Closing
) -> None:
    gw = await gateway_factory(zai_api_style="anthropic")
    llm.push(anthropic_sse(["he", "llo"], tool_uses=[("toolu_1", "Bash", '{"command": "ls"}')]))
    client = closing(openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.token(), max_retries=0))
    stream = await client.chat.completions.create(
        model="whatever",
        messages=[{"role": "user", "content": "run ls"}],
        tools=[{"type": "function", "function": {"name": "Bash", "parameters": {}}}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, calls, finish, usage = "", [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert text == "hello" and finish == "tool_calls"
    assert calls[0].function.name == "Bash" and calls[0].function.arguments == '{"command": "ls"}'
    assert usage is not None and usage.completion_tokens == 5
    upstream = llm.requests[-1]
    assert upstream.path.endswith("/messages")
    assert upstream.headers["authorization"] == "Bearer zai-test-key"
    # Non-streaming, with cfn's accounting beside the standard reply.
    llm.push(openai_json("plain"))  # unused: zai is anthropic-style here
    async with httpx.AsyncClient(timeout=10) as http:
        raw = await http.post(
            f"{gw.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {gw.token()}"},
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert raw.status_code == 200, raw.text
    assert raw.json()["cfn"]["provider"] == "zai"
    manager = RedisManager.from_url(redis_server.url)
    try:
        totals = await RedisLedger(manager).totals("T1")
        assert totals.calls == 2  # charged by the gateway, per task
    finally:
        await manager.close()


async def test_tokens_that_are_refused_and_why(
    gateway_factory: GatewayFactory, llm: LLMServer
) -> None:
    gw = await gateway_factory()
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

    http = httpx.AsyncClient(timeout=10)

    async def post(headers: dict[str, str], json: Any = body) -> httpx.Response:
        return await http.post(f"{gw.url}/v1/messages", headers=headers, json=json)

    forged = LlmTokenAuthority(b"x" * 40).mint("impl-1-1", "T1", provider="zai", model="glm-4.6")
    expired = LlmTokenAuthority.from_settings(gw.settings).mint(
        "impl-1-1", "T1", provider="zai", model="glm-4.6", ttl=1, now=1_000_000
    )
    mcp = TokenAuthority.from_settings(gw.settings).mint("impl-1-1", "T1", ["redis-management"])
    cases = {
        "missing token": {},
        "forged token": {"x-api-key": forged},
        "expired token": {"x-api-key": expired},
        "not meant for the LLM gateway": {"x-api-key": mcp},
        "malformed token": {"authorization": "Bearer not-a-jwt"},
    }
    for reason, headers in cases.items():
        reply = await post(headers)
        assert reply.status_code == 401, (reason, reply.text)
        assert reply.json()["type"] == "error"
        assert reply.json()["error"]["type"] == "authentication_error"
        assert reason in reply.json()["error"]["message"]
    # A provider the token does not allow: 403 naming what it does allow.
    other = await post({"x-api-key": gw.token()}, {**body, "model": "anthropic:claude-3-5-sonnet"})
    assert other.status_code == 403 and "allows zai" in other.json()["error"]["message"]
    # Bad bodies: one clear 400 each, nothing sent upstream.
    before = len(llm.requests)
    bad = await post({"x-api-key": gw.token()}, {**body, "messages": "nope"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    raw = await http.post(
        f"{gw.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gw.token()}"},
        content=b"{not json",
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    deep = await http.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": gw.token(), "content-type": "application/json"},
        content=b"[" * 100_000 + b"]" * 100_000,
    )
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    assert len(llm.requests) == before
    # The same token works, and count_tokens answers.
    assert (await post({"x-api-key": gw.token()})).status_code == 200
    counted = await http.post(
        f"{gw.url}/v1/messages/count_tokens",
        headers={"x-api-key": gw.token()},
        json={"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
    )
    await http.aclose()
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


async def test_budget_stops_a_stream_mid_way_and_refuses_the_next_call(
    gateway_factory: GatewayFactory, llm: LLMServer, closing: Closing
) -> None:
    # glm-4.6 costs $2.20 per million output tokens: 0.00002 is spent within the stream.
    gw = await gateway_factory(cfn_task_budget_usd=0.00002)
    llm.push(openai_sse(["word " * 40] * 20, usage=None))
    client = closing(anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.token(), max_retries=0))
    with pytest.raises(anthropic.APIError, match="budget"):
        async with client.messages.stream(
            model="m", max_tokens=4000, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            async for _ in stream:
                pass
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "again"}]
        )
    assert refused.value.status_code == 402
    with gw.store() as store:
        await wait_for(lambda: any(c.status == "budget_stopped" for c in store.llm_calls("T1")))


async def test_fallback_hop_when_the_first_provider_is_rate_limited(
    gateway_factory: GatewayFactory, llm: LLMServer, closing: Closing
) -> None:
    gw = await gateway_factory(cfn_retry_after_max=0.5)
    llm.push(openai_error(429, "slow down", {"retry-after": "30"}), openai_json("from kimi"))
    token = gw.token(providers=("zai", "kimi", "openrouter"))
    client = closing(openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0))
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "from kimi"
    extra = reply.model_extra or {}
    assert extra["cfn"]["provider"] == "kimi"
    assert any("rate_limited" in hop for hop in extra["cfn"]["hops"])


async def test_a_token_is_spent_once_its_agent_has_reported(
    gateway_factory: GatewayFactory, llm: LLMServer, redis_server: RedisServer
) -> None:
    """A token ends with its agent's work: once cfn has recorded the agent done or
    failed (the task's records, which agents cannot write), the same token is refused,
    401 naming the agent and task; the task's other agents go on. A completion entry
    pushed to Redis (which any agent of the task can write) spends nothing."""
    from cfn.store.records import AgentRecord

    gw = await gateway_factory()
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    mine, other = gw.token("impl-1-1", "T9"), gw.token("impl-2-1", "T9")
    async with httpx.AsyncClient(timeout=10) as http:

        async def post(token: str) -> httpx.Response:
            return await http.post(f"{gw.url}/v1/messages", headers={"x-api-key": token}, json=body)

        assert (await post(mine)).status_code == 200
        redis_server.client().lpush("coord:T9:complete", "impl-2-1:success")  # a forgery
        with gw.store() as store:
            store.create_task("T9", "mvp", "x")
            for agent, status in (("impl-1-1", "done"), ("impl-2-1", "running")):
                store.save_agent(
                    AgentRecord("T9", agent, "implementer", 3, 1, None, "zai", "glm-4.6", status)
                )
        deadline = time.monotonic() + 5
        while (reply := await post(mine)).status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert reply.status_code == 401, reply.text
        message = reply.json()["error"]["message"]
        assert "'impl-1-1'" in message and "'T9'" in message and "spent" in message
        assert (await post(other)).status_code == 200
