"""Agent completions and result collection (seed: signal_completion,
wait_for_loop_completion, collect-results.sh).

Wire format, exactly the seed's, so a bash agent with plain ``redis-cli`` and
a Python agent are interchangeable::

    LPUSH coord:{task}:complete        "{agent}:{result}"
    LPUSH coord:{task}:payload:{agent} "<json with confidence>"

We also keep the payload at ``swarm:{task}:result:{agent}``. Python agents
write all three in one Lua script (atomic, one round trip), payload first;
the seed's bash writes the completion before the payload, so a collector
gives a completion without a payload a short grace period
(``payload_grace``) before it counts it failed.

``coord:{task}:complete`` is the durable record: collectors never remove
entries. They read only what is new (``LRANGE key 0 -(seen+1)``, since new
entries are pushed at the head) and wake on keyspace notifications. A killed
collector started again re-reads the list and finds every result; the seed's
LLEN-counting waiter keeps working beside ours.

A result counts as successful only when its result word is ``success`` and
its payload carries a ``confidence`` that is a JSON number in [0, 1]. Missing,
non-numeric, NaN or out-of-range confidence is a failed report, never a
default value.

Failover (docs/coordination.md, "Faults"): Redis replicates asynchronously,
so a completion the master accepted can vanish when the master dies before
its replica got it. ``signal_completion`` therefore (1) makes re-sending
harmless: a re-send of an ``agent:result`` entry already recorded with the
same payload only rewrites it in place (a new payload is a new report); (2) when the master has
replicas connected, sends ``WAIT 1`` in the same pipeline and, while no
replica acknowledges, re-sends (each re-send followed by its own WAIT);
(3) when the server cannot be reached (a master being replaced), re-sends
with backoff for up to ``resend_window`` seconds, to the fallback or to
whatever master Sentinel names by then.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from cfn import keys
from cfn.coordination.connection import RedisManager, is_wrong_type
from cfn.coordination.validation import (
    check_count,
    check_fraction,
    check_json,
    check_timeout,
)
from cfn.coordination.watch import KeyWatch
from cfn.errors import (
    CorruptRecordError,
    InvalidInputError,
    RedisUnavailableError,
    WaitTimeoutError,
)

log = logging.getLogger(__name__)

SUCCESS = "success"
RESULT_WORD = keys.ID_PATTERN  # result words follow the id rules (no ':')
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_PAYLOAD_GRACE = 1.0
#: Seconds a completion keeps being re-sent while Redis cannot take it or no
#: replica acknowledges it (a Sentinel failover takes a few seconds).
DEFAULT_RESEND_WINDOW = 30.0
#: Milliseconds one ``WAIT 1`` waits for a replica's acknowledgement.
DEFAULT_REPLICA_WAIT_MS = 1000
#: Seconds a master's count of connected replicas is trusted before asking again.
REPLICA_CHECK_TTL = 5.0


@dataclass
class AgentResult:
    """One agent's completion as a collector saw it."""

    agent_id: str
    result: str
    confidence: float | None = None
    payload: Any = None
    reason: str | None = None
    seen_at: float = field(default=0.0, repr=False)

    @property
    def ok(self) -> bool:
        return self.reason is None and self.confidence is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "result": self.result,
            "confidence": self.confidence,
            "ok": self.ok,
            "reason": self.reason,
        }


@dataclass
class CollectReport:
    """What ``collect_results`` found: arrivals, confidences, and the verdict."""

    task_id: str
    expected: int
    threshold: float
    results: list[AgentResult]
    timed_out: bool
    elapsed: float

    @property
    def arrived(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> list[AgentResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[AgentResult]:
        return [r for r in self.results if not r.ok]

    @property
    def confidences(self) -> list[float]:
        return [r.confidence for r in self.succeeded if r.confidence is not None]

    @property
    def mean(self) -> float | None:
        values = self.confidences
        return sum(values) / len(values) if values else None

    @property
    def min(self) -> float | None:
        values = self.confidences
        return min(values) if values else None

    @property
    def met(self) -> bool:
        """All expected agents arrived, none failed, and the mean meets the threshold."""
        mean = self.mean
        return (
            self.arrived >= self.expected
            and not self.failed
            and mean is not None
            and mean >= self.threshold
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "expected": self.expected,
            "arrived": self.arrived,
            "threshold": self.threshold,
            "mean": self.mean,
            "min": self.min,
            "failed": len(self.failed),
            "met": self.met,
            "timed_out": self.timed_out,
            "elapsed": round(self.elapsed, 6),
            "results": [r.to_dict() for r in self.results],
        }


def parse_confidence(payload: Any) -> tuple[float | None, str | None]:
    """``(confidence, None)`` or ``(None, why it is unusable)``."""
    if not isinstance(payload, dict):
        return None, "payload is not a JSON object"
    if "confidence" not in payload:
        return None, "payload has no confidence"
    value = payload["confidence"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"confidence {value!r} is not a number"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None, f"confidence {value!r} is outside [0, 1]"
    return float(value), None


def _check_result_word(result: str) -> str:
    if not isinstance(result, str) or RESULT_WORD.fullmatch(result) is None:
        raise InvalidInputError(
            f"invalid result {result!r}: use 1 to 128 characters from A-Z a-z 0-9 . _ - "
            "(e.g. success, error)"
        )
    return result


async def signal_completion(
    redis: RedisManager,
    task_id: str,
    agent_id: str,
    result: str = SUCCESS,
    payload: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    resend_window: float = DEFAULT_RESEND_WINDOW,
    replica_wait_ms: int = DEFAULT_REPLICA_WAIT_MS,
    unless_reported: bool = False,
) -> bool:
    """Report an agent's completion; payload (JSON) first, all in one atomic script.

    Returns once the completion is on the server and, when the server has
    replicas connected, acknowledged by one of them (``WAIT 1``). Until then
    it is re-sent (harmless: see the module docstring) for up to
    ``resend_window`` seconds; after that a completion Redis never took
    raises ``RedisUnavailableError``, and one only the master holds is
    logged as a warning and left there.

    Under Sentinel a server that has no replica to acknowledge may be a master
    the Sentinel has already replaced (it would drop the write when it is made a
    replica): the sentinels are asked, and the completion re-sent to the new
    master if there is one.

    With ``unless_reported`` (a supervisor recording that an agent failed)
    nothing is written when the agent already left a payload, checked in the
    same atomic step as the write. Returns whether the completion was written
    (always True without ``unless_reported``).
    """
    complete = keys.coord_complete(task_id)
    payload_key = keys.coord_payload(task_id, agent_id)
    result_key = keys.swarm_result(task_id, agent_id)
    _check_result_word(result)
    if payload is not None:
        check_json(payload, "completion payload", max_bytes)
    check_timeout(resend_window)
    entry = f"{agent_id}:{result}"
    script_keys = [payload_key, result_key, complete]
    args = [
        payload or "",
        entry,
        "1" if payload is not None else "0",
        "1" if unless_reported else "0",
    ]

    recheck = False  # ask the server for its replicas again (not the remembered count)

    async def write(r: Any) -> tuple[int, int | None]:
        batcher = _batchers.get(r)
        if batcher is None:
            batcher = _batchers[r] = _CompletionBatcher(r)
        if recheck:
            batcher.replicas_checked = -REPLICA_CHECK_TTL
        return await batcher.submit(script_keys, args, replica_wait_ms)

    deadline = time.monotonic() + resend_window
    delay = 0.05
    sends = 0
    while True:
        sends += 1
        generation = redis.generation
        try:
            pushed, acked = await redis.run(write)
        except RedisUnavailableError as exc:
            if time.monotonic() + delay >= deadline:
                raise
            log.warning(
                "completion %s on %s not written (%s); re-sending in %.2f s",
                entry,
                complete,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if pushed < 0:
            return False  # the agent's own report is there: it wins
        if acked is None and redis.follows_sentinel:
            await redis.confirm_master()
            if redis.generation != generation:  # it may have gone to the replaced master
                log.info("completion %s on %s: the master moved; re-sending", entry, complete)
                continue
            if time.monotonic() + delay < deadline and await redis.expects_replica():
                # No replica connected, yet the sentinels count one up: it is (re)attaching,
                # and until it has this completion one more failure would lose it.
                log.info(
                    "completion %s on %s: no replica connected yet; re-sending in %.2f s",
                    entry,
                    complete,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                recheck = True
                continue
        if acked is None or acked >= 1:
            if sends > 1:
                log.info("completion %s on %s written after %d sends", entry, complete, sends)
            return True
        if time.monotonic() >= deadline:
            log.warning(
                "completion %s on %s: no replica acknowledged it within %.1f s; "
                "it is on the master only",
                entry,
                complete,
                resend_window,
            )
            return True
        log.info("completion %s on %s not acknowledged by a replica; re-sending", entry, complete)


#: Payload first, then the completion, in one atomic step (one round trip, unlike MULTI).
#: A re-send (the entry already on the list, with the same payload as the newest one)
#: is rewritten in place instead of pushed again: nothing changes, yet the write is
#: replicated, so the WAIT after it covers the original too (a replica's acknowledged
#: offset is past both). A report with a new payload is pushed as before (latest wins).
#: With ARGV[4] == '1' (a supervisor recording a failure) nothing is written when the
#: agent already left a payload: the check and the write are one step, so an agent's
#: own report that lands first always wins (returns -1).
_COMPLETE = """
local at = redis.call('LPOS', KEYS[3], ARGV[2])
if at and (ARGV[3] ~= '1' or redis.call('LINDEX', KEYS[1], 0) == ARGV[1]) then
  redis.call('LSET', KEYS[3], at, ARGV[2])
  return 0
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return -1
end
if ARGV[3] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[1])
end
return redis.call('LPUSH', KEYS[3], ARGV[2])
"""
_COMPLETE_SHA = hashlib.sha1(_COMPLETE.encode()).hexdigest()  # noqa: S324 - Redis' script id


class _CompletionBatcher:
    """Auto-pipelining (as ioredis' ``enableAutoPipelining``) for one client.

    Completions submitted by concurrent coroutines of one process in the same
    event-loop turn go out as one pipeline of EVALSHA calls: one round trip
    for all of them instead of one each. Every completion stays its own
    atomic script; a lone completion is sent at once, with no added wait.

    When the server has replicas connected, the pipeline ends with ``WAIT 1``
    (same connection, so it covers every script before it); each caller gets
    its script's reply and the number of replicas that acknowledged, else None
    (no replica to ask).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queue: list[tuple[list[str], list[str], int, asyncio.Future[Any]]] = []
        self.loaded = False
        self.replicas = 0
        self.replicas_checked = -REPLICA_CHECK_TTL

    async def submit(
        self, script_keys: list[str], args: list[str], wait_ms: int
    ) -> tuple[int, int | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.queue.append((script_keys, args, wait_ms, future))
        if len(self.queue) == 1:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        result: tuple[int, int | None] = await future
        return result

    async def _replica_count(self, refresh: bool = False) -> int:
        """Replicas connected to the server (INFO replication), remembered a few seconds."""
        now = time.monotonic()
        if refresh or now - self.replicas_checked >= REPLICA_CHECK_TTL:
            try:
                info = await self.client.info("replication")
            except ResponseError as exc:  # INFO not allowed for this user: no WAIT
                log.debug("INFO replication refused (%s); completions not WAITed for", exc)
                info = {}
            self.replicas = int(info.get("connected_slaves", 0) or 0)
            self.replicas_checked = now
        return self.replicas

    async def _flush(self) -> None:
        batch, self.queue = self.queue, []
        acked: int | None = None
        try:
            replicas = await self._replica_count()
            if not self.loaded:
                await self.client.script_load(_COMPLETE)
                self.loaded = True
            async with self.client.pipeline(transaction=False) as pipe:
                for script_keys, args, _wait, _future in batch:
                    pipe.evalsha(_COMPLETE_SHA, len(script_keys), *script_keys, *args)
                if replicas:
                    pipe.wait(1, max(item[2] for item in batch))
                results = await pipe.execute(raise_on_error=False)
            if replicas:
                acked = results.pop()
                if isinstance(acked, Exception):
                    raise acked
                if not acked and not await self._replica_count(refresh=True):
                    acked = None  # the replica went away meanwhile: nothing left to wait for
        except BaseException as exc:  # the connection failed: every caller sees it
            self.loaded = False
            self.replicas_checked = -REPLICA_CHECK_TTL
            for *_rest, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script_keys, args, _wait, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, NoScriptError):
                # The server lost its script cache (a restart): send the script itself.
                # Not covered by the WAIT above: the caller re-sends (harmless) to check.
                self.loaded = False
                try:
                    result = await self.client.eval(
                        _COMPLETE, len(script_keys), *script_keys, *args
                    )
                except BaseException as exc:
                    future.set_exception(exc)
                    continue
                future.set_result((int(result), 0 if acked is not None else None))
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result((int(result), acked))


_batchers: weakref.WeakKeyDictionary[Any, _CompletionBatcher] = weakref.WeakKeyDictionary()


def parse_entry(entry: str) -> tuple[str, str] | None:
    """``"agent:result"`` → ``(agent, result)``; None for entries we cannot read."""
    agent, sep, result = entry.partition(":")
    if not sep or keys.ID_PATTERN.fullmatch(agent) is None:
        return None
    return agent, result


async def _read_list(redis: RedisManager, key: str, stop: int) -> list[Any]:
    """``LRANGE key 0 stop``; CorruptRecordError when the key is no list any more (an
    agent may ``SET`` it: its ACL allows writing the task's completion list)."""
    try:
        entries: list[Any] = await redis.run(lambda r: r.lrange(key, 0, stop))
    except ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        raise CorruptRecordError(
            f"{key} is no longer a list (something other than cfn overwrote it): the "
            "task's completions cannot be read"
        ) from None
    return entries


async def reported_agents(redis: RedisManager, task_id: str) -> set[str]:
    """Every agent with an entry on ``coord:{task}:complete`` (read, never consumed)."""
    entries = await _read_list(redis, keys.coord_complete(task_id), -1)
    return {parsed[0] for entry in entries if (parsed := parse_entry(str(entry)))}


class CompletionReader:
    """Reads new entries of ``coord:{task}:complete`` without consuming them."""

    def __init__(self, redis: RedisManager, task_id: str) -> None:
        self.redis = redis
        self.key = keys.coord_complete(task_id)
        self.seen = 0
        self.generation = redis.generation

    async def read_new(self) -> list[str]:
        """Entries pushed since the last call, oldest first.

        After a failover the other server holds a different list: start over
        (callers keep one result per agent, so re-reading is harmless).
        """
        if self.redis.generation != self.generation:
            self.generation = self.redis.generation
            self.seen = 0
        stop = -(self.seen + 1)
        new = [str(e) for e in await _read_list(self.redis, self.key, stop)]
        self.seen += len(new)
        new.reverse()
        return new


async def _read_payloads(
    redis: RedisManager, task_id: str, agent_ids: list[str]
) -> dict[str, str | None]:
    if not agent_ids:
        return {}

    async def read(r: Any, names: list[str]) -> list[Any]:
        async with r.pipeline(transaction=False) as pipe:
            for name in names:
                if name.startswith("coord:"):
                    pipe.lindex(name, 0)
                else:
                    pipe.get(name)
            result: list[Any] = await pipe.execute(raise_on_error=False)
        for value in result:
            if isinstance(value, ResponseError) and not is_wrong_type(value):
                raise value
        # A payload key of the wrong type (overwritten) reads as no payload: that
        # agent's report is judged failed, its teammates' stand.
        return [None if isinstance(v, ResponseError) else v for v in result]

    # The seed's payload list first; swarm:{task}:result:{agent} only for agents
    # without one (a second round trip that the usual case never needs).
    lists = [keys.coord_payload(task_id, agent) for agent in agent_ids]
    values = await redis.run(lambda r: read(r, lists))
    found: dict[str, str | None] = dict(zip(agent_ids, values, strict=True))
    missing = [agent for agent, value in found.items() if value is None]
    if missing:
        results = [keys.swarm_result(task_id, agent) for agent in missing]
        for agent, value in zip(missing, await redis.run(lambda r: read(r, results)), strict=True):
            found[agent] = value
    return found


async def collect_results(
    redis: RedisManager,
    task_id: str,
    expected: int,
    threshold: float,
    timeout: float,
    *,
    agent_ids: Iterable[str] | None = None,
    payload_grace: float = DEFAULT_PAYLOAD_GRACE,
    on_update: Callable[[CollectReport], None] | None = None,
) -> CollectReport:
    """Wait for ``expected`` agents' results (or ``timeout``) and judge them.

    ``agent_ids`` restricts the count to those agents (one completion list
    serves a whole task, across loops and iterations); later completions of
    the same agent replace earlier ones (an idempotent re-send counts once).
    """
    keys.validate_id(task_id, "task id")
    check_count(expected, "expected")
    check_fraction(threshold, "threshold")
    check_timeout(timeout)
    wanted = {keys.validate_id(a, "agent id") for a in agent_ids} if agent_ids is not None else None

    start = time.monotonic()
    deadline = start + timeout
    reader = CompletionReader(redis, task_id)
    results: dict[str, AgentResult] = {}
    pending: set[str] = set()  # arrived, payload not yet readable

    def report(timed_out: bool, settled_only: bool = False) -> CollectReport:
        """The report so far; ``settled_only`` (progress updates): without the agents
        whose entry came before their payload (the seed's bash ``signal_completion``
        pushes the entry first), which would otherwise show as failed reports."""
        ordered = sorted(
            (r for r in results.values() if not (settled_only and r.agent_id in pending)),
            key=lambda r: r.seen_at,
        )
        return CollectReport(
            task_id, expected, threshold, ordered, timed_out, time.monotonic() - start
        )

    patterns = [keys.coord_complete(task_id), keys.coord_payload_pattern(task_id)]
    outage = _Outage(reader, deadline)
    while True:
        try:
            verdict = await _collect(
                redis,
                task_id,
                expected,
                reader,
                patterns,
                wanted,
                (results, pending),
                (deadline, payload_grace),
                report,
                on_update,
            )
            # A failure read on a master the Sentinel has just replaced may be a
            # supervisor's record that the new master does not hold (the agent's own
            # report landed there): judge failures again on the master named now.
            if verdict.failed and redis.follows_sentinel:
                await redis.confirm_master()
                if redis.generation != reader.generation:  # moved since the last read
                    results.clear()
                    pending.clear()
                    continue
            return verdict
        except RedisUnavailableError as exc:
            await outage.wait(exc)
            # The server that answers next may be another one: its list is the record
            # (agents re-send what it lacks), so judge again from it alone. Otherwise an
            # entry seen on a dying master could be judged "no payload" here.
            results.clear()
            pending.clear()


async def _collect(
    redis: RedisManager,
    task_id: str,
    expected: int,
    reader: CompletionReader,
    patterns: list[str],
    wanted: set[str] | None,
    found: tuple[dict[str, AgentResult], set[str]],
    times: tuple[float, float],
    report: Callable[[bool, bool], CollectReport],
    on_update: Callable[[CollectReport], None] | None,
) -> CollectReport:
    """One watch's worth of ``collect_results`` (a Redis outage ends it; the caller retries)."""
    results, pending = found  # arrived; arrived with the payload not yet readable
    deadline, payload_grace = times
    async with KeyWatch(redis, patterns) as watch:
        while True:
            now = time.monotonic()
            for entry in await reader.read_new():
                parsed = parse_entry(entry)
                if parsed is None:
                    continue
                agent, word = parsed
                if wanted is not None and agent not in wanted:
                    continue
                results[agent] = AgentResult(agent, word, seen_at=now)
                pending.add(agent)
            if pending:
                payloads = await _read_payloads(redis, task_id, sorted(pending))
                for agent, raw in payloads.items():
                    item = results[agent]
                    if raw is None:
                        if now - item.seen_at < payload_grace and now < deadline:
                            continue
                        item.reason = "no payload (confidence missing)"
                    else:
                        judge_payload(item, raw)
                    pending.discard(agent)
                if on_update is not None:
                    on_update(report(False, True))
            done = len(results) >= expected and not pending
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                for agent in pending:
                    results[agent].reason = "no payload (confidence missing)"
                return report(not done, False)
            wake_in = remaining
            if pending:
                oldest = min(results[a].seen_at for a in pending)
                wake_in = min(remaining, max(0.0, oldest + payload_grace - time.monotonic()))
            await watch.wait(wake_in if wake_in > 0 else 0.001)


def judge_payload(item: AgentResult, raw: str) -> None:
    """Fill ``item`` from a payload text: its confidence, or why it is a failed report."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        item.reason = "payload is not JSON"
        return
    item.payload = payload
    confidence, why = parse_confidence(payload)
    if why is not None:
        # An agent (or its supervisor) that says why it failed: keep its words.
        told = payload.get("error") or payload.get("reason") if isinstance(payload, dict) else None
        item.reason = f"{why}: {told}" if isinstance(told, str) and told else why
        return
    if item.result != SUCCESS:
        item.reason = f"agent reported {item.result!r}"
        item.confidence = confidence
        return
    item.confidence = confidence


async def wait_for_loop_completion(
    redis: RedisManager,
    task_id: str,
    expected_agents: int,
    timeout: float = 600.0,
    *,
    agent_ids: Iterable[str] | None = None,
) -> int:
    """The seed's waiter, event-driven: returns once ``expected_agents`` distinct
    agents have completed; raises WaitTimeoutError at ``timeout``."""
    keys.validate_id(task_id, "task id")
    check_count(expected_agents, "expected agents")
    check_timeout(timeout)
    wanted = {keys.validate_id(a, "agent id") for a in agent_ids} if agent_ids is not None else None
    deadline = time.monotonic() + timeout
    reader = CompletionReader(redis, task_id)
    done: set[str] = set()
    outage = _Outage(reader, deadline)
    while True:
        try:
            async with KeyWatch(redis, [keys.coord_complete(task_id)]) as watch:
                while True:
                    for entry in await reader.read_new():
                        parsed = parse_entry(entry)
                        if parsed and (wanted is None or parsed[0] in wanted):
                            done.add(parsed[0])
                    if len(done) >= expected_agents:
                        return len(done)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeoutError(
                            f"timeout waiting for agent completion: {len(done)} of "
                            f"{expected_agents} agents completed on {reader.key} within "
                            f"{timeout:g} s"
                        )
                    await watch.wait(remaining)
        except RedisUnavailableError as exc:
            await outage.wait(exc)


class _Outage:
    """A collector's patience while Redis is unreachable (a master being replaced).

    Waits with backoff and starts the reader over (the server that answers next
    may be another one, whose list the reader has not seen); gives up, raising
    the last error, after ``DEFAULT_RESEND_WINDOW`` seconds without Redis or at
    the caller's deadline.
    """

    def __init__(self, reader: CompletionReader, deadline: float) -> None:
        self.reader = reader
        self.deadline = deadline
        self.since: float | None = None
        self.last = 0.0
        self.delay = 0.05

    async def wait(self, exc: RedisUnavailableError) -> None:
        now = time.monotonic()
        if self.since is None or now - self.last > 2 * self.delay + 1.0:
            self.since, self.delay = now, 0.05  # Redis answered in between: a new outage
        self.last = now
        if (
            now - self.since + self.delay > DEFAULT_RESEND_WINDOW
            or now + self.delay > self.deadline
        ):
            raise exc
        log.warning("collecting %s: %s; trying again in %.2f s", self.reader.key, exc, self.delay)
        self.reader.seen = 0
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 1.0)
