"""What the store hands out: plain, frozen records, never live ORM objects.

One record type per table, used by every layer that reads or writes that
table (the loop, the portal, health). Most are pydantic models so the query
cache can put them in Redis as JSON and get the same values back (timestamps
included). The agent and decision rows are frozen dataclasses instead: the
loop builds them positionally and derives new ones with
``dataclasses.replace``, and the portal's status read builds one per row on
its hot path, where validation would only re-check what the store wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    #: The loop's TaskOptions and Checkpoint as JSON (None for a task it did not create).
    options: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class AgentRecord:
    """One agent of one task (table ``agents``); ``loop`` and ``iteration`` read 0 when unset."""

    task_id: str
    agent_id: str
    role: str
    loop: int
    iteration: int
    profile: str | None
    provider: str | None
    model: str | None
    status: str
    pid: int | None = None
    confidence: float | None = None
    reason: str | None = None
    heartbeat: datetime | None = None


class IterationRecord(_Record):
    task_id: str
    number: int
    gate_mean: float | None
    consensus_mean: float | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class DecisionRecord:
    """The product owner's decision on one iteration (table ``decisions``).

    ``id`` and ``created_at`` are None on a decision not yet recorded.
    """

    task_id: str
    iteration: int
    decision: str
    decided_by: str
    reason: str | None
    id: int | None = None
    created_at: datetime | None = None


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
    latency_ms: float | None = None
    status: str | None = None
    via: str | None = None


class UsageSummary(_Record):
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


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


@dataclass(frozen=True)
class TaskSnapshot:
    """A task with its iterations, decisions and agents, read in one transaction."""

    task: TaskRecord
    iterations: list[IterationRecord]
    decisions: list[DecisionRecord]
    agents: list[AgentRecord]


@dataclass(frozen=True)
class TaskSummary:
    """A task in a list: its row, its highest iteration number and its agent count."""

    task: TaskRecord
    iterations: int
    agents: int


@dataclass(frozen=True)
class AgentTally:
    """How many agents share a status, provider and role, and their mean confidence."""

    status: str
    provider: str | None
    role: str
    count: int
    mean_confidence: float | None


@dataclass(frozen=True)
class TaskStats:
    """Figures over every task: counts by status, mode and decision, and mean scores."""

    by_status: dict[str, int]
    by_mode: dict[str, int]
    decisions: dict[str, int]
    mean_iterations: float | None
    mean_gate: float | None
    mean_consensus: float | None
