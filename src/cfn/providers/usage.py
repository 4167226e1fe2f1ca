"""Token usage, cost and the per-task budget.

Two roles, kept apart:

* a ``BudgetLedger`` holds the running totals a budget is checked against.
  ``RedisLedger`` keeps them in ``usage:{task}`` (and ``usage:{task}:agent:{agent}``)
  and changes them only inside one Lua script, so any number of agent
  processes of one task share one budget: admission is check-and-add (refused
  when the task has spent its budget, or when the call's estimated input cost
  would cross it), and every later charge (streamed output as it arrives, the
  exact usage at the end) is add-and-report, atomically.
* a ``UsageSink`` receives one ``CallRecord`` per call, for history: the Redis
  ledger keeps the last ones in ``usage:{task}:calls``; the SQL store plugs in
  through ``StoreSink``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.providers.types import Hop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallRecord:
    task_id: str
    agent_id: str
    provider: str
    model: str
    offline: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    #: ok | error | budget_stopped
    status: str
    streamed: bool = False
    error: str | None = None
    hops: tuple[Hop, ...] = ()
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        data = asdict(self)
        data["hops"] = [asdict(h) for h in self.hops]
        return json.dumps(data, sort_keys=True)


@dataclass(frozen=True)
class Totals:
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


@dataclass(frozen=True)
class Charge:
    """A change to a task's (and one agent's) totals."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


@runtime_checkable
class UsageSink(Protocol):
    """Anything that keeps call records (Redis history, the SQL ``llm_calls`` table)."""

    async def record_call(self, record: CallRecord) -> None: ...


class BudgetLedger(Protocol):
    async def admit(
        self, task_id: str, agent_id: str, charge: Charge, budget: float | None
    ) -> tuple[bool, float]:
        """Add ``charge`` unless the task is at or would go past ``budget``; (admitted, spent)."""
        ...

    async def add(self, task_id: str, agent_id: str, charge: Charge) -> float:
        """Add ``charge`` (may be negative: a refund); the task's new spend."""
        ...

    async def totals(self, task_id: str, agent_id: str | None = None) -> Totals: ...


class MemoryLedger:
    """One process's ledger, for calls outside any task store (``cfn providers call``)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str | None], Totals] = {}
        self.records: list[CallRecord] = []
        self._lock = asyncio.Lock()

    def _bump(self, key: tuple[str, str | None], c: Charge) -> Totals:
        t = self._totals.get(key, Totals())
        new = Totals(
            t.cost_usd + c.cost_usd,
            t.input_tokens + c.input_tokens,
            t.output_tokens + c.output_tokens,
            t.calls + c.calls,
        )
        self._totals[key] = new
        return new

    async def admit(
        self, task_id: str, agent_id: str, charge: Charge, budget: float | None
    ) -> tuple[bool, float]:
        async with self._lock:
            spent = self._totals.get((task_id, None), Totals()).cost_usd
            if budget is not None and (spent >= budget or spent + charge.cost_usd > budget):
                return False, spent
            self._bump((task_id, agent_id), charge)
            return True, self._bump((task_id, None), charge).cost_usd

    async def add(self, task_id: str, agent_id: str, charge: Charge) -> float:
        async with self._lock:
            self._bump((task_id, agent_id), charge)
            return self._bump((task_id, None), charge).cost_usd

    async def totals(self, task_id: str, agent_id: str | None = None) -> Totals:
        return self._totals.get((task_id, agent_id), Totals())

    async def record_call(self, record: CallRecord) -> None:
        self.records.append(record)


# KEYS: usage:{task}, usage:{task}:agent:{agent}
# ARGV: cost, input tokens, output tokens, calls, budget ('' = none), mode ('admit' | 'add')
_CHARGE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'cost_usd') or '0')
local cost = tonumber(ARGV[1])
local budget = tonumber(ARGV[5])
if ARGV[6] == 'admit' and budget ~= nil and (spent >= budget or spent + cost > budget) then
  return {0, tostring(spent)}
end
local total = redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[2], 'cost_usd', ARGV[1])
for i, name in ipairs({'input_tokens', 'output_tokens', 'calls'}) do
  redis.call('HINCRBY', KEYS[1], name, ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], name, ARGV[i + 1])
end
return {1, total}
"""


def _totals(raw: dict[str, str]) -> Totals:
    return Totals(
        float(raw.get("cost_usd", 0) or 0),
        int(raw.get("input_tokens", 0) or 0),
        int(raw.get("output_tokens", 0) or 0),
        int(raw.get("calls", 0) or 0),
    )


class RedisLedger:
    """The shared ledger of a task across processes; also keeps recent call records."""

    def __init__(self, manager: RedisManager, keep_records: int = 1000) -> None:
        self._manager = manager
        self._keep = keep_records
        self._sha: str | None = None

    async def _run(
        self, task_id: str, agent_id: str, c: Charge, budget: float | None, mode: str
    ) -> tuple[bool, float]:
        keys_ = [keys.usage(task_id), keys.usage_agent(task_id, agent_id)]
        args = [
            repr(float(c.cost_usd)),
            str(int(c.input_tokens)),
            str(int(c.output_tokens)),
            str(int(c.calls)),
            "" if budget is None else repr(float(budget)),
            mode,
        ]

        async def op(r: Any) -> Any:
            return await r.eval(_CHARGE, 2, *keys_, *args)

        ok, total = await self._manager.run(op)
        return bool(int(ok)), float(total)

    async def admit(
        self, task_id: str, agent_id: str, charge: Charge, budget: float | None
    ) -> tuple[bool, float]:
        return await self._run(task_id, agent_id, charge, budget, "admit")

    async def add(self, task_id: str, agent_id: str, charge: Charge) -> float:
        return (await self._run(task_id, agent_id, charge, None, "add"))[1]

    async def totals(self, task_id: str, agent_id: str | None = None) -> Totals:
        key = keys.usage(task_id) if agent_id is None else keys.usage_agent(task_id, agent_id)

        async def op(r: Any) -> Any:
            return await r.hgetall(key)

        return _totals(await self._manager.run(op))

    async def agents(self, task_id: str) -> dict[str, Totals]:
        """Totals per agent of a task (SCAN over ``usage:{task}:agent:*``)."""
        prefix = keys.usage_agent(task_id, "x")[:-1]

        async def op(r: Any) -> dict[str, Totals]:
            found: dict[str, Totals] = {}
            async for key in r.scan_iter(match=prefix + "*", count=200):
                found[str(key)[len(prefix) :]] = _totals(await r.hgetall(key))
            return found

        return await self._manager.run(op)

    async def record_call(self, record: CallRecord) -> None:
        key = keys.usage_calls(record.task_id)
        text = record.to_json()

        async def op(r: Any) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.lpush(key, text)
                pipe.ltrim(key, 0, self._keep - 1)
                return await pipe.execute()

        await self._manager.run(op)

    async def recent_calls(self, task_id: str, limit: int = 20) -> list[dict[str, Any]]:
        key = keys.usage_calls(task_id)

        async def op(r: Any) -> Any:
            return await r.lrange(key, 0, limit - 1)

        return [json.loads(item) for item in await self._manager.run(op)]


class StoreSink:
    """Adapts a ``record_llm_call(record)`` function (the SQL store's) to ``UsageSink``."""

    def __init__(self, record: Callable[[CallRecord], Awaitable[Any] | Any]) -> None:
        self._record = record

    async def record_call(self, record: CallRecord) -> None:
        result = self._record(record)
        if asyncio.iscoroutine(result):
            await result


async def record_everywhere(sinks: Sequence[UsageSink], record: CallRecord) -> None:
    """Give ``record`` to every sink; one failing sink is logged, not fatal to the call."""
    for sink in sinks:
        try:
            await sink.record_call(record)
        except Exception as exc:
            log.warning("usage sink %s failed to record a call: %s", type(sink).__name__, exc)
