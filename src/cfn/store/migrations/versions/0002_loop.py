"""CFN Loop tables: tasks, iterations, agents, decisions, the event log, LLM usage.

Revision ID: 0002
Revises: 0001
Create Date: issue 3
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_TRIGGERS = (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
)
PG_TRIGGERS = (
    "CREATE FUNCTION cfn_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$",
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
    "FOR EACH ROW EXECUTE FUNCTION cfn_events_append_only()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
    "FOR EACH STATEMENT EXECUTE FUNCTION cfn_events_append_only()",
)


def _now() -> sa.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("epic", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'aborted')",
            name="ck_tasks_status",
        ),
        sa.CheckConstraint("mode IN ('mvp', 'standard', 'enterprise')", name="ck_tasks_mode"),
    )
    op.create_table(
        "iterations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("gate_mean", sa.Float()),
        sa.Column("consensus_mean", sa.Float()),
        sa.Column("started_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.Column("finished_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_iterations"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_iterations_task_id_tasks", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("task_id", "number", name="uq_iterations_task_id_number"),
    )
    op.create_table(
        "agents",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("profile", sa.String(255)),
        sa.Column("provider", sa.String(64)),
        sa.Column("model", sa.String(255)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("confidence", sa.Float()),
        sa.Column("heartbeat", sa.DateTime()),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("task_id", "id", name="pk_agents"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_agents_task_id_tasks", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed', 'killed')",
            name="ck_agents_status",
        ),
        sa.CheckConstraint(
            "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)",
            name="ck_agents_confidence",
        ),
    )
    op.create_table(
        "decisions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_decisions_task_id_tasks", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "decision IN ('PROCEED', 'ITERATE', 'ABORT')", name="ck_decisions_decision"
        ),
    )
    op.create_index("ix_decisions_task_id", "decisions", ["task_id"])
    op.create_table(
        "events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(128)),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_task_id_id", "events", ["task_id", "id"])
    op.create_table(
        "llm_calls",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(128)),
        sa.Column("agent_id", sa.String(128)),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_llm_calls"),
        sa.CheckConstraint("input_tokens >= 0 AND output_tokens >= 0", name="ck_llm_calls_tokens"),
        sa.CheckConstraint("cost_usd >= 0", name="ck_llm_calls_cost"),
    )
    op.create_index("ix_llm_calls_task_id", "llm_calls", ["task_id"])
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else PG_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS cfn_events_append_only()")
    op.drop_index("ix_llm_calls_task_id", table_name="llm_calls")
    op.drop_table("llm_calls")
    op.drop_index("ix_events_task_id_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_decisions_task_id", table_name="decisions")
    op.drop_table("decisions")
    op.drop_table("agents")
    op.drop_table("iterations")
    op.drop_table("tasks")
