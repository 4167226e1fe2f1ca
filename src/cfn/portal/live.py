"""Live data the portal pushes besides a task's event stream: heartbeats and the task list.

Heartbeats are Redis keys (``swarm:{task}:heartbeat:{agent}``, SET with a TTL
every interval), not events, and the task list spans every task. Rather than
have each dashboard re-read them over REST on a timer, the portal watches the
keys with keyspace notifications (:class:`cfn.coordination.watch.KeyWatch`)
and pushes what changed over Socket.IO:

- :class:`HeartbeatWatch`, one per watched task, shared by all its clients:
  wakes on any change of the task's heartbeat keys (a beat, its expiry, a
  delete), re-reads them (SCAN + MGET) and sends ``agent:heartbeat`` with the
  agents whose beat changed (``null`` for a beat that expired). A client that
  joins gets the whole current set first.
- :class:`TaskListWatch`, one per portal: wakes on any task's event stream
  (``events:*``: every task creation, start, iteration, agent and end is an
  event written after its SQL row), on the task queue and on the workers'
  presence keys (set, expired), re-reads the task list, the queue and the
  workers, and sends ``tasks:update`` when it changed.

The keys stay the source of truth, the notifications only say "look again":
a missed or doubled notification costs one re-read, never a wrong view. A
watch also re-reads after ``SAFETY_WAKE`` seconds without a notification (a
Redis that cannot send notifications is served by KeyWatch's bounded re-check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from cfn import keys
from cfn.agents.heartbeat import parse_beat
from cfn.coordination.connection import RedisManager
from cfn.coordination.watch import KeyWatch
from cfn.errors import CfnError
from cfn.loop.worker import worker_summary
from cfn.portal import views
from cfn.store.repository import Store

log = logging.getLogger(__name__)

#: After a wake, wait this long before re-reading: one read covers a burst of changes.
BEAT_DEBOUNCE = 0.2
LIST_DEBOUNCE = 0.5
#: Re-read after this long without any notification.
SAFETY_WAKE = 30.0
#: After a Redis or database error, try again after this long.
RETRY = 2.0
TASK_LIST_LIMIT = 100

#: Without stream notifications (a Redis that refuses CONFIG SET): re-read this often.
NO_NOTIFY_WAKE = 2.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def ensure_stream_notifications(redis: RedisManager) -> bool:
    """Add the stream flag (``t``: XADD, XDEL, consumer groups) to the server's keyspace
    notifications, keeping the flags already set; False where CONFIG is refused.

    cfn's own Redis configurations (embedded, compose) set ``Klgxt``; a Redis
    configured elsewhere may lack ``t``, and the task list wakes on XADDs to the
    event streams and the queue, so the portal adds it the way KeyWatch adds its own.
    """

    async def op(r: Any) -> bool:
        current = str(
            (await r.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
        )
        if "t" in current or "A" in current:
            return True
        flags = current if "K" in current or "E" in current else current + "K"
        await r.config_set("notify-keyspace-events", flags + "t")
        return True

    try:
        return await redis.run(op)
    except ResponseError as exc:
        log.warning(
            "stream keyspace notifications cannot be enabled (%s): the task list is "
            "re-read every %.0f s instead",
            exc,
            NO_NOTIFY_WAKE,
        )
        return False


async def read_heartbeats(redis: RedisManager, task_id: str) -> dict[str, str]:
    """Every live heartbeat of a task: agent id -> raw value (SCAN MATCH + one MGET)."""
    pattern = keys.heartbeat_pattern(task_id)
    prefix = pattern[:-1]

    async def op(r: Any) -> dict[str, str]:
        names = [str(k) async for k in r.scan_iter(match=pattern, count=1000)]
        if not names:
            return {}
        values = await r.mget(names)
        return {n: str(v) for n, v in zip(names, values, strict=True) if v is not None}

    raw = await redis.run(op)
    return {name[len(prefix) :]: value for name, value in raw.items()}


class HeartbeatWatch:
    """One task's heartbeats, pushed to its subscribers as they change."""

    def __init__(self, redis: RedisManager, task_id: str, send: Send) -> None:
        self.redis = redis
        self.task_id = keys.validate_id(task_id, "task id")
        self.send = send
        self.current: dict[str, str] = {}
        self.read_once = False
        self.reads = 0

    def payload(self, beats: dict[str, dict[str, Any] | None], full: bool) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "heartbeats": beats,
            "full": full,
            "serverTime": time.time(),
        }

    def full(self) -> dict[str, Any]:
        """Every current beat (for a client that joins)."""
        return self.payload({a: parse_beat(v) for a, v in self.current.items()}, True)

    async def step(self) -> None:
        """Re-read the beats and send the ones that changed."""
        fresh = await read_heartbeats(self.redis, self.task_id)
        changed: dict[str, dict[str, Any] | None] = {
            a: parse_beat(v) for a, v in fresh.items() if self.current.get(a) != v
        }
        changed.update({a: None for a in self.current if a not in fresh})
        first = not self.read_once
        self.current = fresh
        self.read_once = True
        self.reads += 1
        if changed or first:
            await self.send(self.payload(changed, first))

    async def run(self) -> None:
        """Until cancelled: wake on any change of the task's heartbeat keys, re-read, send."""
        while True:
            try:
                async with KeyWatch(self.redis, [keys.heartbeat_pattern(self.task_id)]) as watch:
                    while True:
                        await self.step()
                        await watch.wait(SAFETY_WAKE)
                        await asyncio.sleep(BEAT_DEBOUNCE)
            except CfnError as exc:
                log.warning("heartbeat watch of %s: %s; retrying", self.task_id, exc)
                await asyncio.sleep(RETRY)


class TaskListWatch:
    """The task list, the queue and the workers, pushed when they change."""

    def __init__(
        self,
        redis: RedisManager,
        store: Store,
        send: Send,
        limit: int = TASK_LIST_LIMIT,
    ) -> None:
        self.redis = redis
        self.store = store
        self.send = send
        self.limit = limit
        self.last: dict[str, Any] | None = None
        self.reads = 0

    async def read(self) -> dict[str, Any]:
        tasks = await views.list_tasks(self.store, self.limit)
        summary = await worker_summary(self.redis)
        running_on = summary.pop("taskWorkers")
        for task in tasks:
            task["runner"] = views.runner_of(task, running_on)
        return {"tasks": tasks, "queue": summary}

    async def step(self) -> None:
        data = await self.read()
        self.reads += 1
        if data != self.last:
            self.last = data
            await self.send(data)

    async def run(self) -> None:
        while True:
            try:
                patterns = [
                    keys.events_pattern(),
                    keys.task_queue(),
                    keys.worker_presence_pattern(),
                ]
                notified = await ensure_stream_notifications(self.redis)
                async with KeyWatch(self.redis, patterns) as watch:
                    while True:
                        await self.step()
                        woke = await watch.wait(SAFETY_WAKE if notified else NO_NOTIFY_WAKE)
                        if not woke:
                            # Quiet for a while: a server that failed over may have lost
                            # the flag; set it again (one CONFIG GET when it is there).
                            notified = await ensure_stream_notifications(self.redis)
                        await asyncio.sleep(LIST_DEBOUNCE)
            except CfnError as exc:
                log.warning("task list watch: %s; retrying", exc)
                await asyncio.sleep(RETRY)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a watch task and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
