"""Figures over the loop's tables: the portal's task list, its metrics and ``/metrics``.

Grouped counts and means computed by the database, returned as records; the
portal turns them into JSON or Prometheus samples.
"""

from __future__ import annotations

from sqlalchemy import func, select

from cfn.store.records import AgentTally, TaskStats, TaskSummary
from cfn.store.repository import T_AGENTS, T_DECISIONS, T_ITERATIONS, T_TASKS, Store


def task_summaries(store: Store, limit: int = 50) -> list[TaskSummary]:
    """Newest tasks first, each with its highest iteration number and its agent count."""
    records = store.list_tasks(None, limit)
    ids = [r.id for r in records]
    if not ids:
        return []
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
    iterations = {str(r[0]): int(r[1]) for r in its}
    agents = {str(r[0]): int(r[1]) for r in ags}
    return [
        TaskSummary(task=r, iterations=iterations.get(r.id, 0), agents=agents.get(r.id, 0))
        for r in records
    ]


def agent_tallies(store: Store) -> list[AgentTally]:
    """Agents of every task, counted by status, provider and role."""
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
    return [
        AgentTally(
            status=str(status),
            provider=None if provider is None else str(provider),
            role=str(role),
            count=int(count),
            mean_confidence=None if mean is None else float(mean),
        )
        for status, provider, role, count, mean in rows
    ]


def task_counts(store: Store) -> dict[str, int]:
    """Tasks by status."""
    with store.read() as conn:
        rows = conn.execute(select(T_TASKS.c.status, func.count()).group_by(T_TASKS.c.status))
        return {str(s): int(c) for s, c in rows}


def task_stats(store: Store) -> TaskStats:
    """Tasks by status and mode, decisions by kind, and the mean iterations and scores."""
    with store.read() as conn:
        statuses = conn.execute(
            select(T_TASKS.c.status, func.count()).group_by(T_TASKS.c.status)
        ).all()
        modes = conn.execute(select(T_TASKS.c.mode, func.count()).group_by(T_TASKS.c.mode)).all()
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
    return TaskStats(
        by_status={str(s): int(c) for s, c in statuses},
        by_mode={str(m): int(c) for m, c in modes},
        decisions={str(d): int(c) for d, c in decisions},
        mean_iterations=None if mean_iterations is None else float(mean_iterations),
        mean_gate=None if gate is None else float(gate),
        mean_consensus=None if consensus is None else float(consensus),
    )
