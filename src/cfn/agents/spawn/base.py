"""The agent runtime interface, shared by the process and the container runtime.

``Spawner`` starts and re-attaches agents; ``AgentHandle`` waits for, stops
and kills one. Both runtimes keep an agent's files in the same place, so a
restarted orchestrator, the portal and ``cfn agents`` find them whichever
runtime started it. Per agent, under ``<state>/tasks/{task}/agents/{agent}/``::

    context.json   the seed's CLI context (0600), CFN_AGENT_CONTEXT points here
    agent.log      stdout and stderr of the agent
    exit.json      why it ended: exit code, signal, timed out, killed, OOM-killed

plus each runtime's own record of what it started (``state.json`` and
``shim.json`` for a process, ``container.json`` for a container).
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cfn.agents import shim
from cfn.agents.context import CONTEXT_FILE, AgentContext
from cfn.errors import InvalidInputError
from cfn.system.limits import parse_cpu_limit, parse_memory_limit

LOG_FILE = "agent.log"
EXIT_FILE = shim.EXIT_FILE


@dataclass(frozen=True)
class AgentLimits:
    memory: str
    memory_bytes: int
    cpus: float
    timeout: float

    @classmethod
    def from_context(cls, context: AgentContext) -> AgentLimits:
        """The limits a context asks for (AGENT_* settings went into it), validated."""
        memory = context.resources.memory_limit
        return cls(
            memory=memory,
            memory_bytes=parse_memory_limit(memory),
            cpus=parse_cpu_limit(context.cfn.cpu_limit),
            timeout=context.resources.timeout_seconds,
        )


def check_spawn_request(
    context: AgentContext, command: Sequence[str] | None, env: Mapping[str, str] | None
) -> tuple[AgentLimits, Path]:
    """The checks every runtime makes before it starts anything: limits, workspace,
    command and environment names; returns the limits and the workspace."""
    limits = AgentLimits.from_context(context)
    workspace = Path(context.workspace)
    if not workspace.is_dir():
        raise InvalidInputError(f"workspace {workspace} is not a directory")
    if command is not None and (not command or not all(isinstance(a, str) and a for a in command)):
        raise InvalidInputError("the agent command must be a non-empty list of arguments")
    for name in env or {}:
        if not name or "=" in name or "\0" in name:
            raise InvalidInputError(f"invalid environment variable name {name!r}")
    return limits, workspace


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (an agent's state or exit record); None when the
    file is missing, unreadable, half-written or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- exit information ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExitInfo:
    """Why an agent ended."""

    task_id: str
    agent_id: str
    name: str
    pid: int
    exit_code: int | None
    signal: int | None
    timed_out: bool = False
    oom_killed: bool = False
    killed: bool = False
    lost: bool = False
    reason: str = ""
    duration: float | None = None
    limits: str = "none"
    max_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Exited by itself with code 0 (whether its *work* succeeded is its report's call)."""
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.oom_killed
            and not self.killed
            and not self.lost
        )

    @property
    def status(self) -> str:
        """One word: exited, failed, oom, timeout, killed or lost."""
        if self.lost:
            return "lost"
        if self.oom_killed:
            return "oom"
        if self.timed_out:
            return "timeout"
        if self.killed:
            return "killed"
        return "exited" if self.exit_code == 0 else "failed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record")
        data["status"] = self.status
        data["ok"] = self.ok
        return data

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExitInfo:
        cpu = None
        if isinstance(record.get("cpu_user"), int | float):
            cpu = round(float(record["cpu_user"]) + float(record.get("cpu_system") or 0), 6)
        usage = record.get("cpu_usage_seconds")
        if isinstance(usage, int | float) and not isinstance(usage, bool):
            # The group's own count: what wait4 misses (a sandbox's processes) included.
            cpu = max(cpu or 0.0, round(float(usage), 6))
        return cls(
            task_id=str(record.get("task_id", "")),
            agent_id=str(record.get("agent_id", "")),
            name=str(record.get("name", "")),
            pid=int(record.get("pid") or 0),
            exit_code=record.get("exit_code"),
            signal=record.get("signal"),
            timed_out=bool(record.get("timed_out")),
            oom_killed=bool(record.get("oom_killed")),
            killed=bool(record.get("killed") or record.get("stop_requested")),
            reason=str(record.get("reason") or shim.describe(record)),
            duration=record.get("duration"),
            limits=str(record.get("limits", "none")),
            max_memory_bytes=record.get("max_memory_bytes"),
            cpu_seconds=cpu,
            record=record,
        )


# --- interfaces ------------------------------------------------------------------------------


@runtime_checkable
class AgentHandle(Protocol):
    """A started (or re-attached) agent."""

    task_id: str
    agent_id: str
    name: str
    pid: int

    @property
    def log_path(self) -> Path: ...

    @property
    def running(self) -> bool:
        """Still running: no exit record yet and the runtime says it is alive."""

    def exit_info(self) -> ExitInfo | None:
        """The exit record if the agent has ended, without waiting."""

    async def wait(self) -> ExitInfo:
        """Wait (no polling) until the agent has ended; why it ended."""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after CFN_AGENT_KILL_GRACE; returns at once."""

    async def kill(self) -> None:
        """SIGKILL the agent and everything it started; returns at once."""


class Spawner(Protocol):
    """How the orchestrator starts agents; one implementation per runtime."""

    @property
    def engine(self) -> str | None:
        """The container engine's endpoint agents run on (not started by asking);
        None when agents are local processes."""

    async def spawn(
        self,
        context: AgentContext,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AgentHandle:
        """Start the agent ``context`` describes, detached; return once it runs."""

    async def attach(self, task_id: str, agent_id: str, pid: int | None = None) -> AgentHandle:
        """Find an agent spawned earlier (maybe by another orchestrator process)."""

    def agent_dir(self, task_id: str, agent_id: str) -> Path:
        """Where the agent's files are kept on this host (its context, log, exit record)."""


# --- what every handle shares ----------------------------------------------------------------


class HandleBase(abc.ABC):
    """What every agent handle shares: its files, one waiter however many callers
    wait, and the record of an exit nobody saw."""

    task_id: str
    agent_id: str
    name: str
    directory: Path
    pid: int
    limits: str
    _info: ExitInfo | None
    _waiting: asyncio.Future[ExitInfo] | None

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def context_path(self) -> Path:
        return self.directory / CONTEXT_FILE

    async def wait(self) -> ExitInfo:
        if self._info is not None:
            return self._info
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    @abc.abstractmethod
    async def _wait(self) -> ExitInfo:
        """Wait for the agent to end and return its exit record (each kind its own way)."""

    def _lost(self, reason: str) -> ExitInfo:
        """The agent ended without an exit record: status unknown, ``reason`` why."""
        self._info = ExitInfo(
            task_id=self.task_id,
            agent_id=self.agent_id,
            name=self.name,
            pid=self.pid,
            exit_code=None,
            signal=None,
            lost=True,
            reason=reason,
            limits=self.limits,
        )
        return self._info
