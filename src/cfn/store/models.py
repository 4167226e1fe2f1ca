"""The SQL schema (layer 2), as SQLAlchemy 2 models.

``skills`` and ``approval_history`` are the seed's tables column for column:
names, types, the UNIQUE name, the ``CURRENT_TIMESTAMP`` defaults and the
foreign key from ``approval_history.skill_id`` to ``skills.id``. On SQLite
they keep the seed's ``AUTOINCREMENT`` (ids are never reused after a delete).
We add named CHECK constraints on decision and confidence, and an index on
``skill_id``: the seed has neither, but a row no cfn code would write should
not be writable by hand either, and history lookups go by skill.

The other tables are what the CFN Loop and the portal need. ``events`` is an
append-only log: the migration installs triggers on both engines that refuse
UPDATE and DELETE. ``llm_calls`` takes token usage and cost from the provider
code; its task and agent ids are plain indexed columns, not foreign keys,
because a provider call can happen outside any task (a connectivity check).

The schema itself is created by the Alembic migrations, never by
``metadata.create_all``; these models are what the code queries through.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The seed's approval decisions.
DECISIONS = ("APPROVE", "REJECT", "DEFER")
#: The product owner's decisions (DESIGN.md, step 5).
LOOP_DECISIONS = ("PROCEED", "ITERATE", "ABORT")
TASK_STATUSES = ("pending", "running", "succeeded", "failed", "aborted")
FINISHED_TASK_STATUSES = ("succeeded", "failed", "aborted")
AGENT_STATUSES = ("pending", "running", "done", "failed", "killed")
MODES = ("mvp", "standard", "enterprise")

#: 64-bit ids on PostgreSQL; SQLite only autoincrements ``INTEGER PRIMARY KEY``.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    # Constant SQL built from the module's own literals, never from input.
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Skill(Base):
    __tablename__ = "skills"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    content_path: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime | None] = mapped_column(
        DateTime, server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime, server_default=func.current_timestamp()
    )


class ApprovalHistory(Base):
    __tablename__ = "approval_history"
    __table_args__ = (
        CheckConstraint(_in("decision", DECISIONS), name="decision"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
        Index("ix_approval_history_skill_id", "skill_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    skill_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("skills.id"))
    agent_id: Mapped[str | None] = mapped_column(String(255))
    decision: Mapped[str | None] = mapped_column(String(20))
    confidence: Mapped[float | None] = mapped_column(Float)
    # ``metadata`` is reserved on declarative classes; the column keeps the seed's name.
    meta: Mapped[str | None] = mapped_column("metadata", Text)
    created_at: Mapped[datetime | None] = mapped_column(
        DateTime, server_default=func.current_timestamp()
    )


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", TASK_STATUSES), name="status"),
        CheckConstraint(_in("mode", MODES), name="mode"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    mode: Mapped[str] = mapped_column(String(20), nullable=False)
    epic: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )
    #: The orchestrator's run options and checkpoint, as JSON (revision 0003).
    options: Mapped[str | None] = mapped_column(Text)
    checkpoint: Mapped[str | None] = mapped_column(Text)


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("task_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    gate_mean: Mapped[float | None] = mapped_column(Float)
    consensus_mean: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint(_in("status", AGENT_STATUSES), name="status"),
        CheckConstraint(
            "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="confidence"
        ),
    )

    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(64), nullable=False)
    profile: Mapped[str | None] = mapped_column(String(255))
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    confidence: Mapped[float | None] = mapped_column(Float)
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime)
    loop: Mapped[int | None] = mapped_column(Integer)
    iteration: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(_in("decision", LOOP_DECISIONS), name="decision"),
        ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        UniqueConstraint("task_id", "iteration", name="uq_decisions_task_id_iteration"),
        Index("ix_decisions_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(128), nullable=False)
    iteration: Mapped[int] = mapped_column(Integer, nullable=False)
    decision: Mapped[str] = mapped_column(String(20), nullable=False)
    decided_by: Mapped[str] = mapped_column(String(255), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_task_id_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )


class LlmCall(Base):
    __tablename__ = "llm_calls"
    __table_args__ = (
        CheckConstraint("input_tokens >= 0 AND output_tokens >= 0", name="tokens"),
        CheckConstraint("cost_usd >= 0", name="cost"),
        Index("ix_llm_calls_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(String(128))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(255), nullable=False)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )
    #: Revision 0005: what the LLM gateway knows of the call (NULL in older rows).
    latency_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str | None] = mapped_column(String(32))
    via: Mapped[str | None] = mapped_column(String(16))


#: What became of an MCP tool call (cfn.mcp.audit).
MCP_OUTCOMES = ("ok", "error", "forbidden", "unauthorized")


class McpAudit(Base):
    """One MCP call, allowed or refused, on a server or at the gateway (revision 0004).

    Append-only by use (cfn never updates it); agent and task are plain columns,
    not foreign keys: a refused call may carry no valid identity at all, and an
    operator's token names no task in this database.
    """

    __tablename__ = "mcp_audit"
    __table_args__ = (
        CheckConstraint(_in("outcome", MCP_OUTCOMES), name="outcome"),
        CheckConstraint("duration_ms >= 0", name="duration"),
        Index("ix_mcp_audit_task_id_id", "task_id", "id"),
        Index("ix_mcp_audit_agent_id_id", "agent_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=func.current_timestamp()
    )
    via: Mapped[str] = mapped_column(String(16), nullable=False)
    agent_id: Mapped[str | None] = mapped_column(String(128))
    task_id: Mapped[str | None] = mapped_column(String(128))
    server: Mapped[str] = mapped_column(String(64), nullable=False)
    tool: Mapped[str] = mapped_column(String(255), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    duration_ms: Mapped[float] = mapped_column(Float, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
