"""Agents get MCP tools through the gateway, with the token minted for them at spawn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cfn.agents.context import generate_cli_context
from cfn.agents.runtime import AgentRuntime, RunResult
from cfn.coordination.connection import RedisManager
from cfn.loop.launcher import ProcessLauncher
from cfn.loop.ports import AgentPlan
from cfn.mcp.tokens import TokenAuthority
from cfn.providers import TaskTraits, build_service
from cfn.settings import Settings
from tests.mcp.conftest import Stack
from tests.support.llm_servers import LLMServer, openai_json


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


def agent_settings(stack: Stack, tmp_path: Path, llm: LLMServer, token: str) -> Settings:
    (tmp_path / "agents").mkdir(exist_ok=True)
    return stack.settings.model_copy(
        update={
            "cfn_state_dir": tmp_path / ".cfn",
            "cfn_agents_dir": tmp_path / "agents",
            "mcp_gateway_url": stack.url("gateway"),
            "cfn_mcp_token": SecretStr(token),
            "kimi_base_url": llm.openai_url,
            "moonshot_api_key": SecretStr("kimi-test-key"),
            "cfn_agent_heartbeat_interval": 0.5,
            "cfn_provider_max_retries": 0,
        }
    )


async def run_agent(
    stack: Stack, settings: Settings, tmp_path: Path, agent_id: str, epic: str
) -> RunResult:
    """One implementer agent of task-hook, in-process, on the kimi stand-in."""
    (tmp_path / "ws").mkdir()
    context = generate_cli_context(
        "task-hook",
        agent_id,
        settings=settings,
        redis_host="127.0.0.1",
        redis_port=stack.redis.port,
        workspace=tmp_path / "ws",
        provider="kimi",
        role="implementer",
        loop=3,
        iteration=1,
        epic=epic,
    )
    redis = RedisManager.from_url(stack.redis.url, settings)
    service = build_service(settings, redis)
    try:
        return await AgentRuntime(context, settings, redis, service, None).run()
    finally:
        await service.aclose()
        await redis.close()


async def test_agent_calls_an_mcp_tool_through_the_gateway(
    stack: Stack, tmp_path: Path, llm: LLMServer
) -> None:
    stack.redis.client().set("coord:task-hook:loop2:start", "{}")
    token = stack.token(["redis-management"], agent_id="impl-1-1", task_id="task-hook")
    settings = agent_settings(stack, tmp_path, llm, token)
    llm.push(
        openai_json(
            None, tool_calls=[("c1", "redis_scan", json.dumps({"pattern": "coord:task-hook:*"}))]
        ),
        openai_json('{"confidence": 0.8, "summary": "looked at the keys"}'),
    )
    result = await run_agent(stack, settings, tmp_path, "impl-1-1", "Inspect the coordination keys")
    assert result.result == "success", result.payload
    offered = {t["function"]["name"] for t in llm.requests[0].body["tools"]}
    assert "redis_scan" in offered and "read_file" in offered
    # Only the servers its skills map to: no browser, scanner or n8n tools.
    assert not {n for n in offered if n.startswith(("browser", "playwright", "security", "n8n"))}
    tool_reply = [m for m in llm.requests[1].body["messages"] if m["role"] == "tool"]
    assert "coord:task-hook:loop2:start" in tool_reply[0]["content"]
    assert "MCP tools via" in result.payload["mcp"]


async def test_unreachable_gateway_is_reported_not_fatal(
    stack: Stack, tmp_path: Path, llm: LLMServer
) -> None:
    token = stack.token(["redis-management"])
    settings = agent_settings(stack, tmp_path, llm, token).model_copy(
        update={"mcp_gateway_url": "http://127.0.0.1:9"}
    )
    llm.push(openai_json('{"confidence": 0.7}'))
    result = await run_agent(stack, settings, tmp_path, "impl-2-1", "x")
    assert result.result == "success"
    assert "unavailable" in result.payload["mcp"]


def test_launcher_mints_a_token_per_agent_with_its_profile_skills(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings.model_copy(
        update={"mcp_gateway_url": stack.url("gateway"), "cfn_state_dir": tmp_path / ".cfn"}
    )
    launcher = ProcessLauncher(
        settings, build_service(settings), stack.redis.url, tmp_path, TaskTraits(), "mvp"
    )
    plan = AgentPlan("task-hook", "val-2-1", "validator", 2, 1, {})
    env = launcher._mcp_env(plan, "tester")
    claims = TokenAuthority.from_settings(settings).verify(env["CFN_MCP_TOKEN"])
    assert (claims.agent_id, claims.task_id) == ("val-2-1", "task-hook")
    assert set(claims.skills) == {"browser-automation", "security-scanning"}
    assert env["MCP_GATEWAY_URL"] == stack.url("gateway")
    no_gateway = ProcessLauncher(
        stack.settings.model_copy(update={"mcp_gateway_url": None}),
        build_service(settings),
        stack.redis.url,
        tmp_path,
        TaskTraits(),
        "mvp",
    )
    assert no_gateway._mcp_env(plan, "tester") == {}


async def test_a_claude_code_agent_calls_an_mcp_tool_through_the_gateway(
    stack: Stack, tmp_path: Path, llm: LLMServer
) -> None:
    """The Claude Code CLI, configured as the runtime configures it (the MCP gateway's
    URL as agents are given it, the agent's MCP token), lists only its skills' tools
    and calls one through cfn's MCP gateway."""
    import os

    from cfn.agents.claude_code import Step, run_claude
    from tests.support.llm_servers import Recorded, Reply, anthropic_sse, auto_reply

    stack.redis.client().set("coord:task-cc:loop2:start", "{}")
    token = stack.token(["redis-management"], agent_id="impl-1-1", task_id="task-cc")
    settings = agent_settings(stack, tmp_path, llm, token)
    scan = json.dumps({"pattern": "coord:task-cc:*"})
    turns = [
        anthropic_sse([""], tool_uses=[("toolu_1", "mcp__cfn__redis_scan", scan)]),
        anthropic_sse(['Looked.\n{"confidence": 0.8, "summary": "looked at the keys"}']),
    ]
    main_turns: list[Recorded] = []

    def route(request: Recorded) -> Reply:
        if request.body.get("tools") and request.body.get("stream"):
            main_turns.append(request)
            return turns.pop(0) if turns else anthropic_sse(["done"])
        return auto_reply(request)

    llm.default = route
    (tmp_path / "ws").mkdir()
    context = generate_cli_context(
        "task-cc", "impl-1-1", settings=settings, redis_host="127.0.0.1",
        redis_port=stack.redis.port, workspace=tmp_path / "ws", role="implementer",
        backend="claude-code", epic="Inspect the coordination keys",
    )  # fmt: skip
    runtime = AgentRuntime(
        context, settings, None, None, None,  # type: ignore[arg-type]
        gateway=(llm.anthropic_url, "llm-token-for-the-stand-in"),
    )  # fmt: skip
    run = runtime._claude_run().__class__(
        **{**runtime._claude_run().__dict__, "base_env": {"PATH": os.environ["PATH"],
           "HOME": str(tmp_path), "LANG": "C.UTF-8"}}
    )  # fmt: skip
    steps: list[Step] = []

    async def on_step(step: Step) -> None:
        steps.append(step)

    final = await run_claude(run, on_step, timeout=120)
    assert not final.is_error, (final, [s for s in steps if s.kind in ("error", "system")])
    offered = {t["name"] for t in main_turns[0].body["tools"]}
    init = [s.arguments for s in steps if s.kind == "system"]
    assert "mcp__cfn__redis_scan" in offered, (sorted(offered), init)
    # Only the servers its skills map to: no browser, scanner or n8n tools.
    assert not {n for n in offered if n.startswith("mcp__cfn__") and
                n.removeprefix("mcp__cfn__").startswith(("browser", "playwright", "security",
                                                         "n8n"))}  # fmt: skip
    results = [s for s in steps if s.kind == "tool_result"]
    assert results and "coord:task-cc:loop2:start" in results[0].text, steps
