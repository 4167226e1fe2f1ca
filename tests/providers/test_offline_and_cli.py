"""The offline provider, and the ``cfn providers`` commands end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfn.errors import MissingCredentialsError
from cfn.providers import ChatRequest, LLMService
from cfn.providers.clients.offline import BANNER
from tests.providers.conftest import MakeSettings
from tests.support.llm_servers import LLMServer, openai_json
from tests.support.servers import RedisServer


def payload(text: str) -> dict[str, object]:
    banner, line = text.split("\n")
    assert banner == BANNER
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


async def test_offline_is_deterministic_labelled_and_free(make_settings: MakeSettings) -> None:
    service = LLMService(make_settings())
    one = await service.complete(ChatRequest.of("build the API"), agent_id="coder", task_id="t")
    two = await service.complete(ChatRequest.of("build the API"), agent_id="coder", task_id="u")
    other = await service.complete(ChatRequest.of("something else"), agent_id="c", task_id="t")
    assert one.text == two.text != other.text
    assert one.offline and one.provider == "offline" and "OFFLINE" in one.label
    assert one.cost_usd == 0 and one.usage.output_tokens > 0
    data = payload(one.text)
    assert data["offline"] is True
    confidence = data["confidence"]
    assert isinstance(confidence, float) and 0.70 <= confidence <= 0.99


async def test_offline_confidence_hint_and_stream_equals_complete(
    make_settings: MakeSettings,
) -> None:
    service = LLMService(make_settings())
    request = ChatRequest.of("review this; offline-confidence: 0.42")
    reply = await service.complete(request, agent_id="reviewer-1-1", task_id="t")
    assert payload(reply.text)["confidence"] == 0.42
    events = [e async for e in service.stream(request, agent_id="reviewer-1-1", task_id="t")]
    assert "".join(e.text for e in events if e.kind == "text") == reply.text
    done = events[-1].response
    assert done is not None and done.offline and done.text == reply.text


async def test_offline_not_used_when_a_real_provider_has_a_key(
    make_settings: MakeSettings,
) -> None:
    service = LLMService(make_settings(zai_api_key="k"))
    with pytest.raises(MissingCredentialsError, match="set MOONSHOT_API_KEY"):
        await service.complete(ChatRequest.of("hi"), agent_id="coder", task_id="t")
    chosen = await service.complete(
        ChatRequest.of("hi"), agent_id="coder", task_id="t", provider="offline"
    )
    assert chosen.offline


def cfn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfn", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_cli_route_explains_the_choice(tmp_path: Path) -> None:
    result = cfn(
        "providers",
        "route",
        "--agent",
        "coder",
        "--complexity",
        "high",
        "--cost-sensitive",
        env={"CFN_CUSTOM_ROUTING": "true", "ANTHROPIC_API_KEY": "k"},
    )
    assert result.returncode == 0, result.stderr
    assert "HIGH_COMPLEXITY_PROVIDER=anthropic" in result.stdout
    assert "anthropic:claude-3-5-sonnet-20241022" in result.stdout
    missing = cfn(
        "providers",
        "route",
        "--agent",
        "system-architect",
        env={"CFN_CUSTOM_ROUTING": "true", "ZAI_API_KEY": "k"},
    )
    assert missing.returncode == 1 and "set ANTHROPIC_API_KEY" in missing.stdout
    bad = cfn("providers", "route", "--complexity", "huge")
    assert bad.returncode == 2 and bad.stderr.startswith("[ERROR] invalid --complexity")


def test_cli_list_shows_credentials_reachability_and_offline(llm: LLMServer) -> None:
    result = cfn(
        "providers",
        "list",
        env={
            "ZAI_API_KEY": "secret-zai",
            "ZAI_BASE_URL": llm.openai_url,
            "XAI_BASE_URL": "http://127.0.0.1:9/v1",
        },
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "yes" in lines["zai"] and "yes (200" in lines["zai"]
    assert "no: XAI_API_KEY" in lines["xai"] and "no: ConnectError" in lines["xai"]
    assert "OFFLINE" in lines["offline"]
    assert "secret-zai" not in result.stdout + result.stderr


def test_cli_call_offline_and_usage_in_redis(redis_server: RedisServer) -> None:
    env = {"REDIS_URL": redis_server.url}
    result = cfn("providers", "call", "hello", "--agent", "coder", "--task-id", "cli-t", env=env)
    assert result.returncode == 0, result.stderr
    assert BANNER in result.stdout and "offline:cfn-offline-1 (OFFLINE" in result.stdout
    streamed = cfn("providers", "call", "hello", "--stream", "--task-id", "cli-t", env=env)
    assert streamed.returncode == 0 and BANNER in streamed.stdout
    usage = cfn("providers", "usage", "--task-id", "cli-t", env=env)
    assert usage.returncode == 0, usage.stderr
    assert "coder" in usage.stdout and "offline:cfn-offline-1 OFFLINE ok" in usage.stdout


def test_cli_call_against_a_real_wire_and_errors(llm: LLMServer) -> None:
    llm.push(openai_json("from the stand-in", usage=(7, 3)))
    env = {"ZAI_API_KEY": "k", "ZAI_BASE_URL": llm.openai_url, "DEFAULT_PROVIDER": "zai"}
    ok = cfn("providers", "call", "hi", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "from the stand-in" in ok.stdout and "zai:glm-4.6" in ok.stdout
    assert "OFFLINE" not in ok.stdout
    unknown = cfn("providers", "call", "hi", "--provider", "nosuch", env=env)
    assert unknown.returncode == 2 and "[ERROR] unknown provider 'nosuch'" in unknown.stderr
    malformed = cfn("providers", "list", "--no-probe", env={"PROVIDER_ROUTES": "zai"})
    assert malformed.returncode == 2 and "[ERROR] malformed route 'zai'" in malformed.stderr
