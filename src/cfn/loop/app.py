"""Putting the loop together from settings: Redis, SQL, router, spawner, owner.

Each port of :mod:`cfn.loop.ports` gets its real implementation here; the
in-memory ones (:mod:`cfn.loop.memory`) plug into the same ``Orchestrator``.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from cfn import keys
from cfn.agents.spawn import spawner_for
from cfn.agents.spawn.agent import agent_redis_url
from cfn.coordination.connection import RedisManager
from cfn.errors import CfnError, InvalidInputError
from cfn.loop.board import RedisBoard
from cfn.loop.journal import SqlJournal
from cfn.loop.launcher import ProcessLauncher
from cfn.loop.modes import MODES
from cfn.loop.orchestrator import (
    HumanOwner,
    JournalEventBus,
    Orchestrator,
    Outcome,
    PolicyOwner,
    send_decision,
)
from cfn.loop.ports import Listener, ProductOwner, RunningAgent
from cfn.loop.state import DECISION_MODES, TaskOptions
from cfn.loop.team import SpawnerStopper, Team
from cfn.loop.workspace import is_build_task
from cfn.providers import LLMService, TaskTraits, build_service
from cfn.providers.routes import load_route_table
from cfn.settings import Settings
from cfn.store.records import AgentRecord
from cfn.store.repository import Store


def new_task_id() -> str:
    return f"task-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def default_workspace(settings: Settings, task_id: str) -> Path:
    return settings.state_dir / "workspaces" / keys.validate_id(task_id, "task id")


async def run_loop(
    settings: Settings,
    *,
    options: TaskOptions | None = None,
    resume_task: str | None = None,
    listener: Listener | None = None,
) -> Outcome:
    """Start ``options`` or resume ``resume_task``; returns when the task ends."""
    redis = RedisManager.from_settings(settings)
    store = Store.open(settings)
    service = build_service(settings, redis)
    try:
        journal = SqlJournal(store)
        board = RedisBoard(redis)
        if options is None:
            if resume_task is None:
                raise CfnError("nothing to run: give options or a task to resume")
            options, _cp, _status = journal.load_task(resume_task)
        launcher = launcher_for(settings, service, options)
        owner: ProductOwner = HumanOwner(board) if options.decision == "human" else PolicyOwner()
        orchestrator = Orchestrator(
            board,
            journal,
            launcher,
            owner,
            agent_timeout=float(settings.agent_timeout),
            heartbeat_interval=settings.cfn_agent_heartbeat_interval,
        )
        if listener is not None:
            orchestrator.events.listeners.append(listener)
        if resume_task is not None:
            return await orchestrator.resume(resume_task)
        return await orchestrator.start(options)
    finally:
        await service.aclose()
        await redis.close()
        store.close()


def launcher_for(
    settings: Settings, service: LLMService, options: TaskOptions, *, provider: str | None = None
) -> ProcessLauncher:
    """The task's agents in the runtime the settings pick (``spawner_for``), routed per agent."""
    return ProcessLauncher(
        settings,
        service,
        agent_redis_url(settings),
        options.workspace_path,
        TaskTraits(
            complexity=options.complexity,  # type: ignore[arg-type]
            cost_sensitive=options.cost_sensitive,
        ),
        options.mode,
        provider=provider or options.provider,
        backend=options.backend,
    )


def team_for(redis: RedisManager, store: Store) -> Team:
    """A task's agents as SQL and Redis know them (the portal's spawn and stop)."""
    journal = SqlJournal(store)
    board = RedisBoard(redis)
    return Team(journal, JournalEventBus(journal, board), board)


def stopper_for(settings: Settings) -> SpawnerStopper:
    """Stops agents of whichever runtime the settings pick (``spawner_for``)."""
    return SpawnerStopper(spawner_for(settings))


async def join_agent(
    settings: Settings,
    redis: RedisManager,
    store: Store,
    task_id: str,
    agent_id: str,
    role: str,
    *,
    provider: str | None = None,
    by: str | None = None,
) -> tuple[Team, AgentRecord, RunningAgent]:
    """One more agent on a running task, started and recorded as the loop starts its own.

    ``team.follow(row, handle)`` records its result when it ends.
    """
    team = team_for(redis, store)
    options, plan = await team.plan_join(task_id, agent_id, role)
    service = build_service(settings, redis)
    try:
        launcher = launcher_for(settings, service, options, provider=provider)
        announce = {} if by is None else {"by": by}
        row, handle = await team.launch(launcher, plan, **announce)
    finally:
        await service.aclose()
    return team, row, handle


async def submit_decision(
    redis: RedisManager, task_id: str, decision: str, by: str = "human:cli", reason: str = ""
) -> int:
    """A person's PROCEED / ITERATE / ABORT for a task that waits for one."""
    return await send_decision(RedisBoard(redis), task_id, decision, by, reason)


def check_provider(settings: Settings, provider: str | None) -> None:
    """A provider forced on a task or an agent must be one the route table knows.

    Checked at the door (``cfn run``, ``orchestrate``, the portal's create and spawn),
    so a task that could never run is refused, not queued: UnknownProviderError."""
    if provider is not None:
        load_route_table(settings).route(provider)


#: Kernel file systems: their "files" are not a project (and reading some never ends).
VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_workspace(path: Path) -> None:
    """A task's workspace is a directory (or can become one) outside /proc, /sys, /dev."""
    if any(path == root or root in path.parents for root in VIRTUAL_ROOTS):
        raise InvalidInputError(f"workspace {path} is in a kernel file system: use a directory")
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"workspace {path} exists and is not a directory")


def new_task(
    settings: Settings,
    epic: str,
    *,
    task_id: str | None = None,
    mode: str = "standard",
    complexity: str | None = None,
    cost_sensitive: bool = False,
    decision: str = "policy",
    implementers: int | None = None,
    validators: int | None = None,
    max_iterations: int | None = None,
    provider: str | None = None,
    workspace: Path | None = None,
    backend: str | None = None,
) -> TaskOptions:
    """A task's options as ``cfn run`` makes them: a fresh id, the workspace under
    ``.cfn/workspaces/`` unless given, and PROCEED-needs-a-change for build epics.
    Bad values raise :class:`~cfn.errors.InvalidInputError` before anything is written."""
    if mode not in MODES:
        raise InvalidInputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if decision not in DECISION_MODES:
        raise InvalidInputError(
            f"unknown decision {decision!r}; use one of {', '.join(DECISION_MODES)}"
        )
    check_provider(settings, provider)
    task_id = task_id or new_task_id()
    ws = workspace.resolve() if workspace else default_workspace(settings, task_id)
    check_workspace(ws)
    return TaskOptions(
        task_id=task_id,
        epic=epic,
        mode=mode,
        complexity=complexity,
        cost_sensitive=cost_sensitive,
        decision=decision,  # type: ignore[arg-type]
        implementers=implementers,
        validators=validators,
        max_iterations=max_iterations,
        provider=provider,
        backend=backend,
        workspace=str(ws),
        build=is_build_task(epic),
    )


def run(epic: str, *, settings: Settings | None = None, **options: Any) -> Outcome:
    """Run one task to its end from synchronous code: :func:`new_task` then
    :func:`run_loop`. ``options`` are :func:`new_task`'s keywords."""
    import asyncio

    cfg = settings if settings is not None else Settings()
    return asyncio.run(run_loop(cfg, options=new_task(cfg, epic, **options)))
