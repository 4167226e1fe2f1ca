"""A task's events for one live client: the past ones, then the new ones as they come.

The orchestrator's JournalEventBus writes each event to SQL first, then XADDs it to
``events:{task}`` with its SQL id. A client that connects late gets:

1. the stream's last entry id ``L`` (XREVRANGE COUNT 1),
2. every event of the task from SQL (the durable log; the stream is capped),
   remembering the highest SQL id ``M`` sent,
3. then XREAD BLOCK from ``L`` on: entries whose SQL id is <= M were already
   sent in step 2 and are skipped, and so is an entry sent live already.

An event written to SQL before step 2 is sent by step 2; one written after
it is XADDed after step 1, so step 3 sees it. Nothing is lost or sent twice,
and nothing polls: step 3 blocks in Redis until an entry arrives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.store.repository import Store

#: Events the orchestrator keeps for itself (large, and no use to a viewer).
PRIVATE_KINDS = frozenset({"workspace:baseline"})
BLOCK_MS = 15_000
#: Live event ids remembered per client to drop a repeat (far more than are ever in flight).
LIVE_MEMORY = 20_000
BATCH = 500


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    replay: bool

    def payload(self, task_id: str) -> dict[str, Any]:
        """What a Socket.IO client gets: the event's own fields plus taskId and eventId."""
        return {**self.data, "taskId": task_id, "eventId": self.id, "replay": self.replay}


def _decode(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def past_events(store: Store, task_id: str, after: int = 0) -> list[Event]:
    out: list[Event] = []
    cursor = after
    while True:
        batch = await asyncio.to_thread(store.events, task_id, cursor, BATCH)
        for record in batch:
            if record.kind not in PRIVATE_KINDS:
                out.append(Event(record.id, record.kind, _decode(record.payload), True))
        if len(batch) < BATCH:
            return out
        cursor = batch[-1].id


async def task_events(
    redis: RedisManager, store: Store, task_id: str, block_ms: int = BLOCK_MS
) -> AsyncIterator[Event]:
    """Past events (``replay=True``), then live ones, forever (cancel to stop)."""
    stream = keys.events(task_id)
    last = await redis.run(lambda r: r.xrevrange(stream, "+", "-", count=1))
    cursor = str(last[0][0]) if last else "0-0"
    sent = 0
    for event in await past_events(store, task_id):
        sent = max(sent, event.id)
        yield event
    yield Event(0, "replay:done", {"lastEventId": sent}, True)
    # Two processes write a task's events (the orchestrator and the LLM gateway), each
    # SQL first, then XADD: the stream may hold id 9 before id 8. So after the replay,
    # an event is dropped only when it was sent already, not when a higher one was.
    live: set[int] = set()
    while True:
        reply: Any = await redis.run(
            lambda r, position=cursor: r.xread(  # type: ignore[misc]
                {stream: position}, count=BATCH, block=block_ms
            )
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                cursor = str(entry_id)
                try:
                    event_id = int(fields.get("id", 0))
                except (TypeError, ValueError):
                    continue
                if event_id <= sent or event_id in live:
                    continue
                live.add(event_id)
                if len(live) > LIVE_MEMORY:
                    live = {i for i in live if i > max(live) - LIVE_MEMORY // 2}
                kind = str(fields.get("kind", ""))
                if kind in PRIVATE_KINDS:
                    continue
                yield Event(event_id, kind, _decode(str(fields.get("data", "{}"))), False)
