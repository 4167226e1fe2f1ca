"""What the portal shows, read from real state: the store's records (tasks,
iterations, agents, decisions, events, LLM usage) and Redis (heartbeats, the
awaited decision, the task queue). Plain JSON-ready dicts; the routes only add
auth and HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime
from typing import Any

from cfn import keys
from cfn.agents.heartbeat import parse_beat
from cfn.coordination.connection import RedisManager
from cfn.errors import InvalidInputError, NotFoundError
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.loop.worker import queued_options
from cfn.store import reports
from cfn.store.records import AgentRecord
from cfn.store.repository import Store
from cfn.store.status import StatusReader


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
        beat = parse_beat(raw)
        if beat is not None:
            out[agent_id] = beat
    return out


def _agent(row: AgentRecord, beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
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
    rows = await asyncio.to_thread(store.list_agents, task_id)
    beats = await _heartbeats(redis, task_id, [r.agent_id for r in rows])
    now = time.time()
    return [_agent(r, beats.get(r.agent_id), now) for r in rows]


async def task_exists(store: Store, redis: RedisManager, task_id: str) -> bool:
    try:
        await asyncio.to_thread(store.get_task, task_id)
        return True
    except NotFoundError:
        return await queued_options(redis, task_id) is not None


async def task_status(reader: StatusReader, redis: RedisManager, task_id: str) -> dict[str, Any]:
    """Everything the dashboard shows for one task; NotFoundError for an unknown id.

    One SQL read transaction (:class:`cfn.store.status.StatusReader`) and one Redis round trip
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
    record = found.task
    try:
        options = TaskOptions.from_json(record.options) if record.options else None
        checkpoint = Checkpoint.from_json(record.checkpoint) if record.checkpoint else None
    except (ValueError, TypeError, KeyError, InvalidInputError):
        options = checkpoint = None
    rows = found.agents
    # The awaited decision and every heartbeat: one MGET, one round trip.
    names = [keys.decision(task_id), *(keys.heartbeat(task_id, r.agent_id) for r in rows)]
    replies = await redis.run(lambda r: r.mget(names))
    raw_decision = replies[0]
    beats: dict[str, dict[str, Any]] = {}
    for row, raw in zip(rows, replies[1:], strict=True):
        beat = parse_beat(raw)
        if beat is not None:
            beats[row.agent_id] = beat
    try:
        decision_state = json.loads(raw_decision) if raw_decision else None
    except (ValueError, RecursionError):
        decision_state = None
    awaiting = (
        isinstance(decision_state, dict)
        and decision_state.get("status") == "awaiting"
        and record.status == "running"
    )
    now = time.time()
    return {
        "taskId": task_id,
        "status": record.status,
        "mode": record.mode,
        "epic": record.epic,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
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
                "number": it.number,
                "gateMean": it.gate_mean,
                "consensusMean": it.consensus_mean,
                "startedAt": _iso(it.started_at),
                "finishedAt": _iso(it.finished_at),
            }
            for it in found.iterations
        ],
        "agents": [_agent(r, beats.get(r.agent_id), now) for r in rows],
        "decisions": [
            {
                "iteration": d.iteration,
                "decision": d.decision,
                "by": d.decided_by,
                "reason": d.reason,
                "at": _iso(d.created_at),
            }
            for d in found.decisions
        ],
        "awaitingDecision": bool(awaiting),
        "awaiting": decision_state if awaiting else None,
    }


async def list_tasks(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Newest tasks first, with their iteration count and agent count."""
    summaries = await asyncio.to_thread(reports.task_summaries, store, limit)
    return [
        {
            "taskId": r.task.id,
            "status": r.task.status,
            "mode": r.task.mode,
            "epic": r.task.epic,
            "createdAt": _iso(r.task.created_at),
            "updatedAt": _iso(r.task.updated_at),
            "iterations": r.iterations,
            "agents": r.agents,
        }
        for r in summaries
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


async def find_agent_tasks(store: Store, agent_id: str) -> list[AgentRecord]:
    """Every task that has an agent with this id (ids repeat across tasks)."""
    keys.validate_id(agent_id, "agent id")
    return await asyncio.to_thread(lambda: store.list_agents(agent_id=agent_id))


async def agent_metrics(store: Store) -> dict[str, Any]:
    def query() -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        by_provider: Counter[str] = Counter()
        by_role: Counter[str] = Counter()
        conf_sum = 0.0
        conf_n = 0
        for tally in reports.agent_tallies(store):
            by_status[tally.status] += tally.count
            by_provider[tally.provider or "unknown"] += tally.count
            by_role[tally.role] += tally.count
            if tally.mean_confidence is not None:
                conf_sum += tally.mean_confidence * tally.count
                conf_n += tally.count
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
    stats = await asyncio.to_thread(reports.task_stats, store)
    return {
        "total": sum(stats.by_status.values()),
        "byStatus": stats.by_status,
        "byMode": stats.by_mode,
        "decisions": stats.decisions,
        "meanIterations": None
        if stats.mean_iterations is None
        else round(stats.mean_iterations, 3),
        "meanGate": None if stats.mean_gate is None else round(stats.mean_gate, 4),
        "meanConsensus": None if stats.mean_consensus is None else round(stats.mean_consensus, 4),
    }
