"""Launching, joining and stopping a task's agents: one way for the loop and the portal.

An agent is started from a plan, recorded (its row, ``running``) and announced
(``agent:update``) before anyone waits for it; when it ends, its result is
recorded the same way. The orchestrator runs whole teams through this; the
portal adds one agent to a running task (``POST /api/agents/spawn``) or stops
one (``DELETE /api/agents/{id}``) with the same rows and events, so what the
dashboard shows does not depend on who started the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from cfn.agents.spawn.base import Spawner
from cfn.errors import AgentLookupError, ConflictError
from cfn.loop.ports import (
    AgentLauncher,
    AgentPlan,
    AgentStopper,
    Coordination,
    EventBus,
    Journal,
    RunningAgent,
)
from cfn.loop.state import Checkpoint, Phase, TaskOptions
from cfn.store.records import AgentRecord

#: Agent id prefix per loop: implementers, validators, the product owner.
PREFIXES = {3: "impl", 2: "val", 1: "po"}
#: Seconds a finished portal-spawned agent's completion is waited for.
FOLLOW_COLLECT = 5.0
#: How long one read of an agent's steps waits; the relay's last read, at most.
RELAY_WAIT = 10.0
RELAY_DRAIN = 2.0
ENDED = ("succeeded", "failed", "aborted")


def team_ids(loop: int, iteration: int, size: int) -> list[str]:
    """``impl-1-2``: the first implementer of iteration 2 (ids are stable across resumes)."""
    prefix = PREFIXES.get(loop, "po")
    return [f"{prefix}-{n}-{iteration}" for n in range(1, size + 1)]


def loop_of(role: str) -> int:
    return {"implementer": 3, "validator": 2}.get(role, 1)


def brief(options: TaskOptions, checkpoint: Checkpoint, loop: int) -> dict[str, Any]:
    """What an agent of ``loop`` needs beyond its context: the epic, feedback, deliverables."""
    out: dict[str, Any] = {
        "epic": options.epic,
        "mode": options.mode,
        "complexity": options.complexity,
        "cost_sensitive": options.cost_sensitive,
        "feedback": checkpoint.feedback,
    }
    if loop == 2:
        out["deliverables"] = checkpoint.deliverables
    return out


class SpawnerStopper:
    """:class:`cfn.loop.ports.AgentStopper` on the runtime ``spawner_for`` chose."""

    def __init__(self, spawner: Spawner) -> None:
        self.spawner = spawner

    async def stop(self, task_id: str, agent_id: str) -> str:
        try:
            handle = await self.spawner.attach(task_id, agent_id)
        except AgentLookupError:
            return "not found here"
        if not handle.running:
            return "already ended"
        await handle.stop()
        return "terminated"


class Team:
    """A task's agents as the journal and the event stream know them."""

    def __init__(
        self,
        journal: Journal,
        events: EventBus,
        board: Coordination,
        *,
        follow_wait: float = FOLLOW_COLLECT,
    ) -> None:
        self.journal = journal
        self.events = events
        self.board = board
        self.follow_wait = follow_wait

    async def rows(self, task_id: str) -> dict[str, AgentRecord]:
        return {r.agent_id: r for r in await asyncio.to_thread(self.journal.agents, task_id)}

    async def launch(
        self, launcher: AgentLauncher, plan: AgentPlan, **announce: Any
    ) -> tuple[AgentRecord, RunningAgent]:
        """Start the agent, record it running, announce it (``announce``: extra event fields)."""
        handle = await launcher.launch(plan)
        return await self.started(plan, handle, **announce), handle

    async def started(self, plan: AgentPlan, handle: RunningAgent, **announce: Any) -> AgentRecord:
        row = AgentRecord(
            plan.task_id,
            plan.agent_id,
            plan.role,
            plan.loop,
            plan.iteration,
            handle.profile,
            handle.provider,
            handle.model,
            "running",
            handle.pid,
        )
        await asyncio.to_thread(self.journal.save_agent, row)
        await self.events.emit(
            plan.task_id,
            "agent:update",
            agentId=plan.agent_id,
            status="running",
            role=plan.role,
            loop=plan.loop,
            iteration=plan.iteration,
            provider=handle.provider,
            model=handle.model,
            backend=handle.backend,
            pid=handle.pid,
            **announce,
        )
        return row

    async def relay_steps(
        self, task_id: str, agent_id: str, stop: asyncio.Event, wait: float = RELAY_WAIT
    ) -> None:
        """The agent's transcript, step by step, as ``agent:step`` events, until ``stop``
        is set (then what is left is relayed, without waiting for more). The agent id is
        the one the steps were read for: a step cannot name another agent.

        Only a read is ever abandoned, never an event half-written: an event the
        journal holds always reaches the live stream and the listeners too."""
        after = "0"
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                read = asyncio.ensure_future(self.board.agent_steps(task_id, agent_id, after, wait))
                await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await read
                    break
                after, steps = read.result()
                await self._emit_steps(task_id, agent_id, steps)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELAY_DRAIN):
                    after, steps = await self.board.agent_steps(task_id, agent_id, after, 0)
                await self._emit_steps(task_id, agent_id, steps)
        finally:
            stopping.cancel()

    async def _emit_steps(self, task_id: str, agent_id: str, steps: list[dict[str, str]]) -> None:
        for step in steps:
            payload: dict[str, Any] = {
                "kind": step.get("kind", "system"),
                "text": step.get("text", ""),
            }
            for name in ("tool", "toolId", "args"):
                if name in step:
                    payload[name] = step[name]
            if step.get("isError") == "1":
                payload["isError"] = True
            ts = step.get("ts", "")
            if ts.replace(".", "", 1).isdigit():
                payload["ts"] = float(ts)
            await self.events.emit(task_id, "agent:step", agentId=agent_id, **payload)

    async def mark(
        self,
        plan: AgentPlan,
        status: str,
        confidence: float | None,
        reason: str | None,
    ) -> AgentRecord:
        """Record how an agent ended (its row, created when it has none)."""
        old = (await self.rows(plan.task_id)).get(plan.agent_id)
        row = (
            replace(old, status=status, confidence=confidence, reason=reason)
            if old is not None
            else AgentRecord(
                plan.task_id,
                plan.agent_id,
                plan.role,
                plan.loop,
                plan.iteration,
                None,
                None,
                None,
                status,
                None,
                confidence,
                reason,
            )
        )
        await asyncio.to_thread(self.journal.save_agent, row)
        return row

    # --- one agent more, from outside the loop (the portal) ---------------------------------

    async def plan_join(
        self, task_id: str, agent_id: str, role: str
    ) -> tuple[TaskOptions, AgentPlan]:
        """The plan of one more agent on a running task; ConflictError when it cannot join."""
        options, checkpoint, status = await asyncio.to_thread(self.journal.load_task, task_id)
        if status in ENDED or checkpoint.phase is Phase.DONE:
            raise ConflictError(f"task {task_id!r} has ended ({status}); agents cannot join it")
        existing = await self.rows(task_id)
        if agent_id in existing:
            raise ConflictError(
                f"task {task_id!r} has an agent {agent_id!r} already "
                f"({existing[agent_id].status}); pick another id"
            )
        loop = loop_of(role)
        plan = AgentPlan(
            task_id, agent_id, role, loop, checkpoint.iteration, brief(options, checkpoint, loop)
        )
        return options, plan

    async def follow(self, row: AgentRecord, handle: RunningAgent) -> AgentRecord | None:
        """When a joined agent ends, record its result (the loop does this for its own).

        None when it was stopped meanwhile (its row says ``killed`` and stays so).
        """
        stop = asyncio.Event()
        relay = asyncio.create_task(self.relay_steps(row.task_id, row.agent_id, stop))
        try:
            how = await handle.wait()
            report = await self.board.collect(row.task_id, [row.agent_id], self.follow_wait)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await relay
        current = (await self.rows(row.task_id)).get(row.agent_id)
        if current is not None and current.status == "killed":
            return None
        item = report.results[0] if report.results else None
        status = "done" if item is not None and item.ok else "failed"
        reason = (item.reason if item is not None else None) or (
            None if status == "done" else f"ended without a result ({how})"
        )
        confidence = item.confidence if item is not None else None
        ended = replace(row, status=status, confidence=confidence, reason=reason)
        await asyncio.to_thread(self.journal.save_agent, ended)
        await self.events.emit(
            row.task_id,
            "agent:update",
            agentId=row.agent_id,
            status=status,
            confidence=confidence,
            reason=reason,
            loop=row.loop,
            iteration=row.iteration,
        )
        return ended

    async def stop(
        self, row: AgentRecord, reason: str, stopper: AgentStopper
    ) -> tuple[AgentRecord, str]:
        """Ask the agent to stop, end its process, record it ``killed``; how the process went."""
        await self.board.stop_agent(row.task_id, row.agent_id, reason)
        process = await stopper.stop(row.task_id, row.agent_id)
        killed = replace(row, status="killed", reason=reason)
        await asyncio.to_thread(self.journal.save_agent, killed)
        await self.events.emit(
            row.task_id,
            "agent:update",
            agentId=row.agent_id,
            status="killed",
            reason=reason,
            loop=row.loop,
            iteration=row.iteration,
        )
        return killed, process
