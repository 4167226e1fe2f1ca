"""In-memory implementations of the loop's ports (as langgraph's ``InMemorySaver``).

They let the loop's rules run in one event loop with no redis-server, no
database and no agent process: the orchestrator's tests use them, and so can
anyone writing a product owner or checking a policy::

    from cfn.loop.memory import InMemoryLoop, Script
    from cfn.loop.state import TaskOptions

    loop = InMemoryLoop({"implementer": Script(0.9, writes={"hello.py": "print(1)"}),
                         "validator": Script(0.95)})
    outcome = await loop.orchestrator().start(TaskOptions("t1", "Build hello", mode="mvp"))

The fake agents follow a :class:`Script`: report a confidence (or an unusable
payload) after a delay, crash, hang without a heartbeat, stall while beating,
or take long to start while using CPU. Their completions are judged by the
same code as the Redis collector's (``judge_payload``), so a missing or NaN
confidence is a failed report here exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cfn.agents.heartbeat import FINAL_STATUSES, SPAWNED, Lapse
from cfn.coordination.completion import (
    SUCCESS,
    AgentResult,
    CollectReport,
    judge_payload,
    parse_entry,
)
from cfn.errors import InvalidInputError, NotFoundError, TaskLeaseError, WaitTimeoutError
from cfn.loop.orchestrator import Orchestrator, PolicyOwner
from cfn.loop.ports import (
    AgentPlan,
    EventBus,
    HeartbeatWatch,
    Listener,
    ProductOwner,
    RunningAgent,
)
from cfn.loop.state import Checkpoint, TaskOptions, ended_figures
from cfn.store.records import AgentRecord, DecisionRecord

# --- journal ----------------------------------------------------------------------------


class InMemoryJournal:
    """:class:`cfn.loop.ports.Journal` in dictionaries (thread-safe: the loop calls it from
    worker threads, as it does the SQL one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tasks: dict[str, tuple[TaskOptions, Checkpoint, str]] = {}
        #: Per task, per iteration: the figures the SQL ``iterations`` table keeps.
        self.iterations: dict[str, dict[int, dict[str, float | bool | None]]] = {}
        self.statuses: list[tuple[str, str]] = []
        self._agents: dict[str, dict[str, AgentRecord]] = {}
        self._decisions: dict[tuple[str, int], DecisionRecord] = {}
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def create_task(self, options: TaskOptions, checkpoint: Checkpoint) -> None:
        with self._lock:
            if options.task_id in self.tasks:
                raise InvalidInputError(
                    f"task {options.task_id!r} exists already; `cfn resume {options.task_id}` "
                    "continues it"
                )
            self.tasks[options.task_id] = (options, _copy(checkpoint), "pending")
            self.iterations[options.task_id] = {1: {}}

    def load_task(self, task_id: str) -> tuple[TaskOptions, Checkpoint, str]:
        with self._lock:
            try:
                options, checkpoint, status = self.tasks[task_id]
            except KeyError:
                raise NotFoundError(f"no task {task_id!r}") from None
            return options, _copy(checkpoint), status

    def save_checkpoint(self, task_id: str, checkpoint: Checkpoint, status: str) -> None:
        with self._lock:
            if task_id not in self.tasks:
                raise NotFoundError(f"no task {task_id!r}")
            options = self.tasks[task_id][0]
            self.tasks[task_id] = (options, _copy(checkpoint), status)
            self.statuses.append((task_id, status))
            figures = self.iterations[task_id].setdefault(checkpoint.iteration, {})
            if checkpoint.gate:
                figures["gate_mean"] = checkpoint.gate.get("score")
            if checkpoint.consensus:
                figures["consensus_mean"] = checkpoint.consensus.get("score")
            ended = ended_figures(checkpoint)
            if ended is not None:
                number, gate, consensus = ended
                left = self.iterations[task_id].setdefault(number, {})
                if gate is not None:
                    left["gate_mean"] = gate
                if consensus is not None:
                    left["consensus_mean"] = consensus
                left["finished"] = True
            if status in ("succeeded", "failed", "aborted"):
                figures["finished"] = True

    def save_agent(self, row: AgentRecord) -> None:
        with self._lock:
            self._agents.setdefault(row.task_id, {})[row.agent_id] = row

    def agents(self, task_id: str) -> list[AgentRecord]:
        with self._lock:
            return list(self._agents.get(task_id, {}).values())

    def record_decision(self, row: DecisionRecord) -> DecisionRecord:
        with self._lock:
            key = (row.task_id, row.iteration)
            if key in self._decisions:
                return self._decisions[key]  # the unique key: the first decision stays
            self._decisions[key] = replace(row, decided_by=row.decided_by[:255])
            return row

    def decision(self, task_id: str, iteration: int) -> DecisionRecord | None:
        with self._lock:
            return self._decisions.get((task_id, iteration))

    def decisions(self, task_id: str) -> list[DecisionRecord]:
        with self._lock:
            return sorted(
                (d for (t, _i), d in self._decisions.items() if t == task_id),
                key=lambda d: d.iteration,
            )

    def append_event(self, task_id: str, kind: str, payload: dict[str, Any]) -> int:
        data = json.loads(json.dumps(payload, default=str))  # what SQL would give back
        with self._lock:
            event_id = next(self._ids)
            self._events.append((event_id, task_id, kind, data))
            return event_id

    def events(self, task_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            return [(i, k, p) for i, t, k, p in self._events if t == task_id and i > after]


def _copy(checkpoint: Checkpoint) -> Checkpoint:
    """A stored checkpoint must not change when the orchestrator changes its own."""
    return Checkpoint.from_json(checkpoint.to_json())


# --- events -------------------------------------------------------------------------------


class InMemoryEventBus:
    """:class:`cfn.loop.ports.EventBus` that keeps every event (and journals it, if given)."""

    def __init__(self, journal: InMemoryJournal | None = None) -> None:
        self.journal = journal
        self.listeners: list[Listener] = []
        self.emitted: list[tuple[str, str, dict[str, Any]]] = []

    async def emit(self, task_id: str, kind: str, /, **payload: Any) -> None:
        payload.setdefault("ts", time.time())
        if self.journal is not None:
            self.journal.append_event(task_id, kind, payload)
        self.emitted.append((task_id, kind, payload))
        for listener in self.listeners:
            listener(task_id, kind, payload)

    def kinds(self, task_id: str) -> list[str]:
        return [k for t, k, _p in self.emitted if t == task_id]


# --- coordination -------------------------------------------------------------------------


class _Changes:
    """Wakes every coroutine waiting for the board to change (no polling)."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout)):
                await waiter


class InMemoryBoard:
    """:class:`cfn.loop.ports.Coordination` in memory: completions, heartbeats, signals."""

    def __init__(self) -> None:
        #: ``agent:result`` entries per task, oldest first (the durable record).
        self.completions: dict[str, list[str]] = {}
        self.payloads: dict[tuple[str, str], str] = {}
        #: Failures recorded by the orchestrator (``coord:{task}:error``), oldest first.
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.signals: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.stops: dict[tuple[str, str], list[str]] = {}
        self.context: dict[tuple[str, str], Any] = {}
        self.stream: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.steps: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.decisions: dict[str, dict[str, Any]] = {}
        self.decision_inputs: dict[str, deque[dict[str, Any]]] = {}
        #: Live heartbeats: value and the monotonic time it expires at.
        self.beats: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        #: Tasks an orchestrator runs now (``lease``).
        self.leases: set[str] = set()
        self.changes = _Changes()

    # --- what agents and people do ---

    def complete(
        self,
        task_id: str,
        agent_id: str,
        result: str = SUCCESS,
        payload: dict[str, Any] | str | None = None,
    ) -> None:
        """An agent's completion, payload first (as the Lua script writes them)."""
        if payload is not None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            self.payloads[(task_id, agent_id)] = text
        self.completions.setdefault(task_id, []).append(f"{agent_id}:{result}")
        self.changes.notify()

    def beat(
        self, task_id: str, agent_id: str, ttl: float, status: str = "running", pid: int = 0
    ) -> None:
        value = {"ts": time.time(), "pid": pid, "status": status}
        self.beats[(task_id, agent_id)] = (value, time.monotonic() + ttl)
        self.changes.notify()

    def heartbeat(self, task_id: str, agent_id: str) -> dict[str, Any] | None:
        found = self.beats.get((task_id, agent_id))
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def entries(self, task_id: str) -> list[str]:
        return list(self.completions.get(task_id, []))

    # --- the port ---

    async def collect(
        self,
        task_id: str,
        agent_ids: list[str],
        timeout: float,
        on_update: Callable[[CollectReport], None] | None = None,
    ) -> CollectReport:
        start = time.monotonic()
        deadline = start + timeout
        wanted = set(agent_ids)
        results: dict[str, AgentResult] = {}
        seen = 0

        def report(timed_out: bool) -> CollectReport:
            ordered = sorted(results.values(), key=lambda r: r.seen_at)
            return CollectReport(
                task_id, len(agent_ids), 0.0, ordered, timed_out, time.monotonic() - start
            )

        while True:
            entries = self.completions.get(task_id, [])
            new = entries[seen:]
            seen = len(entries)
            arrived = False
            for entry in new:
                parsed = parse_entry(entry)
                if parsed is None or parsed[0] not in wanted:
                    continue
                agent, word = parsed
                item = AgentResult(agent, word, seen_at=time.monotonic())
                raw = self.payloads.get((task_id, agent))
                if raw is None:
                    item.reason = "no payload (confidence missing)"
                else:
                    judge_payload(item, raw)
                results[agent] = item
                arrived = True
            if arrived and on_update is not None:
                on_update(report(False))
            if len(results) >= len(agent_ids):
                return report(False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return report(True)
            await self.changes.wait(remaining)

    async def reported(self, task_id: str) -> set[str]:
        return {p[0] for e in self.completions.get(task_id, []) if (p := parse_entry(e))}

    @contextlib.asynccontextmanager
    async def lease(self, task_id: str) -> AsyncIterator[None]:
        """One orchestrator per task: a second one is refused while the first runs."""
        if task_id in self.leases:
            raise TaskLeaseError(f"task {task_id} is run by another orchestrator")
        self.leases.add(task_id)
        try:
            yield
        finally:
            self.leases.discard(task_id)

    async def record_failure(self, task_id: str, agent_id: str, reason: str) -> bool:
        if (task_id, agent_id) in self.payloads:
            return False  # the agent's own report (or an earlier failure) wins
        entry = {"agent_id": agent_id, "status": "failed", "reason": reason, "ts": time.time()}
        self.errors.setdefault(task_id, []).append(entry)
        self.complete(task_id, agent_id, "failed", entry)
        return True

    @asynccontextmanager
    async def heartbeats(
        self, task_id: str, interval: float, startup_grace: float
    ) -> AsyncIterator[HeartbeatWatch]:
        yield InMemoryHeartbeats(self, task_id, startup_grace)

    async def signal(self, task_id: str, channel: str, payload: dict[str, Any]) -> None:
        self.signals.setdefault((task_id, channel), []).append(json.loads(json.dumps(payload)))

    async def stop_agent(self, task_id: str, agent_id: str, reason: str) -> None:
        self.stops.setdefault((task_id, agent_id), []).append(reason)
        self.changes.notify()

    async def store_context(self, task_id: str, key: str, value: object) -> None:
        self.context[(task_id, key)] = json.loads(json.dumps(value))

    async def publish_event(
        self, task_id: str, event_id: int, kind: str, payload: dict[str, Any]
    ) -> None:
        data = json.loads(json.dumps(payload, default=str))
        self.stream.setdefault(task_id, []).append((event_id, kind, data))

    async def recent_event_ids(self, task_id: str, count: int) -> list[int]:
        return [event_id for event_id, _k, _d in self.stream.get(task_id, [])[-count:]]

    def step(self, task_id: str, agent_id: str, fields: dict[str, str]) -> None:
        """An agent's transcript step (what ``cfn.agents.steps.StepWriter`` writes)."""
        self.steps.setdefault((task_id, agent_id), []).append(dict(fields))
        self.changes.notify()

    async def agent_steps(
        self, task_id: str, agent_id: str, after: str, timeout: float
    ) -> tuple[str, list[dict[str, str]]]:
        position = int(after) if after.isdigit() else 0
        steps = self.steps.get((task_id, agent_id), [])
        if len(steps) <= position and timeout > 0:
            await self.changes.wait(timeout)
            steps = self.steps.get((task_id, agent_id), [])
        return str(len(steps)), steps[position:]

    async def set_decision_state(self, task_id: str, state: dict[str, Any]) -> None:
        self.decisions[task_id] = json.loads(json.dumps(state))
        self.changes.notify()

    async def decision_state(self, task_id: str) -> dict[str, Any] | None:
        return self.decisions.get(task_id)

    async def send_decision_input(self, task_id: str, message: dict[str, Any]) -> None:
        self.decision_inputs.setdefault(task_id, deque()).append(message)
        self.changes.notify()

    async def wait_decision_input(self, task_id: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            queue = self.decision_inputs.get(task_id)
            if queue:
                return queue.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(f"no decision for {task_id} within {timeout:g} s")
            await self.changes.wait(remaining)


class InMemoryHeartbeats:
    """:class:`cfn.loop.ports.HeartbeatWatch` by ``HeartbeatMonitor``'s rules, on the board."""

    def __init__(self, board: InMemoryBoard, task_id: str, startup_grace: float) -> None:
        self.board = board
        self.task_id = task_id
        self.startup_grace = startup_grace
        self._watching: dict[str, dict[str, Any] | None] = {}

    @property
    def watching(self) -> list[str]:
        return sorted(self._watching)

    async def watch(self, agent_id: str, *, grace: float | None = None) -> None:
        if self.board.heartbeat(self.task_id, agent_id) is None:  # SET NX
            lifetime = self.startup_grace if grace is None else grace
            self.board.beat(self.task_id, agent_id, lifetime, SPAWNED)
        self._watching[agent_id] = None

    def check(self) -> list[Lapse]:
        now = time.time()
        lapses: list[Lapse] = []
        for agent in sorted(self._watching):
            value = self.board.heartbeat(self.task_id, agent)
            if value is not None:
                self._watching[agent] = value
                continue
            last = self._watching.pop(agent)
            if last is not None and last.get("status") in FINAL_STATUSES:
                continue
            lapses.append(Lapse(agent, last, now))
        return lapses

    async def wait_lapsed(self, timeout: float) -> list[Lapse]:
        deadline = time.monotonic() + timeout
        while True:
            lapses = self.check()
            if lapses:
                return lapses
            now = time.monotonic()
            expiries = [
                found[1]
                for agent in self._watching
                if (found := self.board.beats.get((self.task_id, agent))) is not None
            ]
            wake = min([deadline, *expiries])
            if deadline <= now:
                return []
            await self.board.changes.wait(max(0.0, wake - now) + 0.001)


# --- agents -------------------------------------------------------------------------------

Fate = Literal["report", "crash", "hang", "stall"]


@dataclass(frozen=True)
class Script:
    """What one fake agent does.

    ``fate``: ``report`` (beat, then report after ``delay``), ``crash`` (end
    after ``delay`` without a report), ``hang`` (never beat, use no CPU, never
    end: the heartbeat monitor kills it), ``stall`` (beat but never report:
    the collector's deadline catches it). ``slow_start`` seconds of CPU use
    without a beat come first (an agent starting on a crowded machine).
    """

    confidence: float | None = 0.9
    payload: dict[str, Any] = field(default_factory=dict)
    fate: Fate = "report"
    delay: float = 0.0
    slow_start: float = 0.0
    result: str = SUCCESS
    #: The payload text verbatim (``"garbage"``, ``'{"confidence": NaN}'``); overrides the rest.
    raw: str | None = None
    #: Files the agent writes into the workspace before it reports.
    writes: dict[str, str] = field(default_factory=dict)

    def payload_text(self, plan: AgentPlan) -> str:
        if self.raw is not None:
            return self.raw
        body: dict[str, Any] = {"agent_id": plan.agent_id, "summary": f"{plan.agent_id} done"}
        if self.confidence is not None:
            body["confidence"] = self.confidence
        if self.writes:
            body["files"] = sorted(self.writes)
        body.update(self.payload)
        return json.dumps(body)


Scripts = Mapping[str, Script] | Callable[[AgentPlan], Script]


class InMemoryWorkspace:
    """:class:`cfn.loop.ports.Workspace` as ``{root: {name: text}}``."""

    def __init__(self) -> None:
        self.files: dict[Path, dict[str, str]] = {}

    def prepare(self, root: Path) -> None:
        self.files.setdefault(root, {})

    def write(self, root: Path, name: str, text: str) -> None:
        self.files.setdefault(root, {})[name] = text

    def snapshot(self, root: Path) -> dict[str, str]:
        return {
            name: f"{len(text.encode())}:{hashlib.sha256(text.encode()).hexdigest()}"
            for name, text in sorted(self.files.get(root, {}).items())
        }


class FakeAgent:
    """:class:`cfn.loop.ports.RunningAgent`: a coroutine that plays its :class:`Script`."""

    def __init__(
        self,
        plan: AgentPlan,
        script: Script,
        pid: int,
        launcher: InMemoryLauncher,
    ) -> None:
        self.plan = plan
        self.script = script
        self._pid = pid
        self.launcher = launcher
        self.started = time.monotonic()
        self.killed = False
        #: The orchestrator stopped watching it (RunningAgent.release).
        self.released = False
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(self._play())

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def backend(self) -> str | None:
        return "builtin"

    @property
    def profile(self) -> str | None:
        return self.plan.role

    @property
    def provider(self) -> str | None:
        return "memory"

    @property
    def model(self) -> str | None:
        return "scripted"

    @property
    def running(self) -> bool:
        return not self.ended.done()

    def cpu_ticks(self) -> int | None:
        """Rising while it works; a hung agent's stops when its slow start is over."""
        busy = time.monotonic() - self.started
        if self.script.fate == "hang":
            busy = min(busy, self.script.slow_start)
        return int(busy * 100)

    async def wait(self) -> str:
        return await asyncio.shield(self.ended)

    def release(self) -> None:
        self.released = True

    async def kill(self) -> None:
        if self.running:
            self.killed = True
            self.task.cancel()
            self._end("killed by SIGKILL")

    def _end(self, how: str) -> None:
        if not self.ended.done():
            self.ended.set_result(how)

    async def _play(self) -> None:
        board, plan, script = self.launcher.board, self.plan, self.script
        ttl = self.launcher.beat_ttl
        beating: asyncio.Task[None] | None = None
        try:
            if script.slow_start:
                await asyncio.sleep(script.slow_start)
            if script.fate == "hang":
                await asyncio.Event().wait()  # until killed
            board.beat(plan.task_id, plan.agent_id, ttl, pid=self._pid)
            beating = asyncio.create_task(self._beat(ttl))
            if script.fate == "stall":
                await asyncio.Event().wait()
            await asyncio.sleep(script.delay)
            if script.fate == "crash":
                self._end("exit 1")
                return
            for name, text in script.writes.items():
                self.launcher.workspace.write(Path(self.launcher.root(plan)), name, text)
            beating.cancel()
            board.complete(plan.task_id, plan.agent_id, script.result, script.payload_text(plan))
            board.beat(plan.task_id, plan.agent_id, ttl, "done", self._pid)
            self._end("exit 0")
        finally:
            if beating is not None:
                beating.cancel()

    async def _beat(self, ttl: float) -> None:
        while True:
            await asyncio.sleep(self.launcher.beat_interval)
            self.launcher.board.beat(self.plan.task_id, self.plan.agent_id, ttl, pid=self._pid)


class InMemoryLauncher:
    """:class:`cfn.loop.ports.AgentLauncher` (and ``AgentStopper``) with scripted fake agents.

    ``scripts`` maps an agent id (``impl-2-1``) or a role (``implementer``) to
    its :class:`Script`, or is a function of the plan; anything not named
    reports ``default``. Agents outlive an orchestrator that is cancelled, as
    processes outlive a killed one, and are found again by ``reattach``.
    """

    def __init__(
        self,
        board: InMemoryBoard,
        scripts: Scripts | None = None,
        *,
        default: Script | None = None,
        workspace: InMemoryWorkspace | None = None,
        workspaces: Mapping[str, str] | None = None,
        beat_interval: float = 0.05,
        beat_ttl: float = 2.0,
    ) -> None:
        self.board = board
        self.scripts: Scripts = scripts if scripts is not None else {}
        self.default = default or Script()
        self.workspace = workspace or InMemoryWorkspace()
        self.workspaces = dict(workspaces or {})
        self.beat_interval = beat_interval
        self.beat_ttl = beat_ttl
        self.launched: list[AgentPlan] = []
        self.launches: Counter[str] = Counter()
        self.reattached: list[str] = []
        self.agents: dict[tuple[str, str], FakeAgent] = {}
        self._pids = itertools.count(10_000)

    def root(self, plan: AgentPlan) -> str:
        """The task's workspace (tell the launcher with ``workspaces={task: path}``)."""
        return self.workspaces.get(plan.task_id, "")

    def script_for(self, plan: AgentPlan) -> Script:
        if callable(self.scripts):
            return self.scripts(plan)
        return self.scripts.get(plan.agent_id) or self.scripts.get(plan.role) or self.default

    async def launch(self, plan: AgentPlan) -> RunningAgent:
        agent = FakeAgent(plan, self.script_for(plan), next(self._pids), self)
        self.launched.append(plan)
        self.launches[plan.agent_id] += 1
        self.agents[(plan.task_id, plan.agent_id)] = agent
        return agent

    async def reattach(self, plan: AgentPlan, pid: int | None) -> RunningAgent | None:
        agent = self.agents.get((plan.task_id, plan.agent_id))
        if agent is None or not agent.running or (pid is not None and pid != agent.pid):
            return None
        self.reattached.append(plan.agent_id)
        return agent

    async def stop(self, task_id: str, agent_id: str) -> str:
        agent = self.agents.get((task_id, agent_id))
        if agent is None:
            return "not found here"
        if not agent.running:
            return "already ended"
        await agent.kill()
        return "terminated"

    async def close(self) -> None:
        """Kill every fake agent still running (the end of a test)."""
        for agent in self.agents.values():
            await agent.kill()
        for agent in self.agents.values():
            with contextlib.suppress(asyncio.CancelledError):
                await agent.task


# --- the product owner ----------------------------------------------------------------------


class ScriptedOwner:
    """:class:`cfn.loop.ports.ProductOwner` that answers from a list (the last one repeats).

    Each answer is a decision (``"ITERATE"``) or ``(decision, reason)``; every
    question is kept in ``asked`` as ``(task, iteration, gate score, consensus score)``.
    """

    def __init__(self, *answers: str | tuple[str, str], by: str = "scripted") -> None:
        if not answers:
            raise InvalidInputError("a scripted owner needs at least one answer")
        self.answers = [a if isinstance(a, tuple) else (a, f"scripted {a}") for a in answers]
        self.by = by
        self.asked: list[tuple[str, int, float | None, float | None]] = []

    async def decide(
        self, options: TaskOptions, checkpoint: Checkpoint, events: EventBus
    ) -> tuple[str, str, str]:
        gate = (checkpoint.gate or {}).get("score")
        consensus = (checkpoint.consensus or {}).get("score")
        self.asked.append((options.task_id, checkpoint.iteration, gate, consensus))
        decision, reason = self.answers[min(len(self.asked), len(self.answers)) - 1]
        return decision, self.by, reason


# --- all of it at once ----------------------------------------------------------------------


class InMemoryLoop:
    """Journal, board, workspace and launcher wired together; ``orchestrator()`` runs them."""

    def __init__(
        self,
        scripts: Scripts | None = None,
        *,
        default: Script | None = None,
        owner: ProductOwner | None = None,
        beat_interval: float = 0.05,
    ) -> None:
        self.journal = InMemoryJournal()
        self.board = InMemoryBoard()
        self.workspace = InMemoryWorkspace()
        self.launcher = InMemoryLauncher(
            self.board,
            scripts,
            default=default,
            workspace=self.workspace,
            beat_interval=beat_interval,
        )
        self.owner: ProductOwner = owner or PolicyOwner()

    def orchestrator(self, **options: Any) -> Orchestrator:
        """A new orchestrator on the same state (a second one is a restarted process)."""
        return Orchestrator(
            self.board,
            self.journal,
            self.launcher,
            self.owner,
            workspace=self.workspace,
            **options,
        )

    async def close(self) -> None:
        await self.launcher.close()
