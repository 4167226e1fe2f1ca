"""Waking on key changes without polling: Redis keyspace notifications.

A ``KeyWatch`` subscribes to the keyspace channels of some key patterns and
``wait()`` returns as soon as any of those keys changes (or the time is up).
Callers re-read their keys after every wake, so a missed or duplicate event
never loses data: the keys stay the source of truth, the events only say
"look again now".

The embedded Redis has notifications on. On another Redis, the first watch
adds the flags it needs with CONFIG SET (keeping the ones already there). Where
CONFIG is refused (managed services, ACLs), notifications cannot be enabled:
then ``wait()`` degrades to re-checking at a bounded interval (starting at
10 ms, backing off to 250 ms) and says so once in the log. That is the one
place cfn polls, and only on such servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from cfn.coordination.connection import FAILOVER_ERRORS, RedisManager
from cfn.keys import keyspace_channel

log = logging.getLogger(__name__)

REQUIRED_FLAGS = "Klgx"
POLL_MIN, POLL_MAX = 0.01, 0.25

#: Per client: whether its server publishes the events we need (checked once).
_checked: weakref.WeakKeyDictionary[aioredis.Redis, tuple[int, bool]] = weakref.WeakKeyDictionary()


async def ensure_notifications(client: aioredis.Redis, generation: int = 0) -> bool:
    """True when ``client``'s server publishes the keyspace events cfn waits on.

    Checked once per client and ``generation`` (the manager's count of server
    switches: a promoted replica may have been configured differently).
    """
    known = _checked.get(client)
    if known is not None and known[0] == generation:
        return known[1]
    try:
        current = (await client.config_get("notify-keyspace-events")).get(
            "notify-keyspace-events", ""
        )
        flags = set(str(current))
        have_all = "A" in flags
        missing = [f for f in REQUIRED_FLAGS if f not in flags and not (have_all and f in "lgx")]
        if missing:
            await client.config_set("notify-keyspace-events", str(current) + "".join(missing))
        ok = True
    except ResponseError as exc:
        log.warning(
            "Redis keyspace notifications cannot be enabled (%s); waits fall back to "
            "re-checking every %d ms",
            exc,
            int(POLL_MAX * 1000),
        )
        ok = False
    _checked[client] = (generation, ok)
    return ok


class KeyWatch:
    """``async with KeyWatch(manager, patterns) as w: ... await w.wait(timeout)``."""

    def __init__(self, manager: RedisManager, key_patterns: list[str]) -> None:
        self.manager = manager
        self.key_patterns = key_patterns
        self._pubsub: PubSub | None = None
        self._client: aioredis.Redis | None = None
        self._notifications = False
        self._poll = POLL_MIN
        self._moved = manager.moved_event()
        self._retry: tuple[Any, Any] | None = None

    async def __aenter__(self) -> KeyWatch:
        await self._subscribe()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._retry is not None:
            connection, retry = self._retry  # the connection goes back to the pool
            connection.retry = retry
            self._retry = None
        if self._pubsub is not None:
            with contextlib.suppress(*FAILOVER_ERRORS):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            self._pubsub = None

    async def _subscribe(self) -> None:
        """Subscribe on the active server and wait for the confirmations.

        Waiting for the confirmations matters: only then is every later change
        guaranteed to produce an event, so a read done after this returns
        cannot miss a write that has no event.
        """

        async def attempt(client: aioredis.Redis) -> tuple[aioredis.Redis, bool]:
            enabled = await ensure_notifications(client, self.manager.generation)
            if enabled:
                pubsub = client.pubsub()
                try:
                    channels = [keyspace_channel(self.manager.db, p) for p in self.key_patterns]
                    await pubsub.psubscribe(*channels)
                    confirmed = 0
                    while confirmed < len(channels):
                        msg = await pubsub.get_message(timeout=5.0)
                        if msg is not None and msg.get("type") == "psubscribe":
                            confirmed += 1
                    if self.manager.follows_sentinel and pubsub.connection is not None:
                        # redis-py re-subscribes a dropped subscription by itself and
                        # says nothing, so what changed meanwhile would never wake us.
                        # When the master moves the manager closes every connection to
                        # it: without retries that reaches wait() as an error.
                        self._retry = (pubsub.connection, pubsub.connection.retry)
                        pubsub.connection.retry = Retry(NoBackoff(), 0)
                except BaseException:
                    with contextlib.suppress(*FAILOVER_ERRORS):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                    raise
                self._pubsub = pubsub
            return client, enabled

        await self._close()
        self._moved = self.manager.moved_event()
        self._client, self._notifications = await self.manager.run(attempt)
        self._poll = POLL_MIN

    @property
    def uses_notifications(self) -> bool:
        return self._notifications

    async def wait(self, timeout: float) -> bool:
        """Block until a watched key changes (True) or ``timeout`` passes (False).

        A lost subscription (the server died) counts as a change: the watch
        re-subscribes, on the fallback if need be, and the caller re-reads.
        """
        if timeout <= 0:
            return False
        if not self._notifications or self._pubsub is None:
            delay = min(self._poll, timeout)
            await asyncio.sleep(delay)
            self._poll = min(self._poll * 2, POLL_MAX)
            return delay < timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._moved.is_set():
                # The Sentinel moved the master: this subscription is on the old one.
                await self._subscribe()
                return True
            try:
                msg: dict[str, Any] | None = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=remaining
                )
            except FAILOVER_ERRORS as exc:
                if self._client is not None:
                    self.manager.report_failure(self._client, exc)
                await self._subscribe()
                return True
            if msg is not None and msg.get("type") == "pmessage":
                # Drain whatever else already arrived: one re-read covers it all.
                with contextlib.suppress(*FAILOVER_ERRORS):
                    while await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0):
                        pass
                return True
