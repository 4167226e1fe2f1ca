"""What the LLM gateway records per call besides tokens and cost.

Revision ID: 0005
Revises: 0004
Create Date: issue 15

``latency_ms`` (request received to last byte), ``status`` (ok, error,
budget_stopped) and ``via`` (gateway, or direct for a call made in-process,
such as ``cfn providers test``). Older rows keep NULL in all three.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("llm_calls") as batch:
        batch.add_column(sa.Column("latency_ms", sa.Float()))
        batch.add_column(sa.Column("status", sa.String(32)))
        batch.add_column(sa.Column("via", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("llm_calls") as batch:
        batch.drop_column("via")
        batch.drop_column("status")
        batch.drop_column("latency_ms")
