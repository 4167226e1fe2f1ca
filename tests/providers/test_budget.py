"""Usage, cost and the per-task budget, shared through Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cfn.coordination.connection import RedisManager
from cfn.errors import BudgetExceededError
from cfn.providers import ChatRequest, LLMService, RedisLedger
from cfn.providers.usage import Charge
from tests.providers.conftest import MakeSettings
from tests.support.llm_servers import LLMServer, openai_json, openai_sse
from tests.support.servers import RedisServer

# glm-4.6 at $0.60 / $2.20 per million tokens: 1000 in + 2000 out = $0.005
CALL_COST = (1000 * 0.60 + 2000 * 2.20) / 1e6


async def test_budget_stops_further_calls_across_processes_sharing_redis(
    served: MakeSettings, llm: LLMServer, manager: RedisManager, redis_server: RedisServer
) -> None:
    settings = served(default_provider="zai", cfn_task_budget_usd=0.01)
    llm.default = openai_json("ok", usage=(1000, 2000))
    other_manager = RedisManager.from_url(redis_server.url, settings)
    agent_a = LLMService(settings, ledger=RedisLedger(manager))
    agent_b = LLMService(settings, ledger=RedisLedger(other_manager))
    try:
        await agent_a.complete(ChatRequest.of("hi"), agent_id="impl-1-1", task_id="T1")
        await agent_b.complete(ChatRequest.of("hi"), agent_id="impl-2-1", task_id="T1")
        with pytest.raises(BudgetExceededError, match="CFN_TASK_BUDGET_USD") as info:
            await agent_a.complete(ChatRequest.of("hi"), agent_id="impl-1-1", task_id="T1")
        assert "'T1' has spent $0.0100 of its $0.0100" in str(info.value)
        # another task has its own budget
        await agent_b.complete(ChatRequest.of("hi"), agent_id="impl-2-1", task_id="T2")
        ledger = RedisLedger(manager)
        total = await ledger.totals("T1")
        assert total.cost_usd == pytest.approx(2 * CALL_COST)
        assert (total.calls, total.input_tokens, total.output_tokens) == (2, 2000, 4000)
        per_agent = await ledger.agents("T1")
        assert set(per_agent) == {"impl-1-1", "impl-2-1"}
        assert per_agent["impl-1-1"].cost_usd == pytest.approx(CALL_COST)
        calls = await ledger.recent_calls("T1")
        assert [c["status"] for c in calls] == ["ok", "ok"]
        assert calls[0]["hops"][0]["outcome"] == "ok"
        assert manager.client is not None
        raw = await manager.client.hgetall("usage:T1")
        assert float(raw["cost_usd"]) == pytest.approx(0.01)
    finally:
        await agent_a.aclose()
        await agent_b.aclose()
        await other_manager.close()


async def test_stream_is_stopped_mid_way_when_the_budget_is_reached(
    served: MakeSettings, llm: LLMServer, manager: RedisManager
) -> None:
    # $0.0005 buys ~227 output tokens of glm-4.6 (~900 characters); the reply has 2000.
    settings = served(default_provider="zai", cfn_task_budget_usd=0.0005)
    llm.push(openai_sse(["x" * 19 + " "] * 100, usage=(10, 500)))
    service = LLMService(settings, ledger=RedisLedger(manager))
    received: list[str] = []
    try:
        with pytest.raises(BudgetExceededError, match="stopped mid-stream after") as info:
            async for event in service.stream(
                ChatRequest.of("write a lot"), agent_id="impl-1-1", task_id="T3"
            ):
                received.append(event.text)
    finally:
        await service.aclose()
    assert "zai:glm-4.6" in str(info.value)
    assert 20 < len(received) < 100
    ledger = RedisLedger(manager)
    spent = (await ledger.totals("T3")).cost_usd
    assert 0.0005 <= spent < 0.0005 + 0.00002  # at most one chunk's worth past the budget
    (record,) = await ledger.recent_calls("T3")
    assert record["status"] == "budget_stopped"
    assert record["hops"][-1]["outcome"] == "budget_stopped"
    with pytest.raises(BudgetExceededError):
        await LLMService(settings, ledger=ledger).complete(
            ChatRequest.of("more"), agent_id="impl-2-1", task_id="T3"
        )


async def test_admission_is_atomic_under_concurrency(
    manager: RedisManager, redis_server: RedisServer, served: MakeSettings
) -> None:
    managers = [manager, RedisManager.from_url(redis_server.url, served())]
    ledgers = [RedisLedger(m) for m in managers]
    try:
        results = await asyncio.gather(
            *(
                ledgers[i % 2].admit("T4", f"a{i}", Charge(cost_usd=1.0), budget=5.0)
                for i in range(40)
            )
        )
    finally:
        await managers[1].close()
    assert sum(ok for ok, _ in results) == 5
    assert (await ledgers[0].totals("T4")).cost_usd == 5.0


async def test_failed_call_refunds_its_estimate(
    served: MakeSettings, llm: LLMServer, manager: RedisManager
) -> None:
    from cfn.errors import ProviderRequestError
    from tests.support.llm_servers import openai_error

    settings = served(default_provider="zai", cfn_task_budget_usd=1.0)
    llm.push(openai_error(400, "bad"))
    service = LLMService(settings, ledger=RedisLedger(manager))
    with pytest.raises(ProviderRequestError):
        await service.complete(ChatRequest.of("x" * 4000), agent_id="a", task_id="T5")
    await service.aclose()
    totals = await RedisLedger(manager).totals("T5")
    assert totals.cost_usd == pytest.approx(0.0, abs=1e-12)
    (record,) = await RedisLedger(manager).recent_calls("T5")
    assert record["status"] == "error" and "bad" in record["error"]


AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from cfn.coordination.connection import RedisManager
    from cfn.errors import BudgetExceededError
    from cfn.providers import ChatRequest, LLMService, RedisLedger
    from cfn.settings import Settings

    async def main() -> None:
        settings = Settings()
        manager = RedisManager.from_settings(settings)
        service = LLMService(settings, ledger=RedisLedger(manager))
        done = 0
        try:
            while True:
                await service.complete(ChatRequest.of("hi"), agent_id=sys.argv[1], task_id="TP")
                done += 1
        except BudgetExceededError:
            print(done)
        finally:
            await service.aclose()
            await manager.close()

    asyncio.run(main())
    """
)


def test_budget_holds_across_agent_processes(
    llm: LLMServer, redis_server: RedisServer, tmp_path: object
) -> None:
    llm.default = openai_json("ok", usage=(1000, 2000))
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "ZAI_BASE_URL": llm.openai_url,
        "ZAI_API_KEY": "zai-test-key",
        "DEFAULT_PROVIDER": "zai",
        "CFN_TASK_BUDGET_USD": "0.1",  # 20 calls' worth
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", AGENT, f"agent-{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        counts.append(int(out.strip()))
    client = redis_server.client()
    spent = float(client.hget("usage:TP", "cost_usd") or 0)
    calls = int(client.hget("usage:TP", "calls") or 0)
    assert calls == sum(counts)
    assert spent == pytest.approx(calls * CALL_COST)
    # Non-streamed replies in flight when the budget is reached still land:
    # at most one per process past the budget, never more.
    assert 0.1 <= spent <= 0.1 + len(procs) * CALL_COST + 1e-9
    agents = {k for k in client.scan_iter("usage:TP:agent:*")}
    assert len(agents) == len([c for c in counts if c])
    assert json.loads(client.lindex("usage:TP:calls", 0) or "{}")["task_id"] == "TP"
