"""One orchestrator per task: a lease in Redis.

``lease:task:{task}`` holds its holder (JSON: where it runs, its pid and that
process's start time, since when, a random token) with a TTL of ``LEASE_TTL``
seconds that the holder renews every ``RENEW_EVERY``. A second orchestrator for
the same task (a second ``cfn resume``, a worker that claimed the task) is told
who holds it and goes away. A holder that died is taken over:

* on this machine at once, when its pid is gone (or is another process now): the
  pid is only compared where it means the same thing, the same host, boot and pid
  namespace (``place``);
* elsewhere once its TTL runs out, as nobody renews it any more.

Renewing and releasing are compare-and-act scripts on the holder's exact value, so
a holder whose lease was taken over (it stalled past the TTL) cannot renew or
delete the new holder's; it learns that it lost the task and stops (:func:`held`).
The SQL writes a stalled holder may have in flight when it learns this are not
fenced: the store keeps no lease number. A lease that lapsed with nobody taking it
(Redis away longer than the TTL, or restarted without it) is simply taken again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.coordination.locks import COMPARE_AND_DELETE, COMPARE_AND_PEXPIRE
from cfn.errors import CfnError, TaskLeaseError
from cfn.system.proc import proc_alive, proc_start_ticks

log = logging.getLogger(__name__)

LEASE_TTL = 30.0
_TTL_MS = int(LEASE_TTL * 1000)
RENEW_EVERY = 10.0
#: A lease value longer than this is not one of ours (read as an unknown holder).
MAX_VALUE = 4096

_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def _script(source: str, key: str, *args: object) -> Callable[[Any], Awaitable[Any]]:
    """A Lua script on one key, as an operation for RedisManager.run."""

    async def run(r: Any) -> Any:
        return await r.eval(source, 1, key, *args)

    return run


async def _take_free(redis: RedisManager, key: str, value: str) -> bool:
    """SET the lease to ``value`` when nobody holds it."""
    return bool(await redis.run(lambda r: r.set(key, value, nx=True, px=_TTL_MS)))


def _place() -> str:
    """Where a pid names a process: host, boot and pid namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = "?"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}/{boot}/{namespace}"


@dataclass(frozen=True)
class Holder:
    host: str
    place: str
    pid: int
    start: int | None
    since: float
    token: str

    @classmethod
    def here(cls) -> Holder:
        pid = os.getpid()
        return cls(
            socket.gethostname(),
            _place(),
            pid,
            proc_start_ticks(pid),
            round(time.time(), 3),
            secrets.token_hex(8),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, raw: object) -> Holder | None:
        """A holder from a lease value; None for anything that is not one (never raises)."""
        if not isinstance(raw, str) or len(raw) > MAX_VALUE:
            return None
        try:
            data = json.loads(raw)
            holder = cls(
                str(data["host"]),
                str(data["place"]),
                int(data["pid"]),
                None if data["start"] is None else int(data["start"]),
                float(data["since"]),
                str(data["token"]),
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        return holder

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} (since {since})"

    def gone(self) -> bool:
        """Whether this holder's process is known to have ended (only knowable here)."""
        return self.place == _place() and not proc_alive(self.pid, self.start)


async def acquire(redis: RedisManager, task_id: str, me: Holder | None = None) -> str:
    """Take the task's lease; returns the value held (for :func:`renew`, :func:`release`).

    TaskLeaseError naming the holder when a live orchestrator (or one that may be
    alive, elsewhere) holds it.
    """
    key = keys.task_lease(task_id)
    value = (me or Holder.here()).to_json()
    for _attempt in range(3):
        if await _take_free(redis, key, value):
            return value
        raw = await redis.run(lambda r: r.get(key))
        if raw is None:
            continue  # it expired or was released meanwhile
        holder = Holder.parse(raw)
        if holder is not None and holder.gone():
            swapped = await redis.run(_script(_SWAP, key, raw, value, _TTL_MS))
            if int(swapped) == 1:
                log.warning(
                    "task %s: took over from %s, which has ended", task_id, holder.describe()
                )
                return value
            continue  # someone else was faster: look again
        ttl = await redis.run(lambda r: r.pttl(key))
        who = holder.describe() if holder is not None else "an unknown holder"
        raise TaskLeaseError(
            f"task {task_id} is run by {who}; this one leaves it alone (the lease lapses "
            f"{max(int(ttl), 0) / 1000:g} s after its holder stops renewing it)"
        )
    raise TaskLeaseError(f"task {task_id}: its lease changed hands three times while looking")


async def renew(redis: RedisManager, task_id: str, value: str) -> bool:
    """Reset the lease's TTL; False when it is no longer ``value`` (lost)."""
    key = keys.task_lease(task_id)
    return int(await redis.run(_script(COMPARE_AND_PEXPIRE, key, value, _TTL_MS))) == 1


async def _reclaim(redis: RedisManager, task_id: str, value: str) -> bool:
    """Take the lease again when nobody holds it: it lapsed while Redis was away (or a
    restarted Redis lost it). False when another holder has it."""
    if await _take_free(redis, keys.task_lease(task_id), value):
        log.warning("task %s: its lease had lapsed (Redis away?); taken again", task_id)
        return True
    return False


async def release(redis: RedisManager, task_id: str, value: str) -> None:
    """Give the lease up, when it is still ``value``."""
    key = keys.task_lease(task_id)
    await redis.run(_script(COMPARE_AND_DELETE, key, value))


@contextlib.asynccontextmanager
async def held(
    redis: RedisManager, task_id: str, *, renew_every: float = RENEW_EVERY
) -> AsyncIterator[None]:
    """Hold the task's lease for the block, renewing it; the block is cancelled, and
    TaskLeaseError raised, if it is lost (taken over after a stall past the TTL)."""
    value = await acquire(redis, task_id)
    owner = asyncio.current_task()
    lost: list[str] = []

    async def keep() -> None:
        while True:
            await asyncio.sleep(renew_every)
            try:
                if await renew(redis, task_id, value) or await _reclaim(redis, task_id, value):
                    continue
            except CfnError as exc:  # Redis away for now: the TTL gives it time
                log.warning("task %s: could not renew its lease (%s)", task_id, exc)
                continue
            lost.append("the lease was taken over while this orchestrator stalled")
            if owner is not None:
                owner.cancel()
            return

    keeper = asyncio.create_task(keep(), name=f"lease:{task_id}")
    try:
        yield
    except asyncio.CancelledError:
        if lost and owner is not None:
            owner.uncancel()  # our own cancellation, turned into the error below
            raise TaskLeaseError(f"task {task_id}: {lost[0]}; it stops here") from None
        raise
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        if not lost:
            with contextlib.suppress(CfnError):
                await release(redis, task_id, value)
