"""Signals (seed: signal.sh send|wait) on ``coord:{task}:{channel}``.

A signal is a JSON payload pushed onto the channel's list; ``wait`` pops one
with BLPOP, so it wakes the moment a signal arrives and never polls. Signals
sent before anyone waits are kept and delivered in order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from cfn import keys
from cfn.coordination.connection import RedisManager, is_wrong_type
from cfn.coordination.validation import check_json, check_timeout
from cfn.errors import WaitTimeoutError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024 * 1024


async def send_signal(
    redis: RedisManager,
    task_id: str,
    channel: str,
    payload: str = "{}",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Push ``payload`` (JSON) on the channel; returns how many signals now wait there."""
    name = keys.coord(task_id, channel)
    check_json(payload, "signal payload", max_bytes)
    try:
        return int(await redis.run(lambda r: r.lpush(name, payload)))
    except ResponseError as exc:
        if not is_wrong_type(exc):
            raise
    # Something other than cfn made the channel a string (an agent that shares the
    # orchestrator's credentials, CFN_REDIS_AGENT_ACL off, may write any of them): what
    # it held is gone already, so the channel starts again with this signal, in one
    # transaction, instead of the sender crashing.
    log.warning("%s was not a list (overwritten by something other than cfn); replaced", name)

    async def replace(r: Any) -> int:
        async with r.pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.lpush(name, payload)
            _deleted, count = await pipe.execute()
        return int(count)

    return await redis.run(replace)


async def wait_signal(redis: RedisManager, task_id: str, channel: str, timeout: float) -> Any:
    """Take the oldest signal on the channel, waiting up to ``timeout`` seconds for one."""
    name = keys.coord(task_id, channel)
    check_timeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # BRPOP: signals are LPUSHed, so the oldest one is at the tail.
        item = await redis.run(_brpop(name, remaining))
        if item is not None:
            _key, raw = item
            return _parse(raw)
        # A None here is BRPOP's own timeout; the loop ends on the deadline.
    raise WaitTimeoutError(f"no signal on {name} within {timeout:g} s")


def _brpop(name: str, timeout: float) -> Callable[[Any], Awaitable[Any]]:
    async def op(r: Any) -> Any:
        return await r.brpop([name], timeout=timeout)

    return op


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
