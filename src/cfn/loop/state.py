"""What the orchestrator persists: a task's options and its checkpoint.

The checkpoint is written (with the step's rows and events) before the next
step begins, so ``cfn resume`` after a SIGKILL continues exactly where the
orchestrator stopped: agents that finished are never re-run (their results
are in the durable completion list), a decision already recorded is read
back, not made again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cfn import keys
from cfn.errors import InvalidInputError
from cfn.loop.modes import MODES, Mode, get_mode

DecisionMode = Literal["policy", "agent", "human"]
DECISION_MODES: tuple[str, ...] = ("policy", "agent", "human")
LOOP_DECISIONS: tuple[str, ...] = ("PROCEED", "ITERATE", "ABORT")
MAX_EPIC = 20_000


class Phase(StrEnum):
    LOOP3 = "loop3"
    LOOP2 = "loop2"
    DECISION = "decision"
    DONE = "done"


#: The agents cfn can run (cfn.agents.runtime, cfn.agents.claude_code, a command).
BACKENDS = ("builtin", "claude-code", "command")


@dataclass(frozen=True)
class TaskOptions:
    task_id: str
    epic: str
    mode: str = "standard"
    complexity: str | None = None
    cost_sensitive: bool = False
    decision: DecisionMode = "policy"
    implementers: int | None = None
    validators: int | None = None
    max_iterations: int | None = None
    #: Force every agent onto this provider (else the router decides per agent).
    provider: str | None = None
    workspace: str = ""
    #: Which agent runs every agent of the task (else the profile's, else CFN_AGENT_BACKEND).
    backend: str | None = None
    #: The epic asks to build or change something: PROCEED needs a changed workspace.
    build: bool = True

    def __post_init__(self) -> None:
        keys.validate_id(self.task_id, "task id")
        if not isinstance(self.epic, str) or not self.epic.strip():
            raise InvalidInputError("epic must be a non-empty text")
        if len(self.epic) > MAX_EPIC:
            raise InvalidInputError(f"epic is over {MAX_EPIC} characters")
        if self.mode not in MODES:
            get_mode(self.mode)
        if self.complexity not in (None, "low", "medium", "high"):
            raise InvalidInputError(
                f"complexity must be low, medium or high, got {self.complexity!r}"
            )
        if self.decision not in DECISION_MODES:
            raise InvalidInputError(
                f"decision must be one of {', '.join(DECISION_MODES)}, got {self.decision!r}"
            )
        if self.provider is not None:
            keys.validate_id(self.provider, "provider")
        if self.backend is not None and self.backend not in BACKENDS:
            raise InvalidInputError(
                f"unknown agent backend {self.backend!r}; use one of {', '.join(BACKENDS)}"
            )
        self.team  # validates the team overrides  # noqa: B018

    @property
    def team(self) -> Mode:
        return get_mode(self.mode).with_team(
            self.implementers, self.validators, self.max_iterations
        )

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskOptions:
        data = json.loads(text)
        return cls(**data)


@dataclass
class Checkpoint:
    """Where a task is: iteration, phase, and what the next step needs."""

    iteration: int = 1
    phase: Phase = Phase.LOOP3
    #: Feedback for the next iteration's implementers (gate failures, validators).
    feedback: list[str] = field(default_factory=list)
    deliverables: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    consensus: dict[str, Any] | None = None
    outcome: str | None = None
    reason: str | None = None
    #: The iteration the loop just left: its number and its gate and consensus scores
    #: (None where it did not get that far). The journal writes them on that
    #: iteration's row with the same save that moves the checkpoint on.
    ended: dict[str, Any] | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["phase"] = self.phase.value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        data = json.loads(text)
        data["phase"] = Phase(data["phase"])
        return cls(**data)


def ended_figures(checkpoint: Checkpoint) -> tuple[int, float | None, float | None] | None:
    """``checkpoint.ended`` as (iteration, gate mean, consensus mean), or None."""
    ended = checkpoint.ended
    if not isinstance(ended, dict) or not isinstance(ended.get("iteration"), int):
        return None

    def score(name: str) -> float | None:
        value = ended.get(name)
        return float(value) if isinstance(value, int | float) else None

    return ended["iteration"], score("gate"), score("consensus")
