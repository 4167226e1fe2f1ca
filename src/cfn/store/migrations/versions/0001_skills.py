"""The seed's skills and approval_history tables.

Revision ID: 0001
Revises:
Create Date: issue 3
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("content_path", sa.String(512)),
        sa.Column("created_at", sa.DateTime(), server_default=sa.func.current_timestamp()),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_skills"),
        sa.UniqueConstraint("name", name="uq_skills_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "approval_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("skill_id", sa.Integer()),
        sa.Column("agent_id", sa.String(255)),
        sa.Column("decision", sa.String(20)),
        sa.Column("confidence", sa.Float()),
        sa.Column("metadata", sa.Text()),
        sa.Column("created_at", sa.DateTime(), server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_approval_history"),
        sa.ForeignKeyConstraint(
            ["skill_id"], ["skills.id"], name="fk_approval_history_skill_id_skills"
        ),
        sa.CheckConstraint(
            "decision IN ('APPROVE', 'REJECT', 'DEFER')", name="ck_approval_history_decision"
        ),
        sa.CheckConstraint(
            "confidence >= 0 AND confidence <= 1", name="ck_approval_history_confidence"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_approval_history_skill_id", "approval_history", ["skill_id"])


def downgrade() -> None:
    op.drop_index("ix_approval_history_skill_id", table_name="approval_history")
    op.drop_table("approval_history")
    op.drop_table("skills")
