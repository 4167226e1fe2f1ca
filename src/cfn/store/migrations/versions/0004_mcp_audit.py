"""The MCP audit trail: one row per MCP tool call, allowed or refused.

Revision ID: 0004
Revises: 0003
Create Date: issue 6
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mcp_audit",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(), nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")
        ),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.String(128)),
        sa.Column("task_id", sa.String(128)),
        sa.Column("server", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_mcp_audit"),
        sa.CheckConstraint(
            "outcome IN ('ok', 'error', 'forbidden', 'unauthorized')", name="ck_mcp_audit_outcome"
        ),
        sa.CheckConstraint("duration_ms >= 0", name="ck_mcp_audit_duration"),
    )
    op.create_index("ix_mcp_audit_task_id_id", "mcp_audit", ["task_id", "id"])
    op.create_index("ix_mcp_audit_agent_id_id", "mcp_audit", ["agent_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_mcp_audit_agent_id_id", table_name="mcp_audit")
    op.drop_index("ix_mcp_audit_task_id_id", table_name="mcp_audit")
    op.drop_table("mcp_audit")
