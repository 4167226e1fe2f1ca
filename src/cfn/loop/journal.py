"""The orchestrator's journal on the SQL store (SQLite or PostgreSQL).

Every write is one transaction. The decision of a task iteration is unique
in the database (revision 0003), so a resumed orchestrator that races its
own earlier write gets the recorded decision back instead of a second row.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from cfn import keys
from cfn.errors import DatabaseError, InvalidInputError, NotFoundError
from cfn.loop.state import AgentRow, Checkpoint, DecisionRow, TaskOptions
from cfn.store.repository import (
    T_AGENTS,
    T_DECISIONS,
    T_EVENTS,
    T_ITERATIONS,
    T_TASKS,
    Store,
    utcnow,
)


class SqlJournal:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- tasks ------------------------------------------------------------------------

    def create_task(self, options: TaskOptions, checkpoint: Checkpoint) -> None:
        now = utcnow()
        with self.store.write() as conn:
            exists = conn.execute(
                select(T_TASKS.c.id).where(T_TASKS.c.id == options.task_id)
            ).first()
            if exists:
                raise InvalidInputError(
                    f"task {options.task_id!r} exists already; `cfn resume {options.task_id}` "
                    "continues it"
                )
            conn.execute(
                insert(T_TASKS).values(
                    id=options.task_id,
                    mode=options.mode,
                    epic=options.epic,
                    status="pending",
                    created_at=now,
                    updated_at=now,
                    options=options.to_json(),
                    checkpoint=checkpoint.to_json(),
                )
            )
            conn.execute(
                insert(T_ITERATIONS).values(task_id=options.task_id, number=1, started_at=now)
            )

    def load_task(self, task_id: str) -> tuple[TaskOptions, Checkpoint, str]:
        keys.validate_id(task_id, "task id")
        with self.store.read() as conn:
            row = conn.execute(
                select(T_TASKS.c.options, T_TASKS.c.checkpoint, T_TASKS.c.status).where(
                    T_TASKS.c.id == task_id
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}")
        if not row.options or not row.checkpoint:
            raise InvalidInputError(f"task {task_id!r} was not created by the orchestrator")
        return TaskOptions.from_json(row.options), Checkpoint.from_json(row.checkpoint), row.status

    def save_checkpoint(self, task_id: str, checkpoint: Checkpoint, status: str) -> None:
        now = utcnow()
        with self.store.write() as conn:
            result = conn.execute(
                update(T_TASKS)
                .where(T_TASKS.c.id == task_id)
                .values(checkpoint=checkpoint.to_json(), status=status, updated_at=now)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no task {task_id!r}")
            # One iteration row per iteration number, with its figures as they land.
            have = conn.execute(
                select(T_ITERATIONS.c.number).where(
                    T_ITERATIONS.c.task_id == task_id,
                    T_ITERATIONS.c.number == checkpoint.iteration,
                )
            ).first()
            if have is None:
                conn.execute(
                    insert(T_ITERATIONS).values(
                        task_id=task_id, number=checkpoint.iteration, started_at=now
                    )
                )
            values: dict[str, Any] = {}
            if checkpoint.gate:
                values["gate_mean"] = checkpoint.gate.get("score")
            if checkpoint.consensus:
                values["consensus_mean"] = checkpoint.consensus.get("score")
            if values:
                conn.execute(
                    update(T_ITERATIONS)
                    .where(
                        T_ITERATIONS.c.task_id == task_id,
                        T_ITERATIONS.c.number == checkpoint.iteration,
                    )
                    .values(**values)
                )

    # --- agents -----------------------------------------------------------------------

    def save_agent(self, row: AgentRow) -> None:
        values = {
            "role": row.role,
            "profile": row.profile,
            "provider": row.provider,
            "model": row.model,
            "status": row.status,
            "confidence": row.confidence,
            "loop": row.loop,
            "iteration": row.iteration,
            "pid": row.pid,
            "reason": row.reason,
        }
        with self.store.write() as conn:
            result = conn.execute(
                update(T_AGENTS)
                .where(T_AGENTS.c.task_id == row.task_id, T_AGENTS.c.id == row.agent_id)
                .values(**values)
            )
            if result.rowcount == 0:
                conn.execute(
                    insert(T_AGENTS).values(
                        task_id=row.task_id, id=row.agent_id, created_at=utcnow(), **values
                    )
                )

    def agents(self, task_id: str) -> list[AgentRow]:
        with self.store.read() as conn:
            rows = conn.execute(
                select(T_AGENTS)
                .where(T_AGENTS.c.task_id == task_id)
                .order_by(T_AGENTS.c.created_at, T_AGENTS.c.id)
            ).all()
        return [
            AgentRow(
                r.task_id,
                r.id,
                r.role,
                r.loop or 0,
                r.iteration or 0,
                r.profile,
                r.provider,
                r.model,
                r.status,
                r.pid,
                r.confidence,
                r.reason,
            )
            for r in rows
        ]

    # --- decisions ----------------------------------------------------------------------

    def record_decision(self, row: DecisionRow) -> DecisionRow:
        try:
            with self.store.write() as conn:
                conn.execute(
                    insert(T_DECISIONS).values(
                        task_id=row.task_id,
                        iteration=row.iteration,
                        decision=row.decision,
                        decided_by=row.decided_by[:255],
                        reason=row.reason,
                        created_at=utcnow(),
                    )
                )
        except DatabaseError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            existing = self.decision(row.task_id, row.iteration)
            if existing is None:
                raise
            return existing
        return row

    def decision(self, task_id: str, iteration: int) -> DecisionRow | None:
        with self.store.read() as conn:
            r = conn.execute(
                select(T_DECISIONS).where(
                    T_DECISIONS.c.task_id == task_id, T_DECISIONS.c.iteration == iteration
                )
            ).first()
        if r is None:
            return None
        return DecisionRow(r.task_id, r.iteration, r.decision, r.decided_by, r.reason)

    # --- events -------------------------------------------------------------------------

    def append_event(self, task_id: str, kind: str, payload: dict[str, Any]) -> int:
        return self.store.append_event(kind, json.loads(json.dumps(payload, default=str)), task_id)

    def events(self, task_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        out: list[tuple[int, str, dict[str, Any]]] = []
        cursor = after
        while True:
            batch = self.store.events(task_id, after_id=cursor, limit=1000)
            for record in batch:
                data = json.loads(record.payload)
                out.append((record.id, record.kind, data if isinstance(data, dict) else {}))
            if len(batch) < 1000:
                return out
            cursor = batch[-1].id


__all__ = ["T_EVENTS", "SqlJournal"]
