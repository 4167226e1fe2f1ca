"""Orchestrator workers: tasks created through the portal, run from a Redis stream.

``POST /api/tasks/create`` appends ``{task_id, options}`` to ``queue:tasks``.
Workers (``cfn worker``, or the one inside ``cfn portal``) read it with
XREADGROUP in the consumer group ``orchestrators``, so each task goes to one
worker, and workers on several machines share the load.

A task stays in the group's pending list until its run ends (then XACK).
While it runs, its worker touches the entry every third of
CFN_WORKER_CLAIM_IDLE (``XCLAIM ... JUSTID`` to itself, which resets the idle
time). A worker that dies stops touching; once the entry has been idle for
CFN_WORKER_CLAIM_IDLE, another worker takes it over with XAUTOCLAIM and
continues the task with ``Orchestrator.resume`` from its SQL checkpoint
(agents that finished are not re-run, agents still running are re-attached).
A worker that finds its entry claimed by someone else (it was only slow)
stops its own run of that task, so one task never runs twice for long.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.errors import CfnError, ConflictError, NotFoundError, TaskLeaseError
from cfn.loop.journal import SqlJournal
from cfn.loop.orchestrator import Outcome
from cfn.loop.state import TaskOptions
from cfn.settings import Settings
from cfn.store.repository import Store

log = logging.getLogger(__name__)

QUEUE_MAXLEN = 100_000
QUEUED_TTL = 7 * 24 * 3600
TERMINAL = frozenset({"succeeded", "failed", "aborted"})

#: Runs one task: ``(options, resume)``; options for a new task, resume=True to continue it.
Runner = Callable[[TaskOptions, bool], Awaitable[Outcome]]


async def ensure_group(redis: RedisManager) -> None:
    """Create the stream and its consumer group once (BUSYGROUP means it exists)."""
    stream = keys.task_queue()
    try:
        await redis.run(
            lambda r: r.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        )
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def submit_task(redis: RedisManager, store: Store, options: TaskOptions) -> str:
    """Queue a new task for the workers; ConflictError when the id is taken."""
    task_id = options.task_id
    try:
        await asyncio.to_thread(store.get_task, task_id)
    except NotFoundError:
        pass
    else:
        raise ConflictError(f"task {task_id!r} exists already")
    marker = keys.queued_task(task_id)
    text = options.to_json()
    created = await redis.run(lambda r: r.set(marker, text, nx=True, ex=QUEUED_TTL))
    if not created:
        raise ConflictError(f"task {task_id!r} is queued already")
    await ensure_group(redis)
    stream = keys.task_queue()
    fields = {"task_id": task_id, "options": text}
    message_id: Any = await redis.run(
        lambda r: r.xadd(stream, fields, maxlen=QUEUE_MAXLEN, approximate=True)  # type: ignore[arg-type]
    )
    return str(message_id)


async def queued_options(redis: RedisManager, task_id: str) -> TaskOptions | None:
    """The options of a task that was queued (it may not be in SQL yet)."""
    marker = keys.queued_task(task_id)
    raw = await redis.run(lambda r: r.get(marker))
    return None if raw is None else TaskOptions.from_json(str(raw))


@dataclass(frozen=True)
class QueueInfo:
    length: int
    pending: int
    lag: int | None
    #: Live workers (their presence keys): name, host, pid, concurrency, running, since.
    workers: list[dict[str, Any]]
    #: The group's consumers (XINFO CONSUMERS): every worker that ever took a task,
    #: live or dead, with its pending count and idle time.
    consumers: list[dict[str, Any]]


async def live_workers(redis: RedisManager) -> list[dict[str, Any]]:
    """The workers whose presence key lives (each refreshes it every third of its claim-idle).

    The group's consumer list cannot say this: Redis adds a consumer only when it
    first receives an entry (a worker blocked on an empty queue is not listed)
    and keeps it after its worker died.
    """
    pattern = keys.worker_presence_pattern()

    async def op(r: Any) -> list[Any]:
        names = [str(k) async for k in r.scan_iter(match=pattern, count=1000)]
        return list(await r.mget(names)) if names else []

    out: list[dict[str, Any]] = []
    for raw in await redis.run(op):
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return sorted(out, key=lambda w: str(w.get("name")))


async def queue_info(redis: RedisManager) -> QueueInfo:
    """Queue length, pending (running) entries, the live workers and the group's consumers."""
    stream = keys.task_queue()
    await ensure_group(redis)
    length = int(await redis.run(lambda r: r.xlen(stream)))
    groups = await redis.run(lambda r: r.xinfo_groups(stream))
    group = next((g for g in groups if g.get("name") == keys.WORKER_GROUP), {})
    consumers = await redis.run(lambda r: r.xinfo_consumers(stream, keys.WORKER_GROUP))
    lag = group.get("lag")
    return QueueInfo(
        length=length,
        pending=int(group.get("pending") or 0),
        lag=None if lag is None else int(lag),
        workers=await live_workers(redis),
        consumers=[
            {"name": c.get("name"), "pending": c.get("pending"), "idle_ms": c.get("idle")}
            for c in consumers
        ],
    )


async def worker_summary(redis: RedisManager) -> dict[str, Any]:
    """Who runs the queue's tasks: live workers, running and waiting tasks.

    ``workers`` counts the live workers (presence keys); ``goneWorkers`` the
    workers that hold a task but whose presence expired (dead: another worker
    takes the task over once it has been idle for the claim-idle time).
    ``taskWorkers`` maps each task held by a worker (pending in the group) to
    that worker; an active task missing there is not run by any worker: it was
    started by ``cfn run``, in that process.
    """
    info = await queue_info(redis)
    live = {str(w.get("name")) for w in info.workers}
    stream = keys.task_queue()
    pending: Any = await redis.run(
        lambda r: r.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 1000)
    )
    ids = [str(p["message_id"]) for p in pending or []]
    owners = {str(p["message_id"]): str(p["consumer"]) for p in pending or []}

    async def entries(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for message_id in ids:
            pipe.xrange(stream, message_id, message_id, count=1)
        return list(await pipe.execute())

    found = await redis.run(entries) if ids else []
    task_workers: dict[str, str] = {}
    for message_id, rows in zip(ids, found, strict=True):
        for _id, fields in rows or []:
            task_id = fields.get("task_id")
            if isinstance(task_id, str):
                task_workers[task_id] = owners[message_id]
    return {
        "workers": len(live),
        "goneWorkers": len(set(task_workers.values()) - live),
        "running": info.pending,
        "waiting": info.lag if info.lag is not None else 0,
        "length": info.length,
        "taskWorkers": task_workers,
    }


def default_runner(settings: Settings) -> Runner:
    async def run(options: TaskOptions, resume: bool) -> Outcome:
        from cfn.loop.app import run_loop

        if resume:
            return await run_loop(settings, resume_task=options.task_id)
        return await run_loop(settings, options=options)

    return run


class Worker:
    """One orchestrator worker; ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        redis: RedisManager,
        store: Store,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        claim_idle: float | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        keys.validate_id(self.name, "worker name")
        self.concurrency = concurrency or settings.cfn_worker_concurrency
        self.claim_idle = claim_idle or settings.cfn_worker_claim_idle
        self.runner = runner or default_runner(settings)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished: list[tuple[str, str]] = []  # (task id, status) of runs ended here
        self.since = time.time()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)

    @property
    def idle_ms(self) -> int:
        return max(1, round(self.claim_idle * 1000))

    def stop(self) -> None:
        self._stopping.set()

    async def _announce(self) -> None:
        """Refresh this worker's presence key (TTL claim-idle; refreshed 3 times as often)."""
        key = keys.worker_presence(self.name)
        value = json.dumps(
            {
                "name": self.name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "concurrency": self.concurrency,
                "running": len(self.running),
                "since": self.since,
            }
        )
        await self.redis.run(lambda r: r.set(key, value, px=self.idle_ms))

    async def run(self) -> None:
        await ensure_group(self.redis)
        await self._announce()
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                try:
                    message = await self._take()
                except asyncio.CancelledError:
                    self._slots.release()
                    raise
                except CfnError as exc:
                    self._slots.release()
                    log.warning("worker %s cannot read the queue: %s", self.name, exc)
                    await self._sleep(min(self.claim_idle / 2, 5.0))
                    continue
                if message is None:
                    self._slots.release()
                    continue
                message_id, fields, taken_over = message
                self.running[message_id] = asyncio.create_task(
                    self._handle(message_id, fields, taken_over)
                )
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            presence = keys.worker_presence(self.name)
            with contextlib.suppress(CfnError):
                await self.redis.run(lambda r: r.delete(presence))
            # Runs are cancelled, not acknowledged: another worker takes them over.
            for task in list(self.running.values()):
                task.cancel()
            for task in list(self.running.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _take(self) -> tuple[str, dict[str, str], bool] | None:
        """A dead worker's task (XAUTOCLAIM), else a new one (XREADGROUP BLOCK)."""
        stream = keys.task_queue()
        claimed: Any = await self.redis.run(
            lambda r: r.xautoclaim(
                stream, keys.WORKER_GROUP, self.name, self.idle_ms, start_id="0-0", count=1
            )
        )
        entries = claimed[1] if claimed and len(claimed) > 1 else []
        for message_id, fields in entries:
            if str(message_id) in self.running:
                # Our own run, idle only because this event loop was slow to touch it
                # (a busy machine): XAUTOCLAIM just gave it back to us. Never run it twice.
                continue
            if fields:
                log.warning(
                    "worker %s takes over task %s (its worker stopped answering)",
                    self.name,
                    fields.get("task_id"),
                )
                return str(message_id), dict(fields), True
            await self._ack(str(message_id))  # trimmed away: nothing left to run
        block = max(100, round(min(self.claim_idle / 2, 5.0) * 1000))
        reply: Any = await self.redis.run(
            lambda r: r.xreadgroup(
                keys.WORKER_GROUP, self.name, {stream: ">"}, count=1, block=block
            )
        )
        for _stream, messages in reply or []:
            for message_id, fields in messages:
                return str(message_id), dict(fields), False
        return None

    async def _handle(self, message_id: str, fields: dict[str, str], taken_over: bool) -> None:
        task_id = fields.get("task_id", "?")
        acknowledge = True
        try:
            options = TaskOptions.from_json(fields["options"])
            try:
                _o, _cp, status = await asyncio.to_thread(
                    SqlJournal(self.store).load_task, options.task_id
                )
            except NotFoundError:
                status = None
            if status in TERMINAL:
                log.info("task %s already ended (%s); nothing to run", task_id, status)
                return
            outcome = await self.runner(options, status is not None)
            self.finished.append((task_id, outcome.status))
            log.info("task %s ended: %s", task_id, outcome.status)
        except asyncio.CancelledError:
            acknowledge = False
            raise
        except TaskLeaseError as exc:
            # Another orchestrator runs it (a worker elsewhere, a `cfn resume`): the
            # entry stays pending, to be claimed again if that one dies.
            acknowledge = False
            log.info("task %s is not ours to run now: %s", task_id, exc)
        except (CfnError, KeyError, ValueError, TypeError) as exc:
            log.error("task %s cannot run: %s", task_id, exc)
            self.finished.append((task_id, "error"))
        except Exception:
            log.exception("task %s failed in worker %s", task_id, self.name)
            self.finished.append((task_id, "error"))
        finally:
            self.running.pop(message_id, None)
            if acknowledge:
                with contextlib.suppress(CfnError):
                    await self._ack(message_id)
            self._slots.release()

    async def _ack(self, message_id: str) -> None:
        stream = keys.task_queue()
        await self.redis.run(lambda r: r.xack(stream, keys.WORKER_GROUP, message_id))

    async def _keepalive(self) -> None:
        """Touch our running entries so no one takes them over; drop the ones taken from us."""
        stream = keys.task_queue()
        while True:
            await asyncio.sleep(self.claim_idle / 3)
            try:
                await self._announce()
            except CfnError as exc:
                log.warning("worker %s cannot refresh its presence: %s", self.name, exc)
            for message_id, task in list(self.running.items()):
                try:
                    pending = await self.redis.run(
                        lambda r, m=message_id: r.xpending_range(  # type: ignore[misc]
                            stream, keys.WORKER_GROUP, m, m, 1
                        )
                    )
                    if not pending or pending[0].get("consumer") != self.name:
                        log.warning(
                            "worker %s lost entry %s to another worker; stopping its run here",
                            self.name,
                            message_id,
                        )
                        self.running.pop(message_id, None)
                        task.cancel()
                        continue
                    await self.redis.run(
                        lambda r, m=message_id: r.xclaim(  # type: ignore[misc]
                            stream, keys.WORKER_GROUP, self.name, 0, [m], justid=True
                        )
                    )
                except CfnError as exc:
                    log.warning("worker %s keep-alive failed: %s", self.name, exc)
