"""The agent runtime on real parts: Redis, a local LLM stand-in speaking the
OpenAI wire format, the offline provider, a real ``cfn agent run`` process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.agents import signals as agent_signals
from cfn.agents.context import AgentContext, generate_cli_context
from cfn.agents.runtime import AgentRuntime, parse_final
from cfn.coordination import completion
from cfn.coordination.connection import RedisManager
from cfn.providers import build_service
from cfn.settings import Settings
from tests.support.llm_servers import LLMServer, openai_json
from tests.support.servers import RedisServer, cfn_env


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


def make_settings(tmp_path: Path, llm: LLMServer | None = None, **extra: Any) -> Settings:
    (tmp_path / "agents").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "cfn_state_dir": tmp_path / ".cfn",
        "cfn_agents_dir": tmp_path / "agents",
        "cfn_agent_heartbeat_interval": 0.5,
        "cfn_provider_timeout": 5.0,
        "cfn_provider_max_retries": 0,
    }
    if llm is not None:
        values.update(kimi_base_url=llm.openai_url, moonshot_api_key="kimi-test-key")
    values.update(extra)
    return Settings(**values)


def context_for(
    settings: Settings,
    server: RedisServer,
    workspace: Path,
    agent: str,
    provider: str,
    role: str = "implementer",
    **extra: Any,
) -> AgentContext:
    workspace.mkdir(parents=True, exist_ok=True)
    return generate_cli_context(
        "T1",
        agent,
        settings=settings,
        redis_host="127.0.0.1",
        redis_port=server.port,
        workspace=workspace,
        provider=provider,
        role=role,
        loop=3 if role == "implementer" else 2,
        iteration=1,
        epic="Build a hello module",
        extra=extra,
    )


async def run_runtime(
    settings: Settings, manager: RedisManager, context: AgentContext
) -> completion.CollectReport:
    service = build_service(settings, manager)
    try:
        await AgentRuntime(context, settings, manager, service, None).run()
    finally:
        await service.aclose()
    return await completion.collect_results(manager, "T1", 1, 0.0, 5, agent_ids=[context.agent_id])


def test_parse_final_takes_last_json_line() -> None:
    text = 'I did it.\n{"confidence": 0.5}\nmore prose\n```{"confidence": 0.9, "x": 1}```'
    assert parse_final(text) == {"confidence": 0.9, "x": 1}
    assert parse_final("no json here") is None


async def test_tool_conversation_over_openai_wire(
    tmp_path: Path, llm: LLMServer, redis_server: RedisServer, manager: RedisManager
) -> None:
    settings = make_settings(tmp_path, llm)
    llm.push(
        openai_json(
            None,
            tool_calls=[
                ("c1", "write_file", json.dumps({"path": "hello.py", "content": "print('hi')\n"}))
            ],
        ),
        openai_json(
            None, tool_calls=[("c2", "run_command", json.dumps({"command": "python3 hello.py"}))]
        ),
        openai_json('Done.\n{"confidence": 0.88, "summary": "hello module", "concerns": ""}'),
    )
    ctx = context_for(settings, redis_server, tmp_path / "ws", "impl-1-1", "kimi")
    report = await run_runtime(settings, manager, ctx)
    (item,) = report.results
    assert item.ok and item.confidence == 0.88
    assert item.payload["files"] == ["hello.py"] and item.payload["offline"] is False
    assert item.payload["provider"] == "kimi" and item.payload["turns"] == 3
    assert (tmp_path / "ws" / "hello.py").read_text() == "print('hi')\n"
    # The model saw the command's real output in the third request.
    third = llm.requests[2].body["messages"]
    assert any(m.get("role") == "tool" and "exit: 0\nhi" in m.get("content", "") for m in third)
    assert {t["function"]["name"] for t in llm.requests[0].body["tools"]} == {
        "read_file",
        "write_file",
        "list_files",
        "run_command",
    }


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        ('{"confidence": "high"}', "not a number"),
        ('{"confidence": 7}', "outside [0, 1]"),
        ("I am quite sure it works.", "no JSON line"),
    ],
)
async def test_unusable_confidence_is_reported_failed(
    tmp_path: Path,
    llm: LLMServer,
    redis_server: RedisServer,
    manager: RedisManager,
    final: str,
    reason: str,
) -> None:
    settings = make_settings(tmp_path, llm)
    llm.push(openai_json(final))
    ctx = context_for(settings, redis_server, tmp_path / "ws", "impl-1-1", "kimi")
    report = await run_runtime(settings, manager, ctx)
    (item,) = report.results
    assert not item.ok and item.confidence is None
    assert item.result == "failed" and reason in item.payload["error"]


async def test_validator_may_not_write(
    tmp_path: Path, llm: LLMServer, redis_server: RedisServer, manager: RedisManager
) -> None:
    settings = make_settings(tmp_path, llm)
    llm.push(
        openai_json(
            None, tool_calls=[("c1", "write_file", json.dumps({"path": "x.py", "content": "x"}))]
        ),
        openai_json('{"confidence": 0.6, "feedback": "add tests"}'),
    )
    ctx = context_for(settings, redis_server, tmp_path / "ws", "val-1-1", "kimi", role="validator")
    report = await run_runtime(settings, manager, ctx)
    assert not (tmp_path / "ws" / "x.py").exists()
    second = llm.requests[1].body["messages"]
    assert any("may not write" in m.get("content", "") for m in second if m["role"] == "tool")
    assert "write_file" not in {t["function"]["name"] for t in llm.requests[0].body["tools"]}
    assert report.results[0].payload["feedback"] == "add tests"


async def test_provider_failure_is_a_failed_report(
    tmp_path: Path, redis_server: RedisServer, manager: RedisManager
) -> None:
    # kimi chosen, but no key: a clear error naming the variable, reported as failed.
    settings = make_settings(tmp_path)
    ctx = context_for(settings, redis_server, tmp_path / "ws", "impl-1-1", "kimi")
    report = await run_runtime(settings, manager, ctx)
    (item,) = report.results
    assert not item.ok and "KEY" in item.payload["error"]


async def test_stop_signal_ends_the_run(
    tmp_path: Path, llm: LLMServer, redis_server: RedisServer, manager: RedisManager
) -> None:
    settings = make_settings(tmp_path, llm)
    reply = openai_json('{"confidence": 0.9}')
    reply.delay = 30
    llm.push(reply)
    ctx = context_for(settings, redis_server, tmp_path / "ws", "impl-1-1", "kimi")
    service = build_service(settings, manager)
    runner = asyncio.create_task(AgentRuntime(ctx, settings, manager, service, None).run())
    await asyncio.sleep(0.5)
    await agent_signals.send_stop(manager, "T1", "impl-1-1", "operator said so")
    result = await asyncio.wait_for(runner, 10)
    await service.aclose()
    assert result.result == "failed" and "operator said so" in result.payload["error"]


def test_offline_agent_process_end_to_end(tmp_path: Path, redis_server: RedisServer) -> None:
    """A real ``cfn agent run`` process with the offline provider and no key at all."""
    settings = make_settings(tmp_path)
    ctx = context_for(settings, redis_server, tmp_path / "ws", "impl-1-1", "offline")
    path = ctx.write(settings.state_dir)
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url, CFN_AGENT_HEARTBEAT_INTERVAL="0.5")
    run = subprocess.run(
        [sys.executable, "-m", "cfn", "agent", "run", "--context", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    client = redis_server.client()
    assert client.lrange("coord:T1:complete", 0, -1) == ["impl-1-1:success"]
    payload = json.loads(client.get("swarm:T1:result:impl-1-1") or "{}")
    assert payload["offline"] is True and 0.7 <= payload["confidence"] <= 0.99
    (note,) = (tmp_path / "ws" / "offline").iterdir()
    assert "no language model was called" in note.read_text()
    # Started again (as after an orchestrator crash), it does not redo the work.
    again = subprocess.run(
        [sys.executable, "-m", "cfn", "agent", "run", "--context", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "already reported" in again.stderr
    assert client.llen("coord:T1:complete") == 1
