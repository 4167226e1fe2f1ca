"""A task's live event stream: ``events:{task}``, one entry per event.

Wire format of one entry (XADD fields, all strings)::

    id    the event's id in the SQL ``events`` table (the durable log)
    kind  the event name, e.g. ``agent:update``, ``agent:step``, ``llm:call``
    data  the event's payload as a JSON object

Writers put the event in SQL first and publish it here with that id, so a
reader that replays SQL and then follows the stream drops what it has seen
(``cfn.portal.feed``). The stream is capped (approximately) at
``STREAM_MAXLEN`` entries; SQL keeps everything.
"""

from __future__ import annotations

import json
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager

STREAM_MAXLEN = 10_000


def entry(event_id: int, kind: str, payload: dict[str, Any]) -> dict[str, str]:
    """The stream entry's fields for one event."""
    return {"id": str(event_id), "kind": kind, "data": json.dumps(payload, default=str)}


async def publish_event(
    redis: RedisManager, task_id: str, event_id: int, kind: str, payload: dict[str, Any]
) -> None:
    """XADD one event (already in SQL with ``event_id``) to ``events:{task}``."""
    fields = entry(event_id, kind, payload)
    stream = keys.events(task_id)
    await redis.run(
        lambda r: r.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
    )


async def recent_event_ids(redis: RedisManager, task_id: str, count: int) -> list[int]:
    """The SQL ids of the last ``count`` entries of ``events:{task}`` (entries that are
    not cfn's, with no readable id, are passed over)."""
    stream = keys.events(task_id)
    reply: Any = await redis.run(lambda r: r.xrevrange(stream, "+", "-", count=count))
    ids: list[int] = []
    for _entry_id, fields in reply or []:
        raw = fields.get("id") if isinstance(fields, dict) else None
        if isinstance(raw, str) and raw.isdigit() and len(raw) < 20:
            ids.append(int(raw))
    return ids
