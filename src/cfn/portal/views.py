"""What the portal shows, read from real state: SQL (tasks, iterations, agents,
decisions, events, LLM usage) and Redis (heartbeats, the awaited decision,
the task queue). Plain JSON-ready dicts; the routes only add auth and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.errors import DatabaseError, InvalidInputError, NotFoundError
from cfn.loop.journal import SqlJournal
from cfn.loop.state import AgentRow, Checkpoint, TaskOptions
from cfn.portal.workers import queued_options
from cfn.store.repository import T_AGENTS, T_DECISIONS, T_ITERATIONS, T_TASKS, Store

log = logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def _team(options: TaskOptions) -> dict[str, Any]:
    team = options.team
    return {
        "gate": team.gate,
        "consensus": team.consensus,
        "maxIterations": team.max_iterations,
        "implementers": team.implementers,
        "validators": team.validators,
    }


def _options(options: TaskOptions) -> dict[str, Any]:
    return {
        "epic": options.epic,
        "mode": options.mode,
        "complexity": options.complexity,
        "cost_sensitive": options.cost_sensitive,
        "decision": options.decision,
        "provider": options.provider,
        "workspace": options.workspace,
    }


async def _heartbeats(
    redis: RedisManager, task_id: str, agent_ids: list[str]
) -> dict[str, dict[str, Any]]:
    if not agent_ids:
        return {}
    names = [keys.heartbeat(task_id, a) for a in agent_ids]
    values = await redis.run(lambda r: r.mget(names))
    out: dict[str, dict[str, Any]] = {}
    for agent_id, raw in zip(agent_ids, values, strict=True):
        if raw is None:
            continue
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict):
            out[agent_id] = beat
    return out


def _agent(row: AgentRow, beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
    ts = beat.get("ts") if beat else None
    return {
        "agentId": row.agent_id,
        "taskId": row.task_id,
        "role": row.role,
        "loop": row.loop,
        "iteration": row.iteration,
        "status": row.status,
        "provider": row.provider,
        "model": row.model,
        "profile": row.profile,
        "confidence": row.confidence,
        "pid": row.pid,
        "reason": row.reason,
        "heartbeat": None
        if beat is None
        else {
            "status": beat.get("status"),
            "ts": ts,
            "ageSeconds": round(now - ts, 3) if isinstance(ts, int | float) else None,
        },
    }


async def agents(store: Store, redis: RedisManager, task_id: str) -> list[dict[str, Any]]:
    """A task's agents with status, provider, confidence and their live heartbeat."""
    keys.validate_id(task_id, "task id")
    rows = await asyncio.to_thread(SqlJournal(store).agents, task_id)
    beats = await _heartbeats(redis, task_id, [r.agent_id for r in rows])
    now = time.time()
    return [_agent(r, beats.get(r.agent_id), now) for r in rows]


async def task_exists(store: Store, redis: RedisManager, task_id: str) -> bool:
    try:
        await asyncio.to_thread(store.get_task, task_id)
        return True
    except NotFoundError:
        return await queued_options(redis, task_id) is not None


class _Statement:
    """One SELECT compiled once for the store's dialect, with its columns' converters."""

    def __init__(self, select_: Select[Any], dialect: Dialect) -> None:
        compiled = select_.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        self.dialect = dialect
        self.columns = tuple(str(c.name) for c in select_.selected_columns)
        self.types = tuple(c.type.dialect_impl(dialect) for c in select_.selected_columns)
        # Some result processors need the driver's column type code (psycopg's
        # numeric OIDs): they are made from the first cursor description, then kept.
        self.converters: tuple[Callable[[Any], Any] | None, ...] | None = None

    def run(self, cursor: Any, task_id: str) -> list[dict[str, Any]]:
        cursor.execute(self.sql, (task_id,) if self.positional else {"task_id": task_id})
        converters = self.converters
        if converters is None:
            codes = [d[1] for d in cursor.description]
            converters = tuple(
                t.result_processor(self.dialect, code)
                for t, code in zip(self.types, codes, strict=True)
            )
            self.converters = converters
        out: list[dict[str, Any]] = []
        for raw in cursor.fetchall():
            out.append(
                {
                    name: value if convert is None or value is None else convert(value)
                    for name, convert, value in zip(self.columns, converters, raw, strict=True)
                }
            )
        return out


class StatusReader:
    """The status endpoint's SQL read: a task row, its iterations, decisions and agents.

    The four SELECTs are compiled once for the store's dialect and run in one
    read transaction on the DB-API cursor of a connection from the store's
    pool (with the store's connection set-up: WAL, UTC). Building, compiling
    and executing SQLAlchemy statements per request cost about 30 times what
    SQLite spends answering them (profiled: ~1.6 ms against ~60 us for four
    point reads), and the status endpoint is the one the dashboard and scripts
    call most. Values pass through the columns' own result processors (SQLite's
    datetime strings become datetimes), so rows read the same as through
    SQLAlchemy; tests compare both on SQLite and PostgreSQL.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        dialect = store.engine.dialect
        task_id: BindParameter[str] = bindparam("task_id")
        self._task = _Statement(select(T_TASKS).where(T_TASKS.c.id == task_id), dialect)
        self._iterations = _Statement(
            select(T_ITERATIONS)
            .where(T_ITERATIONS.c.task_id == task_id)
            .order_by(T_ITERATIONS.c.number),
            dialect,
        )
        self._decisions = _Statement(
            select(T_DECISIONS)
            .where(T_DECISIONS.c.task_id == task_id)
            .order_by(T_DECISIONS.c.id),
            dialect,
        )
        self._agents = _Statement(
            select(T_AGENTS)
            .where(T_AGENTS.c.task_id == task_id)
            .order_by(T_AGENTS.c.created_at, T_AGENTS.c.id),
            dialect,
        )
        self._driver_error: type[BaseException] = dialect.loaded_dbapi.Error
        self._explicit_begin = dialect.name == "sqlite"
        self._inline: Any = None

    def _select(self, connection: Any, task_id: str) -> dict[str, Any] | None:
        cursor = connection.cursor()
        try:
            if self._explicit_begin:
                cursor.execute("BEGIN")  # cfn's SQLite connections are in autocommit mode
            found = self._task.run(cursor, task_id)
            result = None if not found else {
                "task": found[0],
                "iterations": self._iterations.run(cursor, task_id),
                "decisions": self._decisions.run(cursor, task_id),
                "agents": self._agents.run(cursor, task_id),
            }
        finally:
            cursor.close()
            connection.rollback()  # read only: end the transaction
        return result

    def read(self, task_id: str) -> dict[str, Any] | None:
        """The task's rows (dicts of column values) in one read transaction, or None.

        Blocking (a pooled connection, the store's busy timeout): call it in a thread.
        """
        keys.validate_id(task_id, "task id")
        try:
            connection = self.store.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise self._unusable(exc) from exc
        try:
            return self._select(connection, task_id)
        except self._driver_error as exc:
            connection.invalidate()  # a broken connection never goes back to the pool
            raise self._unusable(exc) from exc
        finally:
            connection.close()

    async def aread(self, task_id: str) -> dict[str, Any] | None:
        """:meth:`read` for the event loop.

        On SQLite the read first runs right here, on a connection of the
        reader's own whose busy timeout is 0: in WAL mode a reader never waits
        for writers, four point reads take tens of microseconds, and handing
        them to a worker thread cost more than the reads (profiled: the thread
        hop was a tenth of the endpoint's time). Should SQLite still answer
        "busy" (a checkpoint or recovery holding its lock), nothing waits on the
        event loop: the read goes to a thread with the store's busy timeout.
        Other databases always read in a thread.
        """
        keys.validate_id(task_id, "task id")
        if self._explicit_begin:
            try:
                if self._inline is None:
                    # Connecting runs the store's set-up (PRAGMA journal_mode ...), which
                    # may wait on a lock: in a thread, never on the event loop.
                    self._inline = await asyncio.to_thread(self._connect_inline)
                return self._select(self._inline, task_id)
            except (self._driver_error, SQLAlchemyError) as exc:
                # Busy, or the connection broke: drop it (a new one next time) and read
                # in a thread, where waiting is harmless.
                log.debug("status read of %s goes to a thread: %s", task_id, exc)
                self._drop_inline()
        return await asyncio.to_thread(self.read, task_id)

    def _connect_inline(self) -> Any:
        connection = self.store.engine.raw_connection()
        cursor = connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 0")  # this connection never waits
        cursor.close()
        return connection

    def _drop_inline(self) -> None:
        inline, self._inline = self._inline, None
        if inline is not None:
            with contextlib.suppress(Exception):
                inline.invalidate()

    def close(self) -> None:
        """Give back the reader's own connection (the store's pool closes the rest)."""
        self._drop_inline()

    def _unusable(self, exc: BaseException) -> DatabaseError:
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return DatabaseError(f"database {self.store.label} is not usable: {first}")


async def task_status(
    reader: StatusReader, redis: RedisManager, task_id: str
) -> dict[str, Any]:
    """Everything the dashboard shows for one task; NotFoundError for an unknown id.

    One SQL read transaction (:class:`StatusReader`) and one Redis round trip
    (an MGET), so the endpoint stays cheap enough to call often.
    """
    keys.validate_id(task_id, "task id")
    found = await reader.aread(task_id)
    if found is None:
        queued = await queued_options(redis, task_id)
        if queued is None:
            raise NotFoundError(f"no task {task_id!r}")
        return {
            "taskId": task_id,
            "status": "queued",
            "options": _options(queued),
            "thresholds": _team(queued),
            "iteration": 0,
            "phase": None,
            "iterations": [],
            "agents": [],
            "decisions": [],
            "awaitingDecision": False,
        }
    record = found["task"]
    try:
        options = TaskOptions.from_json(record["options"]) if record["options"] else None
        checkpoint = (
            Checkpoint.from_json(record["checkpoint"]) if record["checkpoint"] else None
        )
    except (ValueError, TypeError, KeyError, InvalidInputError):
        options = checkpoint = None
    rows = [
        AgentRow(
            r["task_id"], r["id"], r["role"], r["loop"] or 0, r["iteration"] or 0,
            r["profile"], r["provider"], r["model"], r["status"], r["pid"], r["confidence"],
            r["reason"],
        )
        for r in found["agents"]
    ]
    # The awaited decision and every heartbeat: one MGET, one round trip.
    names = [keys.decision(task_id), *(keys.heartbeat(task_id, r.agent_id) for r in rows)]
    replies = await redis.run(lambda r: r.mget(names))
    raw_decision = replies[0]
    beats: dict[str, dict[str, Any]] = {}
    for row, raw in zip(rows, replies[1:], strict=True):
        try:
            beat = json.loads(raw) if raw is not None else None
        except ValueError:
            beat = None
        if isinstance(beat, dict):
            beats[row.agent_id] = beat
    try:
        decision_state = json.loads(raw_decision) if raw_decision else None
    except ValueError:
        decision_state = None
    awaiting = (
        isinstance(decision_state, dict)
        and decision_state.get("status") == "awaiting"
        and record["status"] == "running"
    )
    now = time.time()
    return {
        "taskId": task_id,
        "status": record["status"],
        "mode": record["mode"],
        "epic": record["epic"],
        "createdAt": _iso(record["created_at"]),
        "updatedAt": _iso(record["updated_at"]),
        "options": None if options is None else _options(options),
        "thresholds": None if options is None else _team(options),
        "iteration": None if checkpoint is None else checkpoint.iteration,
        "phase": None if checkpoint is None else checkpoint.phase.value,
        "gate": None if checkpoint is None else checkpoint.gate,
        "consensus": None if checkpoint is None else checkpoint.consensus,
        "outcome": None if checkpoint is None else checkpoint.outcome,
        "reason": None if checkpoint is None else checkpoint.reason,
        "iterations": [
            {
                "number": it["number"],
                "gateMean": it["gate_mean"],
                "consensusMean": it["consensus_mean"],
                "startedAt": _iso(it["started_at"]),
                "finishedAt": _iso(it["finished_at"]),
            }
            for it in found["iterations"]
        ],
        "agents": [_agent(r, beats.get(r.agent_id), now) for r in rows],
        "decisions": [
            {
                "iteration": d["iteration"],
                "decision": d["decision"],
                "by": d["decided_by"],
                "reason": d["reason"],
                "at": _iso(d["created_at"]),
            }
            for d in found["decisions"]
        ],
        "awaitingDecision": bool(awaiting),
        "awaiting": decision_state if awaiting else None,
    }


async def list_tasks(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Newest tasks first, with their iteration count and agent count."""
    records = await asyncio.to_thread(store.list_tasks, None, limit)
    ids = [r.id for r in records]

    def counts() -> tuple[dict[str, int], dict[str, int]]:
        if not ids:
            return {}, {}
        with store.read() as conn:
            its = conn.execute(
                select(T_ITERATIONS.c.task_id, func.max(T_ITERATIONS.c.number))
                .where(T_ITERATIONS.c.task_id.in_(ids))
                .group_by(T_ITERATIONS.c.task_id)
            ).all()
            ags = conn.execute(
                select(T_AGENTS.c.task_id, func.count())
                .where(T_AGENTS.c.task_id.in_(ids))
                .group_by(T_AGENTS.c.task_id)
            ).all()
        return {r[0]: int(r[1]) for r in its}, {r[0]: int(r[1]) for r in ags}

    iterations, agent_counts = await asyncio.to_thread(counts)
    return [
        {
            "taskId": r.id,
            "status": r.status,
            "mode": r.mode,
            "epic": r.epic,
            "createdAt": _iso(r.created_at),
            "updatedAt": _iso(r.updated_at),
            "iterations": iterations.get(r.id, 0),
            "agents": agent_counts.get(r.id, 0),
        }
        for r in records
    ]


ACTIVE = frozenset({"pending", "running"})


def runner_of(task: dict[str, Any], task_workers: dict[str, str]) -> dict[str, Any] | None:
    """Who runs an active task: an orchestrator worker (by name), or ``cfn run``.

    Tasks reach a worker only through the queue, where the worker holds them
    pending until their run ends; an active task no worker holds was started
    by ``cfn run`` (which runs the loop in its own process). Ended tasks: None.
    """
    if task.get("status") not in ACTIVE:
        return None
    worker = task_workers.get(str(task.get("taskId")))
    if worker is not None:
        return {"kind": "worker", "worker": worker}
    return {"kind": "cli"}


async def find_agent_tasks(store: Store, agent_id: str) -> list[AgentRow]:
    """Every task that has an agent with this id (ids repeat across tasks)."""
    keys.validate_id(agent_id, "agent id")

    def query() -> list[str]:
        with store.read() as conn:
            rows = conn.execute(
                select(T_AGENTS.c.task_id).where(T_AGENTS.c.id == agent_id).order_by(
                    T_AGENTS.c.task_id
                )
            ).all()
        return [str(r[0]) for r in rows]

    found: list[AgentRow] = []
    journal = SqlJournal(store)
    for task_id in await asyncio.to_thread(query):
        for row in await asyncio.to_thread(journal.agents, task_id):
            if row.agent_id == agent_id:
                found.append(row)
    return found


async def agent_metrics(store: Store) -> dict[str, Any]:
    def query() -> dict[str, Any]:
        with store.read() as conn:
            rows = conn.execute(
                select(
                    T_AGENTS.c.status,
                    T_AGENTS.c.provider,
                    T_AGENTS.c.role,
                    func.count(),
                    func.avg(T_AGENTS.c.confidence),
                ).group_by(T_AGENTS.c.status, T_AGENTS.c.provider, T_AGENTS.c.role)
            ).all()
        by_status: Counter[str] = Counter()
        by_provider: Counter[str] = Counter()
        by_role: Counter[str] = Counter()
        conf_sum = 0.0
        conf_n = 0
        for status, provider, role, count, mean in rows:
            by_status[str(status)] += int(count)
            by_provider[str(provider or "unknown")] += int(count)
            by_role[str(role)] += int(count)
            if mean is not None:
                conf_sum += float(mean) * int(count)
                conf_n += int(count)
        return {
            "total": sum(by_status.values()),
            "byStatus": dict(by_status),
            "byProvider": dict(by_provider),
            "byRole": dict(by_role),
            "meanConfidence": round(conf_sum / conf_n, 4) if conf_n else None,
        }

    data = await asyncio.to_thread(query)
    usage = await asyncio.to_thread(store.llm_usage)
    data["llm"] = usage.model_dump()
    return data


async def task_metrics(store: Store) -> dict[str, Any]:
    def query() -> dict[str, Any]:
        with store.read() as conn:
            statuses = conn.execute(
                select(T_TASKS.c.status, func.count()).group_by(T_TASKS.c.status)
            ).all()
            modes = conn.execute(
                select(T_TASKS.c.mode, func.count()).group_by(T_TASKS.c.mode)
            ).all()
            decisions = conn.execute(
                select(T_DECISIONS.c.decision, func.count()).group_by(T_DECISIONS.c.decision)
            ).all()
            per_task = (
                select(T_ITERATIONS.c.task_id, func.max(T_ITERATIONS.c.number).label("n"))
                .group_by(T_ITERATIONS.c.task_id)
                .subquery()
            )
            mean_iterations = conn.execute(select(func.avg(per_task.c.n))).scalar()
            gate = conn.execute(select(func.avg(T_ITERATIONS.c.gate_mean))).scalar()
            consensus = conn.execute(select(func.avg(T_ITERATIONS.c.consensus_mean))).scalar()
        by_status = {str(s): int(c) for s, c in statuses}
        return {
            "total": sum(by_status.values()),
            "byStatus": by_status,
            "byMode": {str(m): int(c) for m, c in modes},
            "decisions": {str(d): int(c) for d, c in decisions},
            "meanIterations": None if mean_iterations is None else round(float(mean_iterations), 3),
            "meanGate": None if gate is None else round(float(gate), 4),
            "meanConsensus": None if consensus is None else round(float(consensus), 4),
        }

    return await asyncio.to_thread(query)
