"""Multi-row writes are all-or-nothing: a failure half-way leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, insert

from cfn.errors import DatabaseError, InvalidIdError, InvalidInputError, NotFoundError
from cfn.store.records import AgentRecord, ApprovalInput
from cfn.store.repository import T_AGENTS, T_APPROVALS, T_SKILLS, T_TASKS, Store, utcnow


def _approval(name: str, confidence: float = 0.5, decision: str = "APPROVE") -> ApprovalInput:
    return ApprovalInput(
        skill_name=name, agent_id="impl-1-1", decision=decision, confidence=confidence
    )


def test_database_failure_half_way_through_a_task_leaves_nothing(store: Store) -> None:
    # Two agents with the same id: the primary key refuses the third INSERT,
    # after the task row and the first agent went in.
    def work(conn: Connection) -> None:
        now = utcnow()
        conn.execute(insert(T_TASKS).values(id="t1", mode="mvp", epic="epic", status="pending",
                                            created_at=now, updated_at=now))  # fmt: skip
        for role in ("implementer", "x"):
            conn.execute(insert(T_AGENTS).values(task_id="t1", id="impl-1-1", role=role,
                                                 status="pending", created_at=now))  # fmt: skip

    with pytest.raises(DatabaseError, match="nothing was written"):
        store.transaction(work)
    counts = store.row_counts()
    assert counts["tasks"] == 0
    assert counts["agents"] == 0
    # The same task id is free again, and works with good agents.
    store.create_task("t1", "mvp", "epic")
    store.save_agent(AgentRecord("t1", "impl-1-1", "implementer", 3, 1, None, None, None,
                                 "pending"))  # fmt: skip
    assert [a.agent_id for a in store.list_agents("t1")] == ["impl-1-1"]


def test_exception_from_callers_iterable_half_way_appends_no_event(store: Store) -> None:
    def events() -> Iterator[tuple[str, dict[str, Any], str | None]]:
        yield ("a", {"n": 1}, None)
        yield ("b", {"n": 2}, None)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        store.append_events(events())
    assert store.events() == []


def test_bad_item_half_way_appends_no_event(store: Store) -> None:
    with pytest.raises(InvalidIdError):
        store.append_events([("a", {}, "t1"), ("b", {}, "bad task id!"), ("c", {}, None)])
    assert store.events() == []


def test_approval_batch_is_checked_whole_before_writing(store: Store) -> None:
    store.upsert_skill("s", "0" * 64, "skills/s.md")
    with pytest.raises(InvalidInputError, match="outside"):
        store.add_approvals([_approval("s"), _approval("s"), _approval("s", confidence=1.5)])
    with pytest.raises(NotFoundError):
        store.add_approvals([_approval("s"), _approval("missing")])
    assert store.history("s") == []
    assert len(store.add_approvals([_approval("s"), _approval("s", decision="defer")])) == 2
    assert [h.decision for h in store.history("s")] == ["APPROVE", "DEFER"]


def test_constraint_violation_half_way_rolls_back_the_whole_write(store: Store) -> None:
    """Straight to SQL: the CHECK on confidence fires on the third row."""
    with pytest.raises(DatabaseError), store.write() as conn:
        skill_id = conn.execute(
            insert(T_SKILLS).values(name="s").returning(T_SKILLS.c.id)
        ).scalar_one()
        for confidence in (0.1, 0.2, 7.0):
            conn.execute(
                insert(T_APPROVALS).values(
                    skill_id=skill_id, agent_id="a", decision="APPROVE", confidence=confidence
                )
            )
    assert store.row_counts()["skills"] == 0
    assert store.row_counts()["approval_history"] == 0


def test_callers_exception_inside_write_rolls_back(store: Store) -> None:
    with pytest.raises(KeyError), store.write() as conn:
        conn.execute(insert(T_SKILLS).values(name="s"))
        raise KeyError("caller failed")
    assert store.list_skills() == []
