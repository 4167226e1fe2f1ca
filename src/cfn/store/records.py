"""What the store hands out: plain, frozen records, never live ORM objects.

Records are pydantic models so the query cache can put them in Redis as JSON
and get the same values back (timestamps included).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class SkillRecord(_Record):
    id: int
    name: str
    content_hash: str | None
    content_path: str | None
    created_at: datetime | None
    updated_at: datetime | None


class SkillChange(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class ApprovalRecord(_Record):
    id: int
    skill_id: int | None
    skill_name: str
    agent_id: str | None
    decision: str | None
    confidence: float | None
    metadata: str | None
    created_at: datetime | None


class TaskRecord(_Record):
    id: str
    mode: str
    epic: str
    status: str
    created_at: datetime
    updated_at: datetime


class AgentRecord(_Record):
    task_id: str
    id: str
    role: str
    profile: str | None
    provider: str | None
    model: str | None
    status: str
    confidence: float | None
    heartbeat: datetime | None
    loop: int | None = None
    iteration: int | None = None
    pid: int | None = None
    reason: str | None = None


class IterationRecord(_Record):
    task_id: str
    number: int
    gate_mean: float | None
    consensus_mean: float | None
    started_at: datetime
    finished_at: datetime | None


class DecisionRecord(_Record):
    id: int
    task_id: str
    iteration: int
    decision: str
    decided_by: str
    reason: str | None
    created_at: datetime


class EventRecord(_Record):
    id: int
    task_id: str | None
    kind: str
    payload: str
    created_at: datetime


class LlmCallRecord(_Record):
    id: int
    task_id: str | None
    agent_id: str | None
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    created_at: datetime


class UsageSummary(_Record):
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class AgentSpec(_Record):
    """An agent to register with a task."""

    id: str
    role: str
    profile: str | None = None
    provider: str | None = None
    model: str | None = None


class ApprovalInput(_Record):
    """One approval to write (validated before anything touches the database)."""

    skill_name: str
    agent_id: str
    decision: str
    confidence: float
    metadata: str | None = None


class McpAuditRecord(_Record):
    """One audited MCP call (table ``mcp_audit``)."""

    id: int
    created_at: datetime
    via: str
    agent_id: str | None
    task_id: str | None
    server: str
    tool: str
    outcome: str
    duration_ms: float
    reason: str | None
