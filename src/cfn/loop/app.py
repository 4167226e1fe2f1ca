"""Putting the loop together from settings: Redis, SQL, router, spawner, owner."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfn import keys
from cfn.agents.spawner import agent_redis_url
from cfn.coordination.connection import RedisManager
from cfn.coordination.signals import send_signal
from cfn.errors import CfnError, InvalidInputError
from cfn.loop.journal import SqlJournal
from cfn.loop.launcher import ProcessLauncher
from cfn.loop.modes import MODES
from cfn.loop.orchestrator import (
    HumanOwner,
    Orchestrator,
    Outcome,
    PolicyOwner,
    ProductOwner,
    check_decision,
)
from cfn.loop.state import DECISION_MODES, TaskOptions
from cfn.loop.workspace import is_build_task
from cfn.providers import TaskTraits, build_service
from cfn.settings import Settings
from cfn.store.repository import Store

Listener = Callable[[str, str, dict[str, Any]], None]


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
    redis_url = agent_redis_url(settings)
    redis = RedisManager.from_settings(settings)
    store = Store.open(settings)
    service = build_service(settings, redis)
    try:
        journal = SqlJournal(store)
        if options is None:
            if resume_task is None:
                raise CfnError("nothing to run: give options or a task to resume")
            options, _cp, _status = journal.load_task(resume_task)
        launcher = ProcessLauncher(
            settings,
            service,
            redis_url,
            options.workspace_path,
            TaskTraits(
                complexity=options.complexity,  # type: ignore[arg-type]
                cost_sensitive=options.cost_sensitive,
            ),
            options.mode,
            provider=options.provider,
        )
        owner: ProductOwner = HumanOwner(redis) if options.decision == "human" else PolicyOwner()
        orchestrator = Orchestrator(
            redis,
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


async def submit_decision(
    redis: RedisManager, task_id: str, decision: str, by: str = "human:cli", reason: str = ""
) -> int:
    """A person's PROCEED / ITERATE / ABORT for a task that waits for one."""
    decision = check_decision(decision)
    key = keys.decision(task_id)
    raw = await redis.run(lambda r: r.get(key))
    state = json.loads(raw) if raw else None
    if not isinstance(state, dict) or state.get("status") != "awaiting":
        raise CfnError(
            f"task {task_id!r} is not waiting for a decision"
            + (
                f" (its last decision: {state.get('decision')})"
                if isinstance(state, dict) and state.get("decision")
                else ""
            )
        )
    iteration = int(state.get("iteration") or 0)
    message = {
        "decision": decision,
        "iteration": iteration,
        "by": by,
        "reason": reason or f"{decision} by {by}",
    }
    await send_signal(redis, task_id, keys.DECISION_INPUT, json.dumps(message))
    return iteration


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
    task_id = task_id or new_task_id()
    ws = workspace.resolve() if workspace else default_workspace(settings, task_id)
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
        workspace=str(ws),
        build=is_build_task(epic),
    )


def run(epic: str, *, settings: Settings | None = None, **options: Any) -> Outcome:
    """Run one task to its end from synchronous code: :func:`new_task` then
    :func:`run_loop`. ``options`` are :func:`new_task`'s keywords."""
    import asyncio

    cfg = settings if settings is not None else Settings()
    return asyncio.run(run_loop(cfg, options=new_task(cfg, epic, **options)))
