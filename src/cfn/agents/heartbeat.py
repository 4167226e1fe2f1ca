"""Agent heartbeats, and noticing when they stop (crashed or hung agents).

An agent beats with ``SET swarm:{task}:heartbeat:{agent} <json> PX 2*interval``
(``{"ts": ..., "pid": ..., "status": ...}``): the key lives exactly as long
as the agent has to beat again, twice over. The same from bash::

    redis-cli SET "$HB_KEY" "{\\"ts\\":$(date +%s),\\"pid\\":$$,\\"status\\":\\"running\\"}" \\
        PX "$HB_TTL_MS"

``HeartbeatMonitor`` learns that a heartbeat is gone from Redis's keyspace
``expired`` event (through ``KeyWatch``), so a hung agent is detected within
twice the interval of its last beat, without polling. It first sets a
placeholder beat for each agent it is told to watch (``status: spawned``,
with a start-up grace), so an agent that never beats at all lapses too.

A last beat with a final status (``done``, ``failed``, ``stopped``) tells
the monitor the agent finished: its key expiring then is no lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.coordination.validation import check_timeout
from cfn.coordination.watch import KeyWatch
from cfn.errors import InvalidInputError

RUNNING = "running"
SPAWNED = "spawned"
FINAL_STATUSES = frozenset({"done", "failed", "stopped", "exited"})
MIN_STARTUP_GRACE = 10.0


def check_interval(interval: float) -> float:
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or not 0 < interval <= 3600
    ):
        raise InvalidInputError(
            f"heartbeat interval must be a number of seconds above 0 and at most 3600, "
            f"got {interval!r}"
        )
    return float(interval)


def ttl_ms(interval: float) -> int:
    """The key's time to live: twice the interval, in milliseconds."""
    return max(1, round(2 * check_interval(interval) * 1000))


def _status(value: str) -> str:
    return keys.validate_id(value, "heartbeat status")


async def beat(
    redis: RedisManager,
    task_id: str,
    agent_id: str,
    interval: float,
    *,
    status: str = RUNNING,
    pid: int | None = None,
    ttl: float | None = None,
) -> None:
    """One heartbeat: ``SET swarm:{task}:heartbeat:{agent} {ts,pid,status} PX 2*interval``.

    ``ttl`` (seconds) overrides the lifetime, e.g. to keep a final beat around longer.
    """
    key = keys.heartbeat(task_id, agent_id)
    millis = ttl_ms(interval) if ttl is None else max(1, round(check_timeout(ttl, "ttl") * 1000))
    value = json.dumps(
        {"ts": time.time(), "pid": os.getpid() if pid is None else pid, "status": _status(status)}
    )
    await redis.run(lambda r: r.set(key, value, px=millis))


async def read_heartbeat(redis: RedisManager, task_id: str, agent_id: str) -> dict[str, Any] | None:
    """The agent's last beat, or None when it has expired (or never came)."""
    key = keys.heartbeat(task_id, agent_id)
    return _parse(await redis.run(lambda r: r.get(key)))


#: A beat is ``{"ts", "pid", "status"}``: far below this; a longer value is not a beat.
MAX_BEAT_BYTES = 4096
#: Above the kernel's largest pid_max.
MAX_PID = 1 << 22


def parse_beat(raw: object) -> dict[str, Any] | None:
    """A heartbeat value as everyone reads it: ``{"status", "ts", "pid"}``, or None.

    An agent writes its own beat, so the value is untrusted: anything that is not a
    small JSON object is None, and each field that is not what it should be (a status
    id, a finite time, a pid) is None in the result. NaN, infinities, nesting, huge
    values and other types therefore never reach a reader (a dashboard answering 500,
    an age of NaN)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str) or len(raw) > MAX_BEAT_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    if not isinstance(value, dict):
        return None
    status, ts, pid = value.get("status"), value.get("ts"), value.get("pid")
    return {
        "status": status if isinstance(status, str) and keys.ID_PATTERN.fullmatch(status) else None,
        "ts": float(ts)
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts)
        else None,
        "pid": pid
        if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < MAX_PID
        else None,
    }


def _parse(raw: Any) -> dict[str, Any] | None:
    """For the watch: a key that exists is a live agent, whatever its value holds."""
    if raw is None:
        return None
    beat = parse_beat(raw)
    if beat is None or beat["status"] is None:
        return {"status": RUNNING, "ts": None if beat is None else beat["ts"], "pid": None}
    return beat


class Heartbeater:
    """Beats in the background while an agent works (``async with``).

    On exit it sends a final beat: ``done``, or ``failed`` when the block
    raised, so the monitor knows the end was not a hang.
    """

    def __init__(
        self,
        redis: RedisManager,
        task_id: str,
        agent_id: str,
        interval: float,
        *,
        pid: int | None = None,
    ) -> None:
        keys.heartbeat(task_id, agent_id)
        self.redis = redis
        self.task_id = task_id
        self.agent_id = agent_id
        self.interval = check_interval(interval)
        self.pid = pid
        self.status = RUNNING
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    async def beat(self, status: str | None = None) -> None:
        if status is not None:
            self.status = _status(status)
        await beat(
            self.redis,
            self.task_id,
            self.agent_id,
            self.interval,
            status=self.status,
            pid=self.pid,
        )
        self.beats += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:  # noqa: S112 - a missed beat is retried on the next tick
                continue

    async def __aenter__(self) -> Heartbeater:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.agent_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        final = "failed" if exc_type is not None else "done"
        with contextlib.suppress(Exception):
            await self.beat(final)


@dataclass(frozen=True)
class Lapse:
    """A watched agent whose heartbeat expired without a final status."""

    agent_id: str
    last: dict[str, Any] | None
    detected_at: float

    @property
    def never_beat(self) -> bool:
        return self.last is None or self.last.get("status") == SPAWNED

    @property
    def reason(self) -> str:
        if self.never_beat:
            return "no heartbeat since it was spawned"
        ts = self.last.get("ts") if self.last else None
        if isinstance(ts, int | float):
            return f"heartbeat lapsed ({self.detected_at - ts:.1f} s since its last beat)"
        return "heartbeat lapsed"


class HeartbeatMonitor:
    """Watches the heartbeats of one task's agents; reports the ones that stop.

    ::

        async with HeartbeatMonitor(redis, task, interval) as monitor:
            await monitor.watch("impl-1-1")
            lapses = await monitor.wait_lapsed(timeout)   # [] on timeout
    """

    def __init__(
        self,
        redis: RedisManager,
        task_id: str,
        interval: float,
        *,
        startup_grace: float | None = None,
    ) -> None:
        self.redis = redis
        self.task_id = keys.validate_id(task_id, "task id")
        self.interval = check_interval(interval)
        self.startup_grace = (
            check_timeout(startup_grace, "startup grace")
            if startup_grace is not None
            else max(2 * self.interval, MIN_STARTUP_GRACE)
        )
        self._watching: dict[str, dict[str, Any] | None] = {}
        self._finished: dict[str, dict[str, Any]] = {}
        self._watch: KeyWatch | None = None
        self._generation = redis.generation

    async def __aenter__(self) -> HeartbeatMonitor:
        self._watch = KeyWatch(self.redis, [keys.heartbeat_pattern(self.task_id)])
        await self._watch.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watch is not None:
            await self._watch.__aexit__(exc_type, exc, tb)
            self._watch = None

    @property
    def watching(self) -> list[str]:
        return sorted(self._watching)

    def last(self, agent_id: str) -> dict[str, Any] | None:
        """The last beat seen from ``agent_id`` (while watched or after it finished)."""
        return self._watching.get(agent_id) or self._finished.get(agent_id)

    async def watch(self, agent_id: str, *, grace: float | None = None) -> None:
        """Start watching ``agent_id``; it lapses if it has not beaten within ``grace``."""
        key = keys.heartbeat(self.task_id, agent_id)
        lifetime = self.startup_grace if grace is None else check_timeout(grace, "grace")
        placeholder = json.dumps({"ts": time.time(), "pid": None, "status": SPAWNED})
        await self.redis.run(lambda r: r.set(key, placeholder, px=round(lifetime * 1000), nx=True))
        self._watching[agent_id] = None
        self._finished.pop(agent_id, None)

    def forget(self, agent_id: str) -> None:
        """Stop watching (the agent ended and the orchestrator knows it)."""
        self._watching.pop(agent_id, None)

    async def check(self) -> list[Lapse]:
        """Read every watched heartbeat once; the lapsed agents (no longer watched)."""
        agents = sorted(self._watching)
        if not agents:
            return []
        names = [keys.heartbeat(self.task_id, a) for a in agents]
        values = await self.redis.run(lambda r: r.mget(names))
        if self.redis.generation != self._generation:
            # Redis failed over: the agents beat on the other server from now on and
            # their keys are not there yet. Each gets the start-up grace to beat there.
            self._generation = self.redis.generation
            grace = round(self.startup_grace * 1000)
            held = {
                name: json.dumps(
                    {**(self._watching.get(agent) or {"status": RUNNING}), "ts": time.time()}
                )
                for agent, name in zip(agents, names, strict=True)
            }

            async def hold(r: Any) -> None:
                async with r.pipeline(transaction=False) as pipe:
                    for name, value in held.items():
                        pipe.set(name, value, px=grace, nx=True)
                    await pipe.execute()

            await self.redis.run(hold)
            return []
        now = time.time()
        lapses: list[Lapse] = []
        for agent, raw in zip(agents, values, strict=True):
            parsed = _parse(raw)
            if parsed is not None:
                self._watching[agent] = parsed
                continue
            last = self._watching.pop(agent)
            if last is not None and last.get("status") in FINAL_STATUSES:
                self._finished[agent] = last
                continue
            lapses.append(Lapse(agent, last, now))
        return lapses

    async def wait_lapsed(self, timeout: float) -> list[Lapse]:
        """Wait until at least one watched agent's heartbeat lapses (or ``timeout``: [])."""
        if self._watch is None:
            raise RuntimeError("use HeartbeatMonitor with `async with`")
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            lapses = await self.check()
            if lapses:
                return lapses
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Wakes on any heartbeat change of the task: beats (their PX emits
            # "expire"), expiries, and agents newly watched from another coroutine.
            await self._watch.wait(remaining)
