"""The orchestrator's durable state: task options and checkpoint, agent loop,
iteration, pid and failure reason, and one decision per task iteration.

Revision ID: 0003
Revises: 0002
Create Date: issue 5
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("options", sa.Text()))
        batch.add_column(sa.Column("checkpoint", sa.Text()))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("loop", sa.Integer()))
        batch.add_column(sa.Column("iteration", sa.Integer()))
        batch.add_column(sa.Column("pid", sa.Integer()))
        batch.add_column(sa.Column("reason", sa.Text()))
    with op.batch_alter_table("decisions") as batch:
        batch.create_unique_constraint("uq_decisions_task_id_iteration", ["task_id", "iteration"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_constraint("uq_decisions_task_id_iteration", type_="unique")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("reason")
        batch.drop_column("pid")
        batch.drop_column("iteration")
        batch.drop_column("loop")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("checkpoint")
        batch.drop_column("options")
