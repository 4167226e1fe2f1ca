"""The real Claude Code CLI through cfn's LLM gateway: to an OpenAI-format provider,
over a fallback hop, and stopped by the task budget mid-run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cfn.agents.claude_code import ClaudeRun, Step, find_claude, run_claude
from cfn.agents.runtime import parse_final
from tests.providers.gateway.conftest import GatewayFactory, wait_for
from tests.support.coding_model import coding_model
from tests.support.llm_servers import LLMServer, Recorded, Reply, openai_error, openai_sse

SYSTEM = "You are impl-1-1, an implementer in a CFN Loop team (Loop 3)."


def claude_run(tmp_path: Path, url: str, token: str) -> ClaudeRun:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return ClaudeRun(
        binary=find_claude(None),
        workspace=workspace,
        prompt="Build fizzbuzz.py",
        system_prompt_append=SYSTEM,
        model="glm-4.6",
        allowed_tools=("Read", "Write", "Edit", "Bash"),
        gateway_url=url,
        token=token,
        config_dir=tmp_path / "claude",
        mcp_config=None,
        max_turns=10,
        base_env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


async def run(run_: ClaudeRun) -> tuple[Any, list[Step]]:
    steps: list[Step] = []

    async def on_step(step: Step) -> None:
        steps.append(step)

    final = await run_claude(run_, on_step, timeout=90)
    return final, steps


async def test_claude_code_on_an_openai_format_provider_writes_and_runs(
    gateway_factory: GatewayFactory, llm: LLMServer, tmp_path: Path
) -> None:
    gw = await gateway_factory()
    llm.default = coding_model
    token = gw.token(provider="kimi", model="kimi-latest", providers=("kimi",))
    final, steps = await run(claude_run(tmp_path, gw.url, token))
    assert not final.is_error, final
    assert (parse_final(final.text) or {}).get("confidence") == 0.92
    assert "FizzBuzz" in (tmp_path / "ws" / "fizzbuzz.py").read_text()
    assert [s.tool for s in steps if s.kind == "tool_use"][:2] == ["Write", "Bash"]
    assert any("checks pass" in s.text for s in steps if s.kind == "tool_result")
    upstream = [r for r in llm.requests if r.body.get("tools")]
    assert upstream and all(r.path.endswith("/chat/completions") for r in upstream)
    assert all(r.headers["authorization"] == "Bearer kimi-test-key" for r in llm.requests)
    with gw.store() as store:
        await wait_for(lambda: len(store.llm_calls("T1")) >= 3)
        assert {c.provider for c in store.llm_calls("T1")} == {"kimi"}


async def test_claude_code_over_a_fallback_hop(
    gateway_factory: GatewayFactory, llm: LLMServer, tmp_path: Path
) -> None:
    gw = await gateway_factory(cfn_retry_after_max=0.5)
    first = {"done": False}

    def zai_busy_once(request: Recorded) -> Reply:
        if not first["done"] and request.body.get("tools"):
            first["done"] = True
            return openai_error(429, "busy", {"retry-after": "30"})
        return coding_model(request)

    llm.default = zai_busy_once
    token = gw.token(providers=("zai", "kimi", "openrouter"))
    final, _steps = await run(claude_run(tmp_path, gw.url, token))
    assert not final.is_error, final
    with gw.store() as store:
        await wait_for(lambda: any(c.provider == "kimi" for c in store.llm_calls("T1")))
        events = [json.loads(e.payload) for e in store.events("T1") if e.kind == "llm:call"]
        assert any(
            any("rate_limited" in hop for hop in e["hops"]) and e["provider"] == "kimi"
            for e in events
        )


async def test_a_budget_stops_a_claude_code_agent_mid_run(
    gateway_factory: GatewayFactory, llm: LLMServer, tmp_path: Path
) -> None:
    # Claude Code's request is some 20k tokens of input (glm-4.6: $0.60 per million, about
    # $0.012, admitted); the reply's output ($2.20 per million) crosses $0.05 mid-stream.
    budget = 0.05
    gw = await gateway_factory(cfn_task_budget_usd=budget)

    def chatty(request: Recorded) -> Reply:
        if request.body.get("tools"):
            return openai_sse(["thinking about fizzbuzz " * 20] * 400, usage=None)
        return coding_model(request)

    llm.default = chatty
    final, _steps = await run(claude_run(tmp_path, gw.url, gw.token()))
    assert final.is_error
    assert "budget" in (final.text + " ".join(final.errors)).lower()
    assert not (tmp_path / "ws" / "fizzbuzz.py").exists()
    with gw.store() as store:
        await wait_for(lambda: any(c.status == "budget_stopped" for c in store.llm_calls("T1")))
        spent = store.llm_usage("T1").cost_usd
    assert budget <= spent < budget * 1.5  # stopped near the budget, not after the whole reply
