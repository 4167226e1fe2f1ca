"""Locks with owner tokens and fencing numbers.

``lock:{resource}`` holds the holder's random token with the lock's TTL (the
seed puts the expiry in the key name; a TTL is what lets a second acquirer
find the lock). Acquisition also increments ``lock:{resource}:fence``, which
never expires, so every holder gets a strictly larger fencing number than the
one before it and a storage layer can refuse writes from a stale holder.
Release and extend are compare-and-act Lua scripts: only the holder can.

Waiting for a busy lock does not poll: the waiter sleeps until the lock is
deleted or expires (keyspace event), or at the latest until its TTL runs out.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.coordination.validation import check_timeout
from cfn.coordination.watch import KeyWatch
from cfn.errors import InvalidInputError, LockNotHeldError, WaitTimeoutError

MAX_TTL_MS = 24 * 3600 * 1000

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

#: Delete KEYS[1] only while it holds ARGV[1] (also the task lease's release).
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Reset KEYS[1]'s TTL to ARGV[2] ms only while it holds ARGV[1] (also the lease's renewal).
COMPARE_AND_PEXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class LockHandle:
    resource: str
    token: str
    fence: int
    ttl_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "token": self.token,
            "fence": self.fence,
            "ttl_ms": self.ttl_ms,
        }


def _ttl_ms(ttl: float) -> int:
    check_timeout(ttl, "lock ttl")
    ms = int(ttl * 1000)
    if not 0 < ms <= MAX_TTL_MS:
        raise InvalidInputError(f"lock ttl must be between 1 ms and 24 h, got {ttl!r} s")
    return ms


async def try_acquire(redis: RedisManager, resource: str, ttl: float) -> LockHandle | int:
    """The lock, or how many ms it stays taken (its PTTL) when someone holds it."""
    key, fence_key = keys.lock(resource), keys.lock_fence(resource)
    ms = _ttl_ms(ttl)
    token = secrets.token_hex(16)
    got, number = await redis.run(lambda r: r.eval(_ACQUIRE, 2, key, fence_key, token, ms))
    if int(got) == 1:
        return LockHandle(resource, token, int(number), ms)
    return max(int(number), 0)


async def acquire_lock(
    redis: RedisManager, resource: str, ttl: float, wait: float | None = None
) -> LockHandle:
    """Take the lock; with ``wait``, wait up to that many seconds for it to be free."""
    if wait is not None:
        check_timeout(wait, "lock wait")
    deadline = time.monotonic() + (wait or 0.0)
    first = await try_acquire(redis, resource, ttl)
    if isinstance(first, LockHandle):
        return first
    if wait is None:
        raise WaitTimeoutError(f"lock {resource!r} is held by someone else for {first} ms more")
    async with KeyWatch(redis, [keys.lock(resource)]) as watch:
        busy_ms = first
        while True:
            attempt = await try_acquire(redis, resource, ttl)
            if isinstance(attempt, LockHandle):
                return attempt
            busy_ms = attempt
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Wake on DEL/expiry events, or when the TTL says it must be free.
            bound = busy_ms / 1000 + 0.001 if busy_ms > 0 else remaining
            await watch.wait(min(remaining, bound))
    raise WaitTimeoutError(
        f"lock {resource!r} still held after waiting {wait:g} s ({busy_ms} ms left on it)"
    )


async def release_lock(redis: RedisManager, resource: str, token: str) -> None:
    """Release, only when ``token`` still holds the lock."""
    key = keys.lock(resource)
    released = await redis.run(lambda r: r.eval(COMPARE_AND_DELETE, 1, key, token))
    if int(released) != 1:
        raise LockNotHeldError(
            f"lock {resource!r} is not held with that token (expired, released, or taken by "
            "someone else): nothing released"
        )


async def extend_lock(redis: RedisManager, resource: str, token: str, ttl: float) -> None:
    """Reset the lock's TTL to ``ttl`` seconds, only for the holder."""
    key = keys.lock(resource)
    ms = _ttl_ms(ttl)
    extended = await redis.run(lambda r: r.eval(COMPARE_AND_PEXPIRE, 1, key, token, ms))
    if int(extended) != 1:
        raise LockNotHeldError(f"lock {resource!r} is not held with that token: not extended")
