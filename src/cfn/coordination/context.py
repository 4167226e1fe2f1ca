"""Task context (seed: store-context.sh): JSON values at ``context:{task}:{key}``."""

from __future__ import annotations

from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.coordination.validation import check_json, check_ttl

DEFAULT_MAX_BYTES = 1024 * 1024


async def store_context(
    redis: RedisManager,
    task_id: str,
    key: str,
    value: str,
    ttl: int | None = 3600,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Store JSON ``value``; checked (ids, JSON, size, TTL) before anything is written."""
    name = keys.context(task_id, key)
    check_json(value, "context value", max_bytes)
    if ttl is not None:
        check_ttl(ttl)
    await redis.run(lambda r: r.set(name, value, ex=ttl))


async def get_context(redis: RedisManager, task_id: str, key: str) -> Any | None:
    """The stored value, parsed; None when absent or expired."""
    name = keys.context(task_id, key)
    raw = await redis.run(lambda r: r.get(name))
    if raw is None:
        return None
    # Anyone with access to the task's keys may have written it: checked like a store.
    return check_json(str(raw), f"the value of {name}", 512 * 1024 * 1024)


async def get_context_raw(redis: RedisManager, task_id: str, key: str) -> str | None:
    name = keys.context(task_id, key)
    raw = await redis.run(lambda r: r.get(name))
    return None if raw is None else str(raw)


async def context_ttl(redis: RedisManager, task_id: str, key: str) -> int | None:
    """Seconds left, None for no expiry; -2 (Redis' own) never escapes: absent → None."""
    name = keys.context(task_id, key)
    ttl = int(await redis.run(lambda r: r.ttl(name)))
    return ttl if ttl >= 0 else None


async def delete_context(redis: RedisManager, task_id: str, key: str) -> bool:
    name = keys.context(task_id, key)
    return bool(await redis.run(lambda r: r.delete(name)))
