"""What the gateway records of each call, off the request's path.

Per call (one ``CallRecord`` from ``LLMService``): a row in ``llm_calls``
(tokens, cost, latency, status, ``via='gateway'``), an ``llm:call`` event in
the task's log and live stream, and the Redis ledger's recent-calls list. The
budget itself is settled inline by the service (it must be, to stop a call);
the history is written by one background task so a reply is not held up by
SQL. ``aclose()`` drains what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cfn.coordination.connection import RedisManager
from cfn.coordination.events import publish_event
from cfn.providers.usage import CallRecord, UsageSink, record_everywhere
from cfn.store.repository import Store

log = logging.getLogger(__name__)

#: The event every LLM call becomes on its task's stream.
LLM_CALL_EVENT = "llm:call"
QUEUE_LIMIT = 10_000


def call_event(record: CallRecord) -> dict[str, Any]:
    """The ``llm:call`` event's payload (camelCase, as the portal's other events)."""
    return {
        "agentId": record.agent_id,
        "provider": record.provider,
        "model": record.model,
        "offline": record.offline,
        "inputTokens": record.input_tokens,
        "outputTokens": record.output_tokens,
        "costUsd": round(record.cost_usd, 8),
        "latencyMs": round(record.latency_ms, 2),
        "status": record.status,
        "streamed": record.streamed,
        "error": record.error,
        "hops": [h.describe() for h in record.hops],
        "ts": record.started_at,
    }


class StoreRecorder:
    """``llm_calls`` row plus ``llm:call`` event (SQL first, then the live stream)."""

    def __init__(self, store: Store, redis: RedisManager | None) -> None:
        self.store = store
        self.redis = redis

    async def record_call(self, record: CallRecord) -> None:
        payload = call_event(record)

        def write() -> int:
            self.store.record_llm_call(
                provider=record.provider,
                model=record.model,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                cost_usd=max(0.0, record.cost_usd),
                task_id=record.task_id,
                agent_id=record.agent_id,
                latency_ms=max(0.0, record.latency_ms),
                status=record.status,
                via="gateway",
            )
            return self.store.append_event(LLM_CALL_EVENT, payload, record.task_id)

        event_id = await asyncio.to_thread(write)
        if self.redis is not None:
            await publish_event(self.redis, record.task_id, event_id, LLM_CALL_EVENT, payload)


class BackgroundSinks:
    """A ``UsageSink`` that queues records for ``sinks`` and writes them in one task."""

    def __init__(self, sinks: list[UsageSink]) -> None:
        self.sinks = sinks
        self._queue: asyncio.Queue[CallRecord | None] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0

    async def record_call(self, record: CallRecord) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:  # SQL is far behind: write this one inline
            log.warning("call history is %d records behind; writing inline", QUEUE_LIMIT)
            await record_everywhere(self.sinks, record)

    async def _drain(self) -> None:
        while True:
            record = await self._queue.get()
            try:
                if record is None:
                    return
                await record_everywhere(self.sinks, record)
                self.recorded += 1
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        if self._task is not None and not self._task.done():
            await self._queue.join()

    async def aclose(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
