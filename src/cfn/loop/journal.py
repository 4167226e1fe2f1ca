"""The orchestrator's journal on the SQL store (SQLite or PostgreSQL).

The loop's state (TaskOptions, Checkpoint) is the loop's to serialise; every
statement and transaction is the store's (:class:`cfn.store.Store`), where a
write that breaks off on a busy or restarting database is run again. Each
method is one transaction.
"""

from __future__ import annotations

import json
from typing import Any

from cfn.errors import InvalidInputError
from cfn.loop.state import Checkpoint, TaskOptions, ended_figures
from cfn.store.records import AgentRecord, DecisionRecord
from cfn.store.repository import Store

#: Events are read back in pages of this many.
_PAGE = 1000


class SqlJournal:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- tasks ------------------------------------------------------------------------

    def create_task(self, options: TaskOptions, checkpoint: Checkpoint) -> None:
        self.store.create_task(
            options.task_id,
            options.mode,
            options.epic,
            options=options.to_json(),
            checkpoint=checkpoint.to_json(),
        )

    def load_task(self, task_id: str) -> tuple[TaskOptions, Checkpoint, str]:
        task = self.store.get_task(task_id)
        if not task.options or not task.checkpoint:
            raise InvalidInputError(f"task {task_id!r} was not created by the orchestrator")
        return (
            TaskOptions.from_json(task.options),
            Checkpoint.from_json(task.checkpoint),
            task.status,
        )

    def save_checkpoint(self, task_id: str, checkpoint: Checkpoint, status: str) -> None:
        # One iteration row per iteration number, with its figures as they land.
        self.store.save_checkpoint(
            task_id,
            checkpoint.to_json(),
            status,
            iteration=checkpoint.iteration,
            gate_mean=checkpoint.gate.get("score") if checkpoint.gate else None,
            consensus_mean=checkpoint.consensus.get("score") if checkpoint.consensus else None,
            ended=ended_figures(checkpoint),
        )

    # --- agents -----------------------------------------------------------------------

    def save_agent(self, row: AgentRecord) -> None:
        self.store.save_agent(row)

    def agents(self, task_id: str) -> list[AgentRecord]:
        return self.store.list_agents(task_id)

    # --- decisions ----------------------------------------------------------------------

    def record_decision(self, row: DecisionRecord) -> DecisionRecord:
        """Insert, or return the decision already recorded for that iteration."""
        return self.store.record_decision(row)

    def decision(self, task_id: str, iteration: int) -> DecisionRecord | None:
        return self.store.decision(task_id, iteration)

    # --- events -------------------------------------------------------------------------

    def append_event(self, task_id: str, kind: str, payload: dict[str, Any]) -> int:
        return self.store.append_event(kind, json.loads(json.dumps(payload, default=str)), task_id)

    def events(self, task_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        out: list[tuple[int, str, dict[str, Any]]] = []
        position = after
        while True:
            batch = self.store.events(task_id, after_id=position, limit=_PAGE)
            for record in batch:
                data = json.loads(record.payload)
                out.append((record.id, record.kind, data if isinstance(data, dict) else {}))
            if len(batch) < _PAGE:
                return out
            position = batch[-1].id


__all__ = ["SqlJournal"]
