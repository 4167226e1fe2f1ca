"""What the orchestrator needs from the world, as Protocols (its ports).

The loop's rules (gate, consensus, the owner's decision, iterations, resume)
live in :mod:`cfn.loop.orchestrator` and touch nothing but these ports, so
they can be exercised with the in-memory implementations of
:mod:`cfn.loop.memory` (no redis-server, no database, no process) as well as
with the real ones :mod:`cfn.loop.app` wires: SQL (``SqlJournal``), Redis
(:class:`cfn.loop.board.RedisBoard`), agent processes or containers
(``ProcessLauncher``) and the workspace on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cfn.agents.heartbeat import Lapse
from cfn.coordination.completion import CollectReport
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.store.records import AgentRecord, DecisionRecord

#: ``(task_id, kind, payload)`` for every event, as it is emitted.
Listener = Callable[[str, str, dict[str, Any]], None]


# --- durable state ----------------------------------------------------------------------


class Journal(Protocol):
    """Durable storage of the loop's state (SQL in production)."""

    def create_task(self, options: TaskOptions, checkpoint: Checkpoint) -> None: ...

    def load_task(self, task_id: str) -> tuple[TaskOptions, Checkpoint, str]: ...

    def save_checkpoint(self, task_id: str, checkpoint: Checkpoint, status: str) -> None: ...

    def save_agent(self, row: AgentRecord) -> None: ...

    def agents(self, task_id: str) -> list[AgentRecord]: ...

    def record_decision(self, row: DecisionRecord) -> DecisionRecord:
        """Insert, or return the decision already recorded for that iteration."""
        ...

    def decision(self, task_id: str, iteration: int) -> DecisionRecord | None: ...

    def append_event(self, task_id: str, kind: str, payload: dict[str, Any]) -> int: ...

    def events(self, task_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]: ...


class EventBus(Protocol):
    """Where every state change goes: the journal, the live stream, the listeners."""

    listeners: list[Listener]

    async def emit(self, task_id: str, kind: str, /, **payload: Any) -> None: ...


# --- agents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentPlan:
    """One agent the orchestrator wants to run."""

    task_id: str
    agent_id: str
    role: str  # implementer, validator, product-owner
    loop: int  # 3, 2, or 1 for the product owner
    iteration: int
    brief: dict[str, Any]  # what the agent needs beyond its context: epic, feedback, ...


class RunningAgent(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def profile(self) -> str | None: ...

    @property
    def provider(self) -> str | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def backend(self) -> str | None:
        """Which agent runs: builtin, claude-code or command (None: not known)."""
        ...

    async def wait(self) -> str:
        """Wait for the process to end; a short description of how it ended."""
        ...

    async def kill(self) -> None: ...

    def cpu_ticks(self) -> int | None:
        """CPU time used so far (None when unknown): a silent agent using CPU is starting."""
        ...

    def release(self) -> None:
        """The orchestrator stops watching the agent (it has its report, or gave up on it):
        whatever the agent holds (its Redis ACL user) goes once its process has ended,
        in the background, whether or not anyone ever awaited ``wait``."""
        ...


class AgentLauncher(Protocol):
    async def launch(self, plan: AgentPlan) -> RunningAgent: ...

    async def reattach(self, plan: AgentPlan, pid: int | None) -> RunningAgent | None:
        """The agent's process if it still runs (``pid``: the one recorded, if any)."""
        ...


class AgentStopper(Protocol):
    """Stops an agent by name, whichever runtime started it (the portal's DELETE)."""

    async def stop(self, task_id: str, agent_id: str) -> str:
        """``terminated``, ``already ended`` or ``not found here``."""
        ...


class ProductOwner(Protocol):
    async def decide(
        self, options: TaskOptions, checkpoint: Checkpoint, events: EventBus
    ) -> tuple[str, str, str]:
        """``(decision, decided_by, reason)``."""
        ...


# --- coordination (Redis in production) ---------------------------------------------------


class HeartbeatWatch(Protocol):
    """The heartbeats of one task's agents (``HeartbeatMonitor`` on Redis)."""

    @property
    def watching(self) -> list[str]: ...

    async def watch(self, agent_id: str, *, grace: float | None = None) -> None:
        """Start watching; the agent lapses if it has not beaten within ``grace``."""
        ...

    async def wait_lapsed(self, timeout: float) -> list[Lapse]:
        """The agents whose heartbeat lapsed ([] at ``timeout``)."""
        ...


class Coordination(Protocol):
    """What agents and people exchange with the orchestrator while a task runs."""

    async def collect(
        self,
        task_id: str,
        agent_ids: list[str],
        timeout: float,
        on_update: Callable[[CollectReport], None] | None = None,
    ) -> CollectReport:
        """Wait for these agents' completions (or ``timeout``) and judge each payload."""
        ...

    async def reported(self, task_id: str) -> set[str]:
        """Every agent with a completion (the durable record, never consumed)."""
        ...

    def lease(self, task_id: str) -> AbstractAsyncContextManager[None]:
        """Run the task as its one orchestrator for the block: TaskLeaseError when another
        holds it, and when this one loses it (the block is then cancelled)."""
        ...

    async def record_failure(self, task_id: str, agent_id: str, reason: str) -> bool:
        """A failed completion without confidence, unless the agent reported first."""
        ...

    def heartbeats(
        self, task_id: str, interval: float, startup_grace: float
    ) -> AbstractAsyncContextManager[HeartbeatWatch]: ...

    async def signal(self, task_id: str, channel: str, payload: dict[str, Any]) -> None:
        """A loop signal (``loop3:complete``, ``loop2:start``) for whoever listens."""
        ...

    async def stop_agent(self, task_id: str, agent_id: str, reason: str) -> None:
        """Ask an agent to stop (it reads its signal list between steps)."""
        ...

    async def store_context(self, task_id: str, key: str, value: object) -> None: ...

    async def publish_event(
        self, task_id: str, event_id: int, kind: str, payload: dict[str, Any]
    ) -> None:
        """The live copy of an event the journal holds (``events:{task}``)."""
        ...

    async def recent_event_ids(self, task_id: str, count: int) -> list[int]:
        """The journal ids of the last ``count`` events in the live copy."""
        ...

    async def agent_steps(
        self, task_id: str, agent_id: str, after: str, timeout: float
    ) -> tuple[str, list[dict[str, str]]]:
        """The agent's transcript steps after position ``after`` ("0": from the start),
        waiting up to ``timeout`` seconds for one (0: not at all); the new position too."""
        ...

    async def set_decision_state(self, task_id: str, state: dict[str, Any]) -> None:
        """What ``cfn decide`` and the portal read: awaiting, or the decision made."""
        ...

    async def decision_state(self, task_id: str) -> dict[str, Any] | None: ...

    async def send_decision_input(self, task_id: str, message: dict[str, Any]) -> None: ...

    async def wait_decision_input(self, task_id: str, timeout: float) -> Any:
        """The oldest person's decision for the task; WaitTimeoutError at ``timeout``."""
        ...


# --- the workspace ----------------------------------------------------------------------


class Workspace(Protocol):
    """The files the implementers change (the PROCEED-without-change rule reads them)."""

    def prepare(self, root: Path) -> None:
        """Make sure the workspace exists before the first agent starts."""
        ...

    def snapshot(self, root: Path) -> dict[str, str]:
        """``{relative path: fingerprint}`` of every file; equal maps mean no change."""
        ...
