"""The CFN Loop orchestrator.

Per iteration: Loop 3 implementers → gate → ``loop3:complete`` and
``loop2:start`` signals → Loop 2 validators → consensus → product-owner
decision. A failed gate re-runs Loop 3 (a new iteration, with the feedback);
failed consensus or ITERATE re-runs both; PROCEED ends the task as succeeded,
ABORT or running out of iterations as failed.

Every step is persisted (checkpoint, agent rows, events) before the next one
begins, so :meth:`Orchestrator.resume` after a SIGKILL continues where the
run stopped. Agents run as separate processes that outlive the orchestrator:
on resume, agents with a completion are not re-run, agents still running are
re-attached by pid, the rest are started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from cfn import keys
from cfn.coordination.completion import AgentResult, CollectReport
from cfn.errors import CfnError, CorruptRecordError, InvalidInputError, WaitTimeoutError
from cfn.loop import workspace as ws
from cfn.loop.ports import (
    AgentLauncher,
    AgentPlan,
    Coordination,
    EventBus,
    Journal,
    Listener,
    ProductOwner,
    RunningAgent,
    Workspace,
)
from cfn.loop.scoring import Verdict, judge
from cfn.loop.state import Checkpoint, Phase, TaskOptions
from cfn.loop.team import Team, brief, team_ids
from cfn.store.records import DecisionRecord

log = logging.getLogger(__name__)

#: Seconds a newly started agent has to send its first heartbeat.
STARTUP_GRACE = 60.0
#: How far back a resume looks for events the live stream lost (``_republish``).
REPUBLISH_WINDOW = 500
#: Events kept in the journal only, never published (the workspace's file hashes).
BASELINE_EVENT = "workspace:baseline"
JOURNAL_ONLY = frozenset({BASELINE_EVENT})
#: Seconds an agent may run past AGENT_TIMEOUT before its result counts as missing.
COLLECT_SLACK = 30.0


class PolicyOwner:
    """The default product owner: PROCEED once gate and consensus both passed.

    The loop only asks for a decision after consensus passed, so the policy's
    answer is PROCEED with the figures as its reason; the workspace rule can
    still turn it into ITERATE.
    """

    async def decide(
        self, options: TaskOptions, checkpoint: Checkpoint, events: EventBus
    ) -> tuple[str, str, str]:
        gate = checkpoint.gate or {}
        consensus = checkpoint.consensus or {}
        return (
            "PROCEED",
            "policy",
            f"gate {gate.get('score', 0):.3f} >= {gate.get('threshold', 0):.2f} and consensus "
            f"{consensus.get('score', 0):.3f} >= {consensus.get('threshold', 0):.2f}",
        )


class HumanOwner:
    """Waits (BRPOP on Redis, no polling) for a person's decision: ``cfn decide`` or the portal."""

    def __init__(self, board: Coordination, timeout: float = 7 * 24 * 3600.0) -> None:
        self.board = board
        self.timeout = timeout

    async def decide(
        self, options: TaskOptions, checkpoint: Checkpoint, events: EventBus
    ) -> tuple[str, str, str]:
        task_id = options.task_id
        state = {
            "status": "awaiting",
            "iteration": checkpoint.iteration,
            "gate": checkpoint.gate,
            "consensus": checkpoint.consensus,
        }
        await self.board.set_decision_state(task_id, state)
        await events.emit(task_id, "decision:awaiting", iteration=checkpoint.iteration)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "ABORT", "timeout", f"no human decision within {self.timeout:g} s"
            try:
                message = await self.board.wait_decision_input(task_id, min(remaining, 24 * 3600.0))
            except WaitTimeoutError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("iteration") not in (None, checkpoint.iteration):
                continue  # meant for an earlier iteration
            try:
                decision = check_decision(str(message.get("decision", "")))
            except InvalidInputError:
                continue
            by = str(message.get("by") or "human")
            reason = str(message.get("reason") or f"{decision} by {by}")
            return decision, by, reason


async def send_decision(
    board: Coordination, task_id: str, decision: str, by: str = "human:cli", reason: str = ""
) -> int:
    """A person's PROCEED / ITERATE / ABORT for a task whose HumanOwner waits for one."""
    decision = check_decision(decision)
    state = await board.decision_state(task_id)
    if state is None or state.get("status") != "awaiting":
        raise CfnError(
            f"task {task_id!r} is not waiting for a decision"
            + (
                f" (its last decision: {state.get('decision')})"
                if state is not None and state.get("decision")
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
    await board.send_decision_input(task_id, message)
    return iteration


@dataclass(frozen=True)
class Outcome:
    task_id: str
    status: str  # succeeded, failed, aborted
    decision: str | None
    iterations: int
    reason: str

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "succeeded" else 1


class JournalEventBus:
    """Every state change: into the journal first, then live (``events:{task}``), to listeners.

    The journal's id goes with the live copy, so a reader that replays the
    journal and then follows the stream can drop what it has seen.
    """

    def __init__(self, journal: Journal, board: Coordination) -> None:
        self.journal = journal
        self.board = board
        self.listeners: list[Listener] = []

    async def emit(self, task_id: str, kind: str, /, **payload: Any) -> None:
        payload.setdefault("ts", time.time())
        event_id = await asyncio.to_thread(self.journal.append_event, task_id, kind, payload)
        await self.board.publish_event(task_id, event_id, kind, payload)
        for listener in self.listeners:
            listener(task_id, kind, payload)


class Orchestrator:
    def __init__(
        self,
        board: Coordination,
        journal: Journal,
        launcher: AgentLauncher,
        product_owner: ProductOwner,
        *,
        events: EventBus | None = None,
        workspace: Workspace | None = None,
        agent_timeout: float = 300.0,
        heartbeat_interval: float | None = 5.0,
        startup_grace: float = STARTUP_GRACE,
        collect_slack: float = COLLECT_SLACK,
    ) -> None:
        self.board = board
        self.journal = journal
        self.launcher = launcher
        self.product_owner = product_owner
        self.agent_timeout = agent_timeout
        self.heartbeat_interval = heartbeat_interval
        self.startup_grace = startup_grace
        self.collect_slack = collect_slack
        self.events: EventBus = events or JournalEventBus(journal, board)
        self.workspace: Workspace = workspace or ws.DiskWorkspace()
        self.team = Team(journal, self.events, board)

    # --- entry points ---------------------------------------------------------------

    async def start(self, options: TaskOptions) -> Outcome:
        """Create the task (it must be new) and run it to the end."""
        async with self.board.lease(options.task_id):
            return await self._start(options)

    async def resume(self, task_id: str) -> Outcome:
        """Continue a task from its last checkpoint; TaskLeaseError when another
        orchestrator runs it now."""
        async with self.board.lease(task_id):
            return await self._resume(task_id)

    async def _start(self, options: TaskOptions) -> Outcome:
        await asyncio.to_thread(self.workspace.prepare, options.workspace_path)
        checkpoint = Checkpoint()
        baseline = await asyncio.to_thread(self.workspace.snapshot, options.workspace_path)
        await asyncio.to_thread(self.journal.create_task, options, checkpoint)
        await self._store_baseline(options.task_id, baseline)
        team = options.team
        await self.events.emit(
            options.task_id,
            "task:created",
            epic=options.epic,
            mode=options.mode,
            gate=team.gate,
            consensus=team.consensus,
            max_iterations=team.max_iterations,
            implementers=team.implementers,
            validators=team.validators,
            decision=options.decision,
            workspace=options.workspace,
            build=options.build,
        )
        return await self._run(options, checkpoint)

    async def _resume(self, task_id: str) -> Outcome:
        options, checkpoint, status = await asyncio.to_thread(self.journal.load_task, task_id)
        await self._republish(task_id)
        if checkpoint.phase is Phase.DONE and status != "running":
            return self._outcome(options, checkpoint, status)
        # A checkpoint at DONE still marked running: the orchestrator was killed
        # between saving the outcome and saving the final status. _run skips the
        # loop and does only that last step (status, task:finished).
        await self.events.emit(
            task_id, "task:resumed", iteration=checkpoint.iteration, phase=checkpoint.phase.value
        )
        return await self._run(options, checkpoint)

    async def _republish(self, task_id: str) -> None:
        """Publish the events the journal holds and the live stream lacks: an orchestrator
        killed between the two writes (journal first) left them out, and a follower of
        the stream would wait for them (``task:finished``) for good."""
        seen = await self.board.recent_event_ids(task_id, REPUBLISH_WINDOW)
        after = min(seen) if seen else 0
        logged = await asyncio.to_thread(self.journal.events, task_id, after)
        known = set(seen)
        lost = [e for e in logged if e[0] not in known and e[1] not in JOURNAL_ONLY]
        for event_id, kind, payload in lost[-REPUBLISH_WINDOW:]:
            await self.board.publish_event(task_id, event_id, kind, payload)

    # --- the loop ---------------------------------------------------------------------

    async def _run(self, options: TaskOptions, cp: Checkpoint) -> Outcome:
        task_id = options.task_id
        await self._save(task_id, cp, "running")
        try:
            await self._steps(options, cp)
        except CorruptRecordError as exc:
            # One recorded reason, not a crash that leaves the task running for good
            # (and every resume crashing the same way).
            log.error("task %s failed: %s", task_id, exc)
            cp.phase, cp.outcome = Phase.DONE, None
            cp.reason = f"coordination records damaged: {exc}"
        status = (
            "succeeded"
            if cp.outcome == "PROCEED"
            else ("aborted" if cp.outcome == "ABORT" else "failed")
        )
        await self._save(task_id, cp, status)
        await self.events.emit(
            task_id,
            "task:finished",
            status=status,
            outcome=cp.outcome,
            reason=cp.reason,
            iterations=cp.iteration,
        )
        return self._outcome(options, cp, status)

    async def _steps(self, options: TaskOptions, cp: Checkpoint) -> None:
        """Run the loop's phases from the checkpoint until it is done."""
        team = options.team
        task_id = options.task_id
        while cp.phase is not Phase.DONE:
            if cp.phase is Phase.LOOP3:
                await self.events.emit(
                    task_id,
                    "loop:progress",
                    loop=3,
                    iteration=cp.iteration,
                    progress=0.0,
                    phase="loop3",
                )
                report = await self._run_team(options, cp, "implementer", 3, team.implementers)
                verdict = judge("gate", report, team.implementers, team.gate)
                cp.gate = verdict.to_dict()
                cp.deliverables = [
                    {"agent_id": r.agent_id, **_deliverable(r.payload)} for r in report.succeeded
                ]
                await self.events.emit(task_id, "gate", iteration=cp.iteration, **verdict.to_dict())
                if not verdict.passed:
                    cp.feedback = _gate_feedback(verdict, report)
                    self._next_iteration(cp, team.max_iterations, verdict.describe())
                    await self._save(task_id, cp, "running")
                    continue
                await self.board.signal(
                    task_id,
                    keys.LOOP3_COMPLETE,
                    {"iteration": cp.iteration, "gate": verdict.to_dict()},
                )
                await self.board.signal(
                    task_id,
                    keys.LOOP2_START,
                    {"iteration": cp.iteration, "deliverables": cp.deliverables},
                )
                await self.board.store_context(task_id, "deliverables", cp.deliverables)
                cp.phase = Phase.LOOP2
                await self._save(task_id, cp, "running")
            elif cp.phase is Phase.LOOP2:
                await self.events.emit(
                    task_id,
                    "loop:progress",
                    loop=2,
                    iteration=cp.iteration,
                    progress=0.0,
                    phase="loop2",
                )
                report = await self._run_team(options, cp, "validator", 2, team.validators)
                verdict = judge("consensus", report, team.validators, team.consensus)
                cp.consensus = verdict.to_dict()
                await self.events.emit(
                    task_id, "consensus", iteration=cp.iteration, **verdict.to_dict()
                )
                if not verdict.passed:
                    cp.feedback = [*_validator_feedback(report), verdict.describe()]
                    self._next_iteration(cp, team.max_iterations, verdict.describe())
                else:
                    cp.phase = Phase.DECISION
                await self._save(task_id, cp, "running")
            elif cp.phase is Phase.DECISION:
                row = await self._decide(options, cp)
                if row.decision == "PROCEED":
                    cp.phase, cp.outcome, cp.reason = Phase.DONE, "PROCEED", row.reason
                elif row.decision == "ABORT":
                    cp.phase, cp.outcome, cp.reason = Phase.DONE, "ABORT", row.reason
                else:
                    cp.feedback = [f"product owner asked for another iteration: {row.reason}"]
                    self._next_iteration(cp, team.max_iterations, row.reason or "ITERATE")
                await self._save(task_id, cp, "running")

    def _next_iteration(self, cp: Checkpoint, max_iterations: int, why: str) -> None:
        if cp.iteration >= max_iterations:
            cp.phase = Phase.DONE
            cp.outcome = "MAX_ITERATIONS"
            cp.reason = f"{max_iterations} iterations used up; last: {why}"
            return
        cp.ended = {
            "iteration": cp.iteration,
            "gate": (cp.gate or {}).get("score"),
            "consensus": (cp.consensus or {}).get("score"),
        }
        cp.iteration += 1
        cp.phase = Phase.LOOP3
        cp.gate = cp.consensus = None

    @staticmethod
    def _outcome(options: TaskOptions, cp: Checkpoint, status: str) -> Outcome:
        return Outcome(options.task_id, status, cp.outcome, cp.iteration, cp.reason or "")

    async def _save(self, task_id: str, cp: Checkpoint, status: str) -> None:
        await asyncio.to_thread(self.journal.save_checkpoint, task_id, cp, status)

    # --- agents -------------------------------------------------------------------------

    async def _run_team(
        self, options: TaskOptions, cp: Checkpoint, role: str, loop: int, size: int
    ) -> CollectReport:
        """Run (or resume) one loop's team and collect its reports."""
        task_id = options.task_id
        ids = team_ids(loop, cp.iteration, size)
        agent_brief = brief(options, cp, loop)
        done = await self._completed(task_id, ids)
        known = await self.team.rows(task_id)
        watchers: list[asyncio.Task[None]] = []
        # Each agent's transcript, relayed until its team is collected (Team.relay_steps).
        relays: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        handles: dict[str, RunningAgent] = {}
        for agent_id in ids:
            if agent_id in done:
                continue
            plan = AgentPlan(task_id, agent_id, role, loop, cp.iteration, agent_brief)
            handle: RunningAgent | None = None
            row = known.get(agent_id)
            if row is None or (row.pid and row.status == "running"):
                # With no row too: a kill between spawning an agent and saving its
                # row leaves it running, and spawning it again would be refused.
                handle = await self.launcher.reattach(plan, row.pid if row else None)
                if handle is None and await self._completed(task_id, [agent_id]):
                    continue  # it finished between the first look and now
            if handle is None or row is None:
                handle = handle or await self.launcher.launch(plan)
                row = await self.team.started(plan, handle)
            handles[agent_id] = handle
            watchers.append(asyncio.create_task(self._watch(task_id, agent_id, handle)))
            relays.append(asyncio.create_task(self.team.relay_steps(task_id, agent_id, stop)))
        if handles and self.heartbeat_interval:
            watchers.append(asyncio.create_task(self._monitor(task_id, handles)))

        seen: set[str] = set()
        announcements: list[asyncio.Task[None]] = []

        def progress(report: CollectReport) -> None:
            for item in report.results:
                if item.agent_id not in seen:
                    seen.add(item.agent_id)
                    announcements.append(
                        asyncio.get_running_loop().create_task(
                            self._agent_reported(task_id, loop, cp.iteration, item, report, size)
                        )
                    )

        try:
            report = await self.board.collect(
                task_id, ids, self.agent_timeout + self.collect_slack, progress
            )
        finally:
            # Every agent's report is announced before the verdict that follows.
            await asyncio.gather(*announcements, return_exceptions=True)
            for watcher in watchers:
                watcher.cancel()
            # gather, not `suppress(CancelledError): await watcher`: that would also
            # swallow a cancellation of this task arriving meanwhile (a stop, a kill).
            await asyncio.gather(*watchers, return_exceptions=True)
            stop.set()
            for relay in relays:
                with contextlib.suppress(Exception):
                    await relay
            for handle in handles.values():
                handle.release()
        # Agents that never reported by now are recorded as failed.
        reported = {r.agent_id for r in report.results}
        for agent_id in ids:
            if agent_id not in reported:
                plan = AgentPlan(task_id, agent_id, role, loop, cp.iteration, agent_brief)
                await self.team.mark(plan, "failed", None, "no result before the deadline")
        for item in report.results:
            plan = AgentPlan(task_id, item.agent_id, role, loop, cp.iteration, agent_brief)
            status = "done" if item.ok else "failed"
            await self.team.mark(plan, status, item.confidence, item.reason)
        return report

    async def _agent_reported(
        self,
        task_id: str,
        loop: int,
        iteration: int,
        item: AgentResult,
        report: CollectReport,
        size: int,
    ) -> None:
        await self.events.emit(
            task_id,
            "agent:update",
            agentId=item.agent_id,
            status="done" if item.ok else "failed",
            confidence=item.confidence,
            reason=item.reason,
            loop=loop,
            iteration=iteration,
        )
        await self.events.emit(
            task_id,
            "loop:progress",
            loop=loop,
            iteration=iteration,
            progress=min(1.0, report.arrived / size),
        )

    async def _watch(self, task_id: str, agent_id: str, handle: RunningAgent) -> None:
        """When an agent's process ends without a completion, report it failed."""
        how = await handle.wait()
        done = await self._completed(task_id, [agent_id])
        if agent_id not in done:
            await self.board.record_failure(
                task_id, agent_id, f"agent process ended without a result ({how})"
            )

    async def _monitor(self, task_id: str, handles: dict[str, RunningAgent]) -> None:
        """Kill agents whose heartbeat lapses (hung or crashed) and record them failed."""
        assert self.heartbeat_interval is not None
        # An agent has up to the start-up grace (STARTUP_GRACE) to send its first
        # beat (Python and its imports take seconds on a busy machine); after that,
        # 2x the interval.
        # A machine starting a hundred agents at once gives each only a sliver of
        # CPU, so an agent that has not beaten yet but has used CPU since the last
        # look is still starting, not hung: it gets another grace period. One that
        # used none (stopped, deadlocked, gone) is killed. AGENT_TIMEOUT still bounds it.
        grace = max(self.startup_grace, 2 * self.heartbeat_interval)
        cpu: dict[str, int | None] = {}
        async with self.board.heartbeats(task_id, self.heartbeat_interval, grace) as monitor:
            for agent_id, running in handles.items():
                cpu[agent_id] = running.cpu_ticks()
                await monitor.watch(agent_id)
            while monitor.watching:
                for lapse in await monitor.wait_lapsed(3600.0):
                    handle = handles.get(lapse.agent_id)
                    if lapse.never_beat and handle is not None:
                        ticks = handle.cpu_ticks()
                        before = cpu.get(lapse.agent_id)
                        if ticks is not None and before is not None and ticks > before:
                            cpu[lapse.agent_id] = ticks
                            log.info(
                                "%s has not beaten yet but is using CPU (starting on a "
                                "busy machine): %.0f s more",
                                lapse.agent_id,
                                grace,
                            )
                            await monitor.watch(lapse.agent_id)
                            continue
                    if handle is not None:
                        with contextlib.suppress(Exception):
                            await handle.kill()
                    await self.board.record_failure(
                        task_id, lapse.agent_id, f"killed: {lapse.reason}"
                    )

    async def _completed(self, task_id: str, ids: list[str]) -> set[str]:
        return await self.board.reported(task_id) & set(ids)

    # --- decision ----------------------------------------------------------------------

    async def _decide(self, options: TaskOptions, cp: Checkpoint) -> DecisionRecord:
        task_id = options.task_id
        existing = await asyncio.to_thread(self.journal.decision, task_id, cp.iteration)
        if existing is None:
            if options.decision == "agent":
                decision, by, reason = await self._agent_decision(options, cp)
            else:
                decision, by, reason = await self.product_owner.decide(options, cp, self.events)
            if decision not in ("PROCEED", "ITERATE", "ABORT"):
                raise CfnError(f"product owner returned {decision!r}")
            if decision == "PROCEED" and options.build:
                changes = await self._workspace_changes(options)
                if not changes.any:
                    reason = (
                        f"PROCEED turned into ITERATE: the epic asks for a change but the "
                        f"workspace shows {changes.describe()} (was: {reason})"
                    )
                    decision = "ITERATE"
            row = await asyncio.to_thread(
                self.journal.record_decision,
                DecisionRecord(task_id, cp.iteration, decision, by, reason),
            )
        else:
            row = existing
        payload = {
            "iteration": row.iteration,
            "decision": row.decision,
            "by": row.decided_by,
            "reason": row.reason,
        }
        await self.board.set_decision_state(task_id, payload)
        await self.events.emit(task_id, "decision", **payload)
        return row

    async def _agent_decision(self, options: TaskOptions, cp: Checkpoint) -> tuple[str, str, str]:
        """A product-owner agent decides; an unusable answer is ITERATE, never PROCEED."""
        report = await self._run_team(options, cp, "product-owner", 1, 1)
        if not report.results:
            return "ITERATE", "product-owner", "the product-owner agent gave no result"
        item = report.results[0]
        payload = item.payload if isinstance(item.payload, dict) else {}
        try:
            decision = check_decision(str(payload.get("decision", "")))
        except InvalidInputError as exc:
            return "ITERATE", item.agent_id, f"product-owner agent gave no valid decision ({exc})"
        if not item.ok:
            return "ITERATE", item.agent_id, f"product-owner agent failed: {item.reason}"
        return decision, item.agent_id, str(payload.get("reason") or payload.get("summary") or "")

    async def _workspace_changes(self, options: TaskOptions) -> ws.Changes:
        baseline = await self._load_baseline(options.task_id)
        now = await asyncio.to_thread(self.workspace.snapshot, options.workspace_path)
        return ws.diff(baseline, now)

    async def _store_baseline(self, task_id: str, snap: dict[str, str]) -> None:
        await asyncio.to_thread(self.journal.append_event, task_id, BASELINE_EVENT, {"files": snap})

    async def _load_baseline(self, task_id: str) -> dict[str, str]:
        for _id, kind, payload in await asyncio.to_thread(self.journal.events, task_id):
            if kind == BASELINE_EVENT:
                files = payload.get("files", {})
                return {str(k): str(v) for k, v in files.items()}
        return {}


def _deliverable(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        return {}
    out: dict[str, Any] = {}
    for field in ("summary", "files", "confidence", "provider", "offline"):
        if field in payload:
            out[field] = payload[field]
    return out


def _gate_feedback(verdict: Verdict, report: CollectReport) -> list[str]:
    notes = [verdict.describe()]
    for item in report.results:
        if not item.ok:
            notes.append(f"{item.agent_id} failed: {item.reason}")
        elif isinstance(item.payload, dict) and item.payload.get("concerns"):
            notes.append(f"{item.agent_id}: {item.payload['concerns']}")
    return notes


def _validator_feedback(report: CollectReport) -> list[str]:
    notes: list[str] = []
    for item in report.results:
        payload = item.payload if isinstance(item.payload, dict) else {}
        text = payload.get("feedback") or payload.get("summary")
        if text:
            notes.append(f"{item.agent_id}: {text}")
        if not item.ok:
            notes.append(f"{item.agent_id} failed: {item.reason}")
    return notes


def check_decision(value: str) -> str:
    decision = value.strip().upper() if isinstance(value, str) else ""
    if decision not in ("PROCEED", "ITERATE", "ABORT"):
        raise InvalidInputError(f"decision must be PROCEED, ITERATE or ABORT, got {value!r}")
    return decision
