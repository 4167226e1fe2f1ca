"""Per-agent signals on ``swarm:{task}:signal:{agent}`` (stop, feedback), and
recording an agent that ended without reporting.

A signal is a JSON object ``{"type": "stop"|"feedback"|..., "data": {...},
"ts": ...}`` pushed with LPUSH; the agent takes the oldest with RPOP (between
steps) or waits for one with BRPOP, so signals sent before it listens are
kept, in order. From bash: ``redis-cli RPOP swarm:{task}:signal:{agent}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cfn import keys
from cfn.coordination.completion import signal_completion
from cfn.coordination.connection import RedisManager
from cfn.coordination.validation import check_json, check_timeout
from cfn.errors import InvalidInputError, WaitTimeoutError

STOP = "stop"
FEEDBACK = "feedback"
FAILED = "failed"
MAX_SIGNAL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AgentSignal:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float | None = None

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "data": self.data, "ts": self.ts})

    @classmethod
    def parse(cls, raw: str) -> AgentSignal:
        """Any string: a JSON signal object, or a bare word (``stop``) from bash."""
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            value = raw.strip()
        if isinstance(value, str):
            return cls(value or "unknown")
        if not isinstance(value, dict):
            return cls("unknown", {"value": value})
        data = value.get("data")
        ts = value.get("ts")
        return cls(
            str(value.get("type") or "unknown"),
            data if isinstance(data, dict) else ({} if data is None else {"value": data}),
            float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None,
        )


async def send_agent_signal(
    redis: RedisManager,
    task_id: str,
    agent_id: str,
    signal_type: str,
    data: dict[str, Any] | None = None,
) -> int:
    """Queue a signal for one agent; returns how many now wait for it."""
    key = keys.swarm_signal(task_id, agent_id)
    keys.validate_id(signal_type, "signal type")
    if data is not None and not isinstance(data, dict):
        raise InvalidInputError("signal data must be a JSON object")
    payload = AgentSignal(signal_type, dict(data or {}), time.time()).to_json()
    check_json(payload, "agent signal", MAX_SIGNAL_BYTES)
    return int(await redis.run(lambda r: r.lpush(key, payload)))


async def send_stop(redis: RedisManager, task_id: str, agent_id: str, reason: str = "") -> int:
    return await send_agent_signal(redis, task_id, agent_id, STOP, {"reason": reason})


async def send_feedback(redis: RedisManager, task_id: str, agent_id: str, feedback: str) -> int:
    return await send_agent_signal(redis, task_id, agent_id, FEEDBACK, {"feedback": feedback})


async def take_agent_signal(redis: RedisManager, task_id: str, agent_id: str) -> AgentSignal | None:
    """The oldest queued signal, or None at once when there is none."""
    key = keys.swarm_signal(task_id, agent_id)
    raw = await redis.run(lambda r: r.rpop(key))
    return None if raw is None else AgentSignal.parse(str(raw))


async def wait_agent_signal(
    redis: RedisManager, task_id: str, agent_id: str, timeout: float
) -> AgentSignal:
    """Take the oldest signal, waiting (BRPOP) up to ``timeout`` seconds for one."""
    key = keys.swarm_signal(task_id, agent_id)
    check_timeout(timeout)
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        item = await redis.run(_brpop(key, remaining))
        if item is not None:
            return AgentSignal.parse(str(item[1]))
    raise WaitTimeoutError(f"no signal on {key} within {timeout:g} s")


def _brpop(key: str, timeout: float) -> Callable[[Any], Awaitable[Any]]:
    async def op(r: Any) -> Any:
        return await r.brpop([key], timeout=timeout)

    return op


async def record_agent_failure(
    redis: RedisManager,
    task_id: str,
    agent_id: str,
    reason: str,
    details: dict[str, Any] | None = None,
    *,
    only_if_unreported: bool = True,
) -> bool:
    """Record that an agent ended without a usable report (crash, hang, OOM, timeout).

    Writes the seed's completion (``{agent}:failed`` on ``coord:{task}:complete``)
    with a payload that has *no* confidence, so collectors count the agent as
    arrived and failed at once instead of waiting out their timeout, and an
    entry on ``coord:{task}:error``. With ``only_if_unreported`` (the default)
    nothing is written when the agent already left a payload: its own report
    wins. Returns whether the failure was recorded.
    """
    if only_if_unreported:
        # "No report" is a conclusion from a missing key: draw it on the master the
        # Sentinel names now, not on one it has just replaced (whose data is about to
        # be dropped), or an agent that did report would be counted failed.
        await redis.confirm_master()
    entry = {
        "agent_id": agent_id,
        "status": FAILED,
        "reason": reason,
        "ts": time.time(),
        **({"details": details} if details else {}),
    }
    payload = json.dumps(entry)
    written = await signal_completion(
        redis, task_id, agent_id, FAILED, payload, unless_reported=only_if_unreported
    )
    if not written:
        return False
    error_key = keys.coord_error(task_id)
    await redis.run(lambda r: r.lpush(error_key, payload))
    return True
