"""The loop's coordination port on Redis: the seed's keys, lists and streams.

Everything the orchestrator exchanges with agents and people while a task
runs goes through here: completions and payloads (``coord:{task}:complete``),
heartbeats, loop signals, the task context, the live event stream, and the
decision state and input that ``cfn decide`` and the portal use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from cfn import keys
from cfn.agents.heartbeat import HeartbeatMonitor
from cfn.agents.signals import record_agent_failure, send_stop
from cfn.coordination import completion, lease, signals
from cfn.coordination.completion import CollectReport
from cfn.coordination.connection import RedisManager
from cfn.coordination.context import store_context
from cfn.coordination.events import publish_event, recent_event_ids
from cfn.loop.ports import HeartbeatWatch

#: Transcript steps relayed per read.
STEP_BATCH = 200
#: Task context (the deliverables) lives a week and may be large.
CONTEXT_TTL = 7 * 24 * 3600
CONTEXT_MAX_BYTES = 16 * 1024 * 1024


class RedisBoard:
    """:class:`cfn.loop.ports.Coordination` on one Redis manager (and its failover)."""

    def __init__(self, redis: RedisManager) -> None:
        self.redis = redis

    async def collect(
        self,
        task_id: str,
        agent_ids: list[str],
        timeout: float,
        on_update: Callable[[CollectReport], None] | None = None,
    ) -> CollectReport:
        return await completion.collect_results(
            self.redis,
            task_id,
            len(agent_ids),
            0.0,
            timeout,
            agent_ids=agent_ids,
            on_update=on_update,
        )

    async def reported(self, task_id: str) -> set[str]:
        return await completion.reported_agents(self.redis, task_id)

    def lease(self, task_id: str) -> AbstractAsyncContextManager[None]:
        return lease.held(self.redis, task_id)

    async def record_failure(self, task_id: str, agent_id: str, reason: str) -> bool:
        return await record_agent_failure(self.redis, task_id, agent_id, reason)

    @asynccontextmanager
    async def heartbeats(
        self, task_id: str, interval: float, startup_grace: float
    ) -> AsyncIterator[HeartbeatWatch]:
        async with HeartbeatMonitor(
            self.redis, task_id, interval, startup_grace=startup_grace
        ) as monitor:
            yield monitor

    async def signal(self, task_id: str, channel: str, payload: dict[str, Any]) -> None:
        await signals.send_signal(self.redis, task_id, channel, json.dumps(payload))

    async def stop_agent(self, task_id: str, agent_id: str, reason: str) -> None:
        await send_stop(self.redis, task_id, agent_id, reason)

    async def store_context(self, task_id: str, key: str, value: object) -> None:
        await store_context(
            self.redis,
            task_id,
            key,
            json.dumps(value),
            ttl=CONTEXT_TTL,
            max_bytes=CONTEXT_MAX_BYTES,
        )

    async def publish_event(
        self, task_id: str, event_id: int, kind: str, payload: dict[str, Any]
    ) -> None:
        await publish_event(self.redis, task_id, event_id, kind, payload)

    async def recent_event_ids(self, task_id: str, count: int) -> list[int]:
        return await recent_event_ids(self.redis, task_id, count)

    async def agent_steps(
        self, task_id: str, agent_id: str, after: str, timeout: float
    ) -> tuple[str, list[dict[str, str]]]:
        key = keys.agent_steps(task_id, agent_id)
        block = int(timeout * 1000) if timeout > 0 else None
        reply: Any = await self.redis.run(
            lambda r: r.xread({key: after}, count=STEP_BATCH, block=block)
        )
        steps: list[dict[str, str]] = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                after = str(entry_id)
                steps.append({str(k): str(v) for k, v in fields.items()})
        return after, steps

    async def set_decision_state(self, task_id: str, state: dict[str, Any]) -> None:
        key = keys.decision(task_id)
        await self.redis.run(lambda r: r.set(key, json.dumps(state)))

    async def decision_state(self, task_id: str) -> dict[str, Any] | None:
        key = keys.decision(task_id)
        raw = await self.redis.run(lambda r: r.get(key))
        state = json.loads(raw) if raw else None
        return state if isinstance(state, dict) else None

    async def send_decision_input(self, task_id: str, message: dict[str, Any]) -> None:
        await signals.send_signal(self.redis, task_id, keys.DECISION_INPUT, json.dumps(message))

    async def wait_decision_input(self, task_id: str, timeout: float) -> Any:
        return await signals.wait_signal(self.redis, task_id, keys.DECISION_INPUT, timeout)
