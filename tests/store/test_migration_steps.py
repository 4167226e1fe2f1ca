"""Every revision, one step at a time, down to base and back: rows in surviving tables stay.

Written against any future revision too: a downgrade that rebuilds a parent
table on SQLite used to empty its ON DELETE CASCADE children (the DROP inside
the rebuild runs an implicit DELETE while foreign keys are on).
"""

from __future__ import annotations

from sqlalchemy import func, inspect, select, table

from cfn.store import migrate
from cfn.store.records import AgentRecord, DecisionRecord
from cfn.store.repository import Store


def _counts(store: Store) -> dict[str, int]:
    """Rows per table that exists now (the models may know tables a downgrade dropped)."""
    tables = set(inspect(store.engine).get_table_names()) - {"alembic_version"}
    with store.read() as conn:
        return {
            name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one())
            for name in sorted(tables)
        }


def _fill(store: Store) -> None:
    store.upsert_skill("s1", "a" * 64, "skills/s1/SKILL.md")
    store.add_approval("s1", "impl-1-1", "APPROVE", 0.9, '{"why": "ok"}')
    store.create_task("t1", "standard", "epic")  # and its iteration 1
    store.save_agent(AgentRecord("t1", "impl-1-1", "implementer", 3, 1, None, None, None,
                                 "pending"))  # fmt: skip
    store.save_agent(AgentRecord("t1", "val-1-1", "v", 2, 1, None, None, None, "pending"))
    store.record_decision(DecisionRecord("t1", 1, "ITERATE", "product-owner", None))
    store.append_event("loop3.start", {"n": 1}, "t1")
    store.record_llm_call(
        provider="offline", model="m", input_tokens=3, output_tokens=4, cost_usd=0.0, task_id="t1"
    )
    store.append_mcp_audit(
        [{"server": "redis-tools", "tool": "redis_scan", "outcome": "ok", "duration_ms": 1.5}]
    )


def test_each_step_down_and_up_keeps_surviving_rows(store: Store) -> None:
    _fill(store)
    full = _counts(store)
    assert all(full[name] > 0 for name in full), full
    revisions = migrate.revisions()
    for target in [*reversed(revisions[:-1]), "base"]:
        migrate.downgrade(store.engine, "-1")
        assert migrate.current(store.engine) == (None if target == "base" else target)
        now = _counts(store)
        assert now == {name: full[name] for name in now}, (target, now)
    for target in revisions:
        migrate.upgrade(store.engine, "+1")
        assert migrate.current(store.engine) == target
    assert migrate.current(store.engine) == migrate.head()


def test_downgrade_keeps_foreign_keys_on_for_later_writes(store: Store) -> None:
    _fill(store)
    migrate.downgrade(store.engine, "-1")
    migrate.upgrade(store.engine)
    if store.dialect == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
