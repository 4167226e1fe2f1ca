"""The loop's rules on the in-memory ports: no redis-server, no database, no process.

Gate and consensus (the mean over the whole team, a failed report adds 0),
the product owner's PROCEED / ITERATE / ABORT, the iteration cap, PROCEED
without a workspace change, hung and slow-starting agents, and resume from
every step. The ``_no_servers`` guard below makes each test fail if anything
would start a process (redis-server is not even on PATH), open a network
connection or write a file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.errors import TaskLeaseError
from cfn.loop.memory import (
    InMemoryBoard,
    InMemoryEventBus,
    InMemoryJournal,
    InMemoryLauncher,
    InMemoryLoop,
    InMemoryWorkspace,
    Script,
    ScriptedOwner,
)
from cfn.loop.orchestrator import HumanOwner, Orchestrator, Outcome, send_decision
from cfn.loop.ports import AgentPlan
from cfn.loop.state import Checkpoint, Phase, TaskOptions
from cfn.loop.team import Team
from cfn.store.records import AgentRecord, DecisionRecord

WROTE = Script(0.9, writes={"hello.py": "print('hello')\n"})
POLICY_REASON = "gate 0.900 >= 0.70 and consensus 0.950 >= 0.80"


@pytest.fixture(autouse=True)
def _no_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing here may need redis-server, a process, a socket or a file."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("redis-server") is None

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the in-memory loop started a process or opened a connection")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
    written = [p for p in tmp_path.rglob("*") if p != empty]
    assert written == [], f"the in-memory loop wrote files: {written}"


@pytest.fixture
async def cleanup() -> AsyncIterator[list[InMemoryLoop]]:
    loops: list[InMemoryLoop] = []
    yield loops
    for loop in loops:
        await loop.close()


def task(task_id: str = "t1", **kwargs: Any) -> TaskOptions:
    values: dict[str, Any] = {
        "task_id": task_id,
        "epic": "Build a hello module",
        "mode": "mvp",  # gate 0.70, consensus 0.80, 5 iterations, 2 + 2 agents
    }
    values.update(kwargs)
    return TaskOptions(**values)


def make(
    cleanup: list[InMemoryLoop],
    scripts: dict[str, Script] | None = None,
    **kwargs: Any,
) -> InMemoryLoop:
    base = {"implementer": WROTE, "validator": Script(0.95)}
    loop = InMemoryLoop({**base, **(scripts or {})}, **kwargs)
    cleanup.append(loop)
    return loop


def timeline(loop: InMemoryLoop, task_id: str = "t1") -> list[str]:
    """The task's events in order, one word each; per-agent progress left out, and a
    run of agents' reports sorted (agents report concurrently)."""
    lines: list[str] = []
    run: list[str] = []
    for _id, kind, data in loop.journal.events(task_id):
        if kind == "workspace:baseline" or (kind == "loop:progress" and data["progress"]):
            continue
        if kind == "agent:update" and data["status"] != "running":
            run.append(f"{data['agentId']} {data['status']}")
            continue
        lines += sorted(run)
        run = []
        if kind == "agent:update":
            lines.append(f"{data['agentId']} running")
        elif kind == "loop:progress":
            lines.append(f"loop{data['loop']}")
        elif kind in ("gate", "consensus"):
            lines.append(f"{kind} {'passed' if data['passed'] else 'failed'} {data['score']}")
        elif kind == "decision":
            lines.append(f"decision {data['iteration']} {data['decision']}")
        elif kind == "task:finished":
            lines.append(f"finished {data['status']}")
        else:
            lines.append(kind)
    return lines + sorted(run)


def statuses(loop: InMemoryLoop, task_id: str = "t1") -> dict[str, tuple[str, float | None]]:
    return {r.agent_id: (r.status, r.confidence) for r in loop.journal.agents(task_id)}


def reasons(loop: InMemoryLoop, task_id: str = "t1") -> dict[str, str | None]:
    return {r.agent_id: r.reason for r in loop.journal.agents(task_id)}


def events(loop: InMemoryLoop, kind: str, task_id: str = "t1") -> list[dict[str, Any]]:
    out = []
    for _id, k, data in loop.journal.events(task_id):
        if k == kind:
            out.append({key: value for key, value in data.items() if key != "ts"})
    return out


def briefs(loop: InMemoryLoop, agent_id: str) -> dict[str, Any]:
    (plan,) = [p for p in loop.launcher.launched if p.agent_id == agent_id]
    return plan.brief


def verdict(kind: str, threshold: float, score: float, passed: bool, **kw: int) -> dict[str, Any]:
    team = kw.get("team", 2)
    return {
        "kind": kind,
        "threshold": threshold,
        "team": team,
        "reported": kw.get("reported", team),
        "failed": kw.get("failed", 0),
        "score": score,
        "passed": passed,
    }


# --- the plain run --------------------------------------------------------------------------


async def test_a_good_team_proceeds_in_one_iteration(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup)
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 1, POLICY_REASON)
    assert outcome.exit_code == 0
    assert timeline(loop) == [
        "task:created",
        "loop3",
        "impl-1-1 running",
        "impl-2-1 running",
        "impl-1-1 done",
        "impl-2-1 done",
        "gate passed 0.9",
        "loop2",
        "val-1-1 running",
        "val-2-1 running",
        "val-1-1 done",
        "val-2-1 done",
        "consensus passed 0.95",
        "decision 1 PROCEED",
        "finished succeeded",
    ]
    assert statuses(loop) == {
        "impl-1-1": ("done", 0.9),
        "impl-2-1": ("done", 0.9),
        "val-1-1": ("done", 0.95),
        "val-2-1": ("done", 0.95),
    }
    assert loop.journal.decisions("t1") == [
        DecisionRecord("t1", 1, "PROCEED", "policy", POLICY_REASON)
    ]
    assert loop.journal.load_task("t1")[2] == "succeeded"
    assert loop.journal.iterations["t1"] == {
        1: {"gate_mean": 0.9, "consensus_mean": 0.95, "finished": True}
    }
    # Rows carry what the launcher said about each agent.
    row = loop.journal.agents("t1")[0]
    assert (row.role, row.loop, row.iteration, row.profile, row.provider, row.model) == (
        "implementer",
        3,
        1,
        "implementer",
        "memory",
        "scripted",
    )
    # The coordination side: completions, signals, context, decision state, live stream.
    board = loop.board
    assert sorted(board.entries("t1")) == [
        "impl-1-1:success",
        "impl-2-1:success",
        "val-1-1:success",
        "val-2-1:success",
    ]
    (loop3,) = board.signals[("t1", "loop3:complete")]
    assert loop3 == {"iteration": 1, "gate": verdict("gate", 0.7, 0.9, True)}
    (loop2,) = board.signals[("t1", "loop2:start")]
    deliverables = [
        {
            "agent_id": agent,
            "summary": f"{agent} done",
            "files": ["hello.py"],
            "confidence": 0.9,
        }
        for agent in ("impl-1-1", "impl-2-1")
    ]
    assert loop2 == {"iteration": 1, "deliverables": deliverables}
    assert board.context[("t1", "deliverables")] == deliverables
    assert briefs(loop, "val-1-1")["deliverables"] == deliverables
    assert board.decisions["t1"] == {
        "iteration": 1,
        "decision": "PROCEED",
        "by": "policy",
        "reason": POLICY_REASON,
    }
    journal_events = [(i, k) for i, k, _d in loop.journal.events("t1") if k != "workspace:baseline"]
    assert [(i, k) for i, k, _d in board.stream["t1"]] == journal_events
    assert board.errors == {}


async def test_every_agent_is_released_even_one_that_reported_before_it_was_watched(
    cleanup: list[InMemoryLoop],
) -> None:
    """What an agent holds (its Redis ACL user) is let go through ``release``, not only
    through a watcher's cancellation: an agent quicker than its watcher's first step
    (delay 0) would otherwise keep it."""
    loop = make(cleanup, {"implementer": Script(0.9, delay=0.0, writes={"a.py": "a\n"})})
    outcome = await loop.orchestrator().start(task())
    assert outcome.status == "succeeded"
    assert loop.launcher.agents and all(a.released for a in loop.launcher.agents.values())


async def test_a_listener_sees_every_event_as_it_is_emitted(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup)
    orchestrator = loop.orchestrator()
    seen: list[str] = []
    orchestrator.events.listeners.append(lambda _t, kind, _d: seen.append(kind))
    await orchestrator.start(task())
    assert seen == [k for _i, k, _d in loop.journal.events("t1") if k != "workspace:baseline"]


# --- gate ---------------------------------------------------------------------------------


async def test_a_failed_gate_starts_the_next_iteration_at_loop3_with_its_feedback(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup, {"impl-2-1": Script(0.4, payload={"concerns": "no tests yet"})})
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, POLICY_REASON)
    assert [p.agent_id for p in loop.launcher.launched] == [
        "impl-1-1",
        "impl-2-1",
        "impl-1-2",
        "impl-2-2",
        "val-1-2",
        "val-2-2",
    ]
    assert events(loop, "gate") == [
        {"iteration": 1, **verdict("gate", 0.7, 0.65, False)},
        {"iteration": 2, **verdict("gate", 0.7, 0.9, True)},
    ]
    assert briefs(loop, "impl-1-2")["feedback"] == [
        "gate failed: 0.650 vs 0.70 (2/2 reported)",
        "impl-2-1: no tests yet",
    ]
    assert briefs(loop, "impl-1-1")["feedback"] == []
    assert statuses(loop)["impl-2-1"] == ("done", 0.4)  # reported: done, just not enough
    # The failed gate keeps its figure on iteration 1's row (written with the save that
    # moves the checkpoint on to iteration 2), and iteration 1 is finished.
    assert loop.journal.iterations["t1"] == {
        1: {"gate_mean": 0.65, "finished": True},
        2: {"gate_mean": 0.9, "consensus_mean": 0.95, "finished": True},
    }
    assert [(d.iteration, d.decision) for d in loop.journal.decisions("t1")] == [(2, "PROCEED")]
    assert ("t1", "loop3:complete") in loop.board.signals
    assert [s["iteration"] for s in loop.board.signals[("t1", "loop3:complete")]] == [2]


async def test_the_gate_is_the_team_mean_and_passes_at_the_threshold(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup, {"implementer": Script(0.7, writes={"a.py": "a = 1\n"})})
    outcome = await loop.orchestrator().start(task())
    assert outcome.status == "succeeded" and outcome.iterations == 1
    assert events(loop, "gate") == [{"iteration": 1, **verdict("gate", 0.7, 0.7, True)}]


@pytest.mark.parametrize(
    ("script", "reason", "confidence"),
    [
        (
            Script(fate="crash"),
            "payload has no confidence: agent process ended without a result (exit 1)",
            None,
        ),
        (Script(None), "payload has no confidence", None),
        (Script(7), "confidence 7 is outside [0, 1]", None),
        (Script(raw='{"confidence": NaN}'), "confidence nan is outside [0, 1]", None),
        (Script(raw="I am done!"), "payload is not JSON", None),
        (Script(raw="[0.9]"), "payload is not a JSON object", None),
        (Script(True), "confidence True is not a number", None),
        # A report the agent itself calls an error keeps its figure on record, unused.
        (Script(0.99, result="error"), "agent reported 'error'", 0.99),
    ],
    ids=["crash", "no-confidence", "seven", "nan", "garbage", "not-an-object", "bool", "error"],
)
async def test_a_failed_report_counts_zero_and_is_recorded_failed(
    cleanup: list[InMemoryLoop], script: Script, reason: str, confidence: float | None
) -> None:
    """One implementer at 1.0 and one failed: 0.5 < 0.70 however sure the other is."""
    loop = make(
        cleanup,
        {"impl-1-1": Script(1.0, writes={"a.py": "a\n"}), "impl-2-1": script},
    )
    outcome = await loop.orchestrator().start(task(max_iterations=1))
    assert outcome.status == "failed" and outcome.decision == "MAX_ITERATIONS"
    assert events(loop, "gate") == [
        {"iteration": 1, **verdict("gate", 0.7, 0.5, False, failed=1)},
    ]
    assert statuses(loop) == {"impl-1-1": ("done", 1.0), "impl-2-1": ("failed", confidence)}
    assert reasons(loop)["impl-2-1"] == reason
    (update,) = [
        e
        for e in events(loop, "agent:update")
        if e["agentId"] == "impl-2-1" and e["status"] != "running"
    ]
    assert update == {
        "agentId": "impl-2-1",
        "status": "failed",
        "confidence": confidence,
        "reason": reason,
        "loop": 3,
        "iteration": 1,
    }
    assert outcome.reason == (
        "1 iterations used up; last: gate failed: 0.500 vs 0.70 (2/2 reported, 1 failed)"
    )


# --- consensus ----------------------------------------------------------------------------


async def test_failed_consensus_starts_over_at_loop3_with_the_validators_feedback(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(
        cleanup,
        {
            "val-2-1": Script(0.6, payload={"feedback": "add tests for empty input"}),
            "val-1-1": Script(0.9, payload={"feedback": "looks fine"}),
        },
    )
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, POLICY_REASON)
    assert events(loop, "consensus") == [
        {"iteration": 1, **verdict("consensus", 0.8, 0.75, False)},
        {"iteration": 2, **verdict("consensus", 0.8, 0.95, True)},
    ]
    assert briefs(loop, "impl-1-2")["feedback"] == [
        "val-1-1: looks fine",
        "val-2-1: add tests for empty input",
        "consensus failed: 0.750 vs 0.80 (2/2 reported)",
    ]
    assert timeline(loop)[timeline(loop).index("consensus failed 0.75") + 1] == "loop3"
    assert [(d.iteration, d.decision) for d in loop.journal.decisions("t1")] == [(2, "PROCEED")]
    assert loop.journal.iterations["t1"][1] == {
        "gate_mean": 0.9,
        "consensus_mean": 0.75,
        "finished": True,
    }


async def test_a_crashed_validator_fails_consensus(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup, {"val-1-1": Script(fate="crash")})
    outcome = await loop.orchestrator().start(task(max_iterations=1))
    assert outcome.status == "failed" and outcome.decision == "MAX_ITERATIONS"
    assert events(loop, "consensus") == [
        {"iteration": 1, **verdict("consensus", 0.8, 0.475, False, failed=1)}
    ]
    assert statuses(loop)["val-1-1"] == ("failed", None)
    assert loop.board.errors["t1"][0]["agent_id"] == "val-1-1"


# --- the product owner --------------------------------------------------------------------


async def test_iterate_runs_another_iteration_with_the_owners_reason(
    cleanup: list[InMemoryLoop],
) -> None:
    owner = ScriptedOwner(("ITERATE", "the README is missing"), "PROCEED")
    loop = make(cleanup, owner=owner)
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, "scripted PROCEED")
    assert loop.journal.decisions("t1") == [
        DecisionRecord("t1", 1, "ITERATE", "scripted", "the README is missing"),
        DecisionRecord("t1", 2, "PROCEED", "scripted", "scripted PROCEED"),
    ]
    assert owner.asked == [("t1", 1, 0.9, 0.95), ("t1", 2, 0.9, 0.95)]
    assert briefs(loop, "impl-1-2")["feedback"] == [
        "product owner asked for another iteration: the README is missing"
    ]
    assert [e["decision"] for e in events(loop, "decision")] == ["ITERATE", "PROCEED"]
    assert len(loop.launcher.launched) == 8


async def test_abort_ends_the_task_aborted(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup, owner=ScriptedOwner(("ABORT", "out of budget")))
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "aborted", "ABORT", 1, "out of budget")
    assert outcome.exit_code == 1
    assert loop.journal.load_task("t1")[2] == "aborted"
    assert timeline(loop)[-2:] == ["decision 1 ABORT", "finished aborted"]
    assert events(loop, "task:finished") == [
        {"status": "aborted", "outcome": "ABORT", "reason": "out of budget", "iterations": 1}
    ]


async def test_an_owner_answer_outside_the_three_is_an_error(cleanup: list[InMemoryLoop]) -> None:
    from cfn.errors import CfnError

    loop = make(cleanup, owner=ScriptedOwner("MAYBE"))
    with pytest.raises(CfnError, match="product owner returned 'MAYBE'"):
        await loop.orchestrator().start(task())
    assert loop.journal.decisions("t1") == []


async def test_a_product_owner_agent_decides_and_an_unusable_answer_is_iterate(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(
        cleanup,
        {
            "po-1-1": Script(0.8, payload={"decision": "proceed?"}),
            "po-1-2": Script(0.8, payload={"decision": "PROCEED", "reason": "ship it"}),
        },
    )
    outcome = await loop.orchestrator().start(task(decision="agent"))
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, "ship it")
    (first, second) = loop.journal.decisions("t1")
    assert first == DecisionRecord(
        "t1",
        1,
        "ITERATE",
        "po-1-1",
        "product-owner agent gave no valid decision (decision must be PROCEED, ITERATE or "
        "ABORT, got 'proceed?')",
    )
    assert second == DecisionRecord("t1", 2, "PROCEED", "po-1-2", "ship it")
    assert statuses(loop)["po-1-1"] == ("done", 0.8) and statuses(loop)["po-1-2"] == ("done", 0.8)
    assert briefs(loop, "po-1-2")["epic"] == "Build a hello module"


async def test_a_person_decides_through_the_decision_input(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup)
    board = loop.board
    loop.owner = HumanOwner(board)
    orchestrator = loop.orchestrator()
    answered: list[int] = []

    def on_event(task_id: str, kind: str, _data: dict[str, Any]) -> None:
        if kind == "decision:awaiting":
            answered.append(1)
            asyncio.get_running_loop().create_task(
                send_decision(board, task_id, "ABORT", "human:alice", "not now")
            )

    orchestrator.events.listeners.append(on_event)
    outcome = await orchestrator.start(task(decision="human"))
    assert outcome == Outcome("t1", "aborted", "ABORT", 1, "not now")
    assert answered == [1]
    assert loop.journal.decisions("t1") == [
        DecisionRecord("t1", 1, "ABORT", "human:alice", "not now")
    ]
    assert board.decisions["t1"]["decision"] == "ABORT"
    from cfn.errors import CfnError

    with pytest.raises(CfnError, match=r"not waiting for a decision .its last decision: ABORT."):
        await send_decision(board, "t1", "PROCEED")


# --- iterations ---------------------------------------------------------------------------


async def test_running_out_of_iterations_fails_the_task(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup, {"implementer": Script(0.5)})
    outcome = await loop.orchestrator().start(task(max_iterations=3))
    assert outcome == Outcome(
        "t1",
        "failed",
        "MAX_ITERATIONS",
        3,
        "3 iterations used up; last: gate failed: 0.500 vs 0.70 (2/2 reported)",
    )
    assert outcome.exit_code == 1
    assert [e["iteration"] for e in events(loop, "gate")] == [1, 2, 3]
    assert loop.journal.decisions("t1") == []
    assert len(loop.launcher.launched) == 6 and loop.journal.load_task("t1")[2] == "failed"
    cp = loop.journal.load_task("t1")[1]
    assert (cp.phase, cp.iteration, cp.outcome) == (Phase.DONE, 3, "MAX_ITERATIONS")
    # Every iteration keeps its failed gate's figure and is finished with the task.
    assert loop.journal.iterations["t1"] == {
        n: {"gate_mean": 0.5, "finished": True} for n in (1, 2, 3)
    }


# --- PROCEED without a change ---------------------------------------------------------------


async def test_proceed_on_a_build_task_with_no_change_is_turned_into_iterate(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(
        cleanup,
        {"implementer": Script(0.9), "impl-1-2": WROTE},
    )
    outcome = await loop.orchestrator().start(task())
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, POLICY_REASON)
    assert loop.journal.decisions("t1") == [
        DecisionRecord(
            "t1",
            1,
            "ITERATE",
            "policy",
            "PROCEED turned into ITERATE: the epic asks for a change but the workspace shows "
            f"no files added, changed or removed (was: {POLICY_REASON})",
        ),
        DecisionRecord("t1", 2, "PROCEED", "policy", POLICY_REASON),
    ]
    assert briefs(loop, "impl-1-2")["feedback"] == [
        "product owner asked for another iteration: PROCEED turned into ITERATE: the epic asks "
        "for a change but the workspace shows no files added, changed or removed "
        f"(was: {POLICY_REASON})"
    ]


async def test_proceed_without_a_change_stands_when_the_epic_asks_for_none(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup, {"implementer": Script(0.9)})
    outcome = await loop.orchestrator().start(task(epic="Review the hello module", build=False))
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 1, POLICY_REASON)


async def test_the_workspace_is_compared_with_its_state_when_the_task_started(
    cleanup: list[InMemoryLoop],
) -> None:
    """A file that was there before is no change; rewriting it with other text is one."""
    loop = make(cleanup, {"implementer": Script(0.9, writes={"old.py": "old\n"})})
    loop.workspace.write(Path(""), "old.py", "old\n")
    outcome = await loop.orchestrator().start(task(max_iterations=1))
    assert outcome.decision == "MAX_ITERATIONS"
    assert loop.journal.decisions("t1")[0].decision == "ITERATE"
    baseline = [d for _i, k, d in loop.journal.events("t1") if k == "workspace:baseline"]
    assert list(baseline[0]["files"]) == ["old.py"]

    other = make(cleanup, {"implementer": Script(0.9, writes={"old.py": "new\n"})})
    other.workspace.write(Path(""), "old.py", "old\n")
    assert (await other.orchestrator().start(task())).iterations == 1


# --- hung, stalled and slow agents ----------------------------------------------------------


async def test_a_hung_agent_is_killed_when_its_first_beat_never_comes(
    cleanup: list[InMemoryLoop],
) -> None:
    """It uses no CPU: not starting, hung. Killed, recorded failed, counted 0."""
    loop = make(cleanup, {"impl-2-1": Script(fate="hang")})
    orchestrator = loop.orchestrator(heartbeat_interval=0.05, startup_grace=0.3)
    outcome = await orchestrator.start(task(max_iterations=1))
    assert outcome.decision == "MAX_ITERATIONS"
    hung = loop.launcher.agents[("t1", "impl-2-1")]
    assert hung.killed and not hung.running
    assert statuses(loop) == {"impl-1-1": ("done", 0.9), "impl-2-1": ("failed", None)}
    assert reasons(loop)["impl-2-1"] == (
        "payload has no confidence: killed: no heartbeat since it was spawned"
    )
    (error,) = loop.board.errors["t1"]
    assert (error["agent_id"], error["reason"]) == (
        "impl-2-1",
        "killed: no heartbeat since it was spawned",
    )


async def test_a_starting_agent_using_cpu_gets_more_time_a_silent_one_is_killed(
    cleanup: list[InMemoryLoop],
) -> None:
    """On a crowded machine an agent may need several grace periods to reach its first
    beat (the 20 x 5 load run lost every implementer to a fixed 60 s grace): one that
    uses CPU gets another grace period, one that uses none is hung."""
    grace = 0.2
    loop = make(
        cleanup,
        {
            "impl-1-1": Script(0.9, slow_start=4 * grace, writes={"a.py": "a\n"}),
            "impl-2-1": Script(fate="hang"),
        },
    )
    orchestrator = loop.orchestrator(heartbeat_interval=0.05, startup_grace=grace)
    outcome = await orchestrator.start(task(max_iterations=1))
    assert outcome.decision == "MAX_ITERATIONS"
    busy = loop.launcher.agents[("t1", "impl-1-1")]
    assert not busy.killed
    assert statuses(loop) == {"impl-1-1": ("done", 0.9), "impl-2-1": ("failed", None)}
    assert loop.launcher.agents[("t1", "impl-2-1")].killed
    (error,) = loop.board.errors["t1"]
    assert error["agent_id"] == "impl-2-1"
    assert "no heartbeat since it was spawned" in error["reason"]


async def test_an_agent_that_beats_but_never_reports_fails_at_the_deadline(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup, {"impl-2-1": Script(fate="stall")})
    orchestrator = loop.orchestrator(agent_timeout=0.3, collect_slack=0.0)
    outcome = await orchestrator.start(task(max_iterations=1))
    assert outcome.decision == "MAX_ITERATIONS"
    assert statuses(loop)["impl-2-1"] == ("failed", None)
    assert reasons(loop)["impl-2-1"] == "no result before the deadline"
    assert events(loop, "gate") == [
        {"iteration": 1, **verdict("gate", 0.7, 0.45, False, reported=1)}
    ]
    assert "impl-2-1" not in {
        e["agentId"] for e in events(loop, "agent:update") if e["status"] != "running"
    }


# --- resume -----------------------------------------------------------------------------------

KILL_POINTS = [
    ("task:created", None),
    ("loop:progress", "loop3"),
    ("agent:update", "impl-1-1 running"),
    ("agent:update", "impl-2-1 running"),
    ("agent:update", "impl-1-1 done"),
    ("gate", None),
    ("loop:progress", "loop2"),
    ("agent:update", "val-1-1 running"),
    ("agent:update", "val-2-1 done"),
    ("consensus", None),
    ("decision", None),
    ("task:finished", None),
]


async def test_a_stop_that_comes_with_a_completion_is_not_lost() -> None:
    """A cancellation that arrives while the board's change is already set still ends
    the collect (asyncio.wait_for on Python 3.11 returned the result and dropped it,
    and the orchestrator ran on after a kill)."""
    board = InMemoryBoard()
    collect = asyncio.ensure_future(board.collect("t1", ["impl-1-1", "impl-2-1"], 60.0))
    await asyncio.sleep(0.01)  # it waits for a change
    board.complete("t1", "impl-1-1", payload={"confidence": 0.9})
    collect.cancel()  # in the same turn of the event loop
    await asyncio.wait({collect}, timeout=5.0)
    assert collect.cancelled()


@pytest.mark.parametrize(("kind", "detail"), KILL_POINTS, ids=[f"{k}-{d}" for k, d in KILL_POINTS])
async def test_resume_after_a_kill_at_every_step_finishes_the_task_once(
    cleanup: list[InMemoryLoop], kind: str, detail: str | None
) -> None:
    """The orchestrator stops right after an event (its agents run on); a new one resumes:
    no agent runs twice, every completion is on the list once, one decision."""
    loop = make(cleanup, {"implementer": Script(0.9, delay=0.05, writes={"a.py": "a\n"})})
    first = loop.orchestrator()
    run = asyncio.ensure_future(first.start(task()))

    def kill(_task_id: str, k: str, data: dict[str, Any]) -> None:
        if k != kind or run.done():
            return
        if detail is not None:
            said = (
                f"{data.get('agentId')} {data.get('status')}"
                if k == "agent:update"
                else f"loop{data.get('loop')}"
            )
            if said != detail:
                return
        run.cancel()

    first.events.listeners.append(kill)
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.05)  # a write the killed one had in flight lands (as on disk) or not
    outcome = await loop.orchestrator().resume("t1")
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 1, POLICY_REASON)
    assert loop.launcher.launches == Counter(
        {"impl-1-1": 1, "impl-2-1": 1, "val-1-1": 1, "val-2-1": 1}
    )
    assert Counter(loop.board.entries("t1")) == Counter(
        {"impl-1-1:success": 1, "impl-2-1:success": 1, "val-1-1:success": 1, "val-2-1:success": 1}
    )
    assert loop.journal.decisions("t1") == [
        DecisionRecord("t1", 1, "PROCEED", "policy", POLICY_REASON)
    ]
    assert statuses(loop) == {
        "impl-1-1": ("done", 0.9),
        "impl-2-1": ("done", 0.9),
        "val-1-1": ("done", 0.95),
        "val-2-1": ("done", 0.95),
    }
    assert loop.journal.load_task("t1")[2] == "succeeded"
    assert len(events(loop, "task:finished")) == 1
    resumed = events(loop, "task:resumed")
    assert len(resumed) == (0 if kind == "task:finished" else 1)


async def test_a_second_orchestrator_on_a_running_task_is_refused(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup, {"implementer": Script(0.9, delay=0.2, writes={"a.py": "a\n"})})
    first = asyncio.ensure_future(loop.orchestrator().start(task()))
    while not events(loop, "agent:update"):
        await asyncio.sleep(0.01)
    with pytest.raises(TaskLeaseError, match="task t1 is run by another orchestrator"):
        await loop.orchestrator().resume("t1")
    outcome = await first
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 1, POLICY_REASON)
    assert events(loop, "task:resumed") == [] and len(events(loop, "task:finished")) == 1
    assert await loop.orchestrator().resume("t1") == outcome  # free again once it ended


async def test_a_resume_publishes_what_a_kill_kept_from_the_live_stream(
    cleanup: list[InMemoryLoop],
) -> None:
    """Killed between the journal's write and the stream's (journal first), the last
    orchestrator left `task:finished` out of the stream; a resume publishes it."""
    loop = make(cleanup)
    outcome = await loop.orchestrator().start(task())
    stream = loop.board.stream["t1"]
    lost = stream.pop()
    assert lost[1] == "task:finished"
    assert await loop.orchestrator().resume("t1") == outcome
    assert loop.board.stream["t1"][-1] == lost
    assert [k for _i, k, _d in loop.board.stream["t1"]].count("task:finished") == 1
    # With the whole stream gone (Redis lost it), everything comes back but the
    # workspace's file hashes, which were never published.
    published = list(loop.board.stream["t1"])
    loop.board.stream["t1"].clear()
    await loop.orchestrator().resume("t1")
    assert loop.board.stream["t1"] == published


async def test_resume_reattaches_agents_still_running(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup, {"implementer": Script(0.9, delay=0.3, writes={"a.py": "a\n"})})
    first = loop.orchestrator()
    run = asyncio.ensure_future(first.start(task()))
    first.events.listeners.append(
        lambda _t, k, d: (
            run.cancel() if k == "agent:update" and d["agentId"] == "impl-2-1" else None
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.05)
    outcome = await loop.orchestrator().resume("t1")
    assert outcome.status == "succeeded"
    assert loop.launcher.reattached == ["impl-1-1", "impl-2-1"]
    assert loop.launcher.launches["impl-1-1"] == 1


async def test_resume_at_the_decision_reads_a_recorded_decision_back(
    cleanup: list[InMemoryLoop],
) -> None:
    """Killed after recording ITERATE, before saving the checkpoint: the owner is not
    asked again for that iteration, and the loop goes on from it."""
    owner = ScriptedOwner("PROCEED")
    loop = make(cleanup, owner=owner)
    options = task()
    cp = Checkpoint(
        iteration=1,
        phase=Phase.DECISION,
        gate={"score": 0.9, "threshold": 0.7},
        consensus={"score": 0.95, "threshold": 0.8},
    )
    loop.journal.create_task(options, Checkpoint())
    loop.journal.save_checkpoint("t1", cp, "running")
    loop.journal.record_decision(DecisionRecord("t1", 1, "ITERATE", "human:bob", "again"))
    outcome = await loop.orchestrator().resume("t1")
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 2, "scripted PROCEED")
    assert owner.asked == [("t1", 2, 0.9, 0.95)]
    assert [(d.iteration, d.decision, d.decided_by) for d in loop.journal.decisions("t1")] == [
        (1, "ITERATE", "human:bob"),
        (2, "PROCEED", "scripted"),
    ]
    assert timeline(loop)[:3] == ["task:resumed", "decision 1 ITERATE", "loop3"]


async def test_resume_at_loop2_runs_only_the_validators(cleanup: list[InMemoryLoop]) -> None:
    loop = make(cleanup)
    loop.journal.create_task(task(), Checkpoint())
    deliverables = [{"agent_id": "impl-1-1", "summary": "built"}]
    cp = Checkpoint(phase=Phase.LOOP2, gate={"score": 0.9}, deliverables=deliverables)
    loop.journal.save_checkpoint("t1", cp, "running")
    loop.workspace.write(Path(""), "hello.py", "changed after the baseline\n")
    outcome = await loop.orchestrator().resume("t1")
    assert outcome.status == "succeeded"
    assert [p.agent_id for p in loop.launcher.launched] == ["val-1-1", "val-2-1"]
    assert briefs(loop, "val-1-1")["deliverables"] == deliverables


async def test_resume_of_a_task_killed_between_its_outcome_and_its_status(
    cleanup: list[InMemoryLoop],
) -> None:
    loop = make(cleanup)
    loop.journal.create_task(task(), Checkpoint())
    cp = Checkpoint(phase=Phase.DONE, outcome="PROCEED", reason="done before")
    loop.journal.save_checkpoint("t1", cp, "running")
    outcome = await loop.orchestrator().resume("t1")
    assert outcome == Outcome("t1", "succeeded", "PROCEED", 1, "done before")
    assert timeline(loop) == ["task:resumed", "finished succeeded"]
    assert loop.launcher.launched == []
    # Once finished, resume only reports the outcome.
    again = await loop.orchestrator().resume("t1")
    assert again == outcome and timeline(loop) == ["task:resumed", "finished succeeded"]


async def test_a_task_cannot_be_started_twice(cleanup: list[InMemoryLoop]) -> None:
    from cfn.errors import InvalidInputError

    loop = make(cleanup)
    await loop.orchestrator().start(task())
    with pytest.raises(InvalidInputError, match="exists already; `cfn resume t1` continues it"):
        await loop.orchestrator().start(task())


# --- the team, as the portal uses it ------------------------------------------------------------


async def test_an_agent_joins_a_running_task_and_its_end_is_recorded() -> None:
    journal, board = InMemoryJournal(), InMemoryBoard()
    bus = InMemoryEventBus(journal)
    launcher = InMemoryLauncher(board, {"val-9-1": Script(0.7)}, workspace=InMemoryWorkspace())
    team = Team(journal, bus, board)
    journal.create_task(task(), Checkpoint())
    journal.save_checkpoint("t1", Checkpoint(feedback=["earlier"]), "running")
    try:
        _options, plan = await team.plan_join("t1", "val-9-1", "validator")
        assert plan == AgentPlan(
            "t1",
            "val-9-1",
            "validator",
            2,
            1,
            {
                "epic": "Build a hello module",
                "mode": "mvp",
                "complexity": None,
                "cost_sensitive": False,
                "feedback": ["earlier"],
                "deliverables": [],
            },
        )
        row, handle = await team.launch(launcher, plan, by="alice")
        assert row == AgentRecord(
            "t1",
            "val-9-1",
            "validator",
            2,
            1,
            "validator",
            "memory",
            "scripted",
            "running",
            handle.pid,
        )
        ended = await team.follow(row, handle)
        assert ended is not None and (ended.status, ended.confidence) == ("done", 0.7)
        assert [(k, p["status"]) for _t, k, p in bus.emitted] == [
            ("agent:update", "running"),
            ("agent:update", "done"),
        ]
        assert bus.emitted[0][2]["by"] == "alice"
        from cfn.errors import ConflictError

        with pytest.raises(ConflictError, match=r"has an agent 'val-9-1' already .done."):
            await team.plan_join("t1", "val-9-1", "validator")
    finally:
        await launcher.close()


async def test_stopping_an_agent_records_it_killed_and_its_end_stays_so() -> None:
    journal, board = InMemoryJournal(), InMemoryBoard()
    bus = InMemoryEventBus(journal)
    launcher = InMemoryLauncher(board, {"impl-7-1": Script(fate="stall")})
    team = Team(journal, bus, board, follow_wait=0.1)
    journal.create_task(task(), Checkpoint())
    try:
        _options, plan = await team.plan_join("t1", "impl-7-1", "implementer")
        row, handle = await team.launch(launcher, plan)
        follower = asyncio.ensure_future(team.follow(row, handle))
        killed, process = await team.stop(row, "stopped by alice", launcher)
        assert process == "terminated" and killed.status == "killed"
        assert board.stops[("t1", "impl-7-1")] == ["stopped by alice"]
        assert await follower is None
        assert journal.agents("t1")[0].status == "killed"
        assert await launcher.stop("t1", "impl-7-1") == "already ended"
        assert await launcher.stop("t1", "nobody") == "not found here"
    finally:
        await launcher.close()


async def test_agents_cannot_join_an_ended_task(cleanup: list[InMemoryLoop]) -> None:
    from cfn.errors import ConflictError

    loop = make(cleanup)
    await loop.orchestrator().start(task())
    team = Team(loop.journal, InMemoryEventBus(), loop.board)
    with pytest.raises(ConflictError, match=r"task 't1' has ended .succeeded.; agents cannot join"):
        await team.plan_join("t1", "impl-9-1", "implementer")


def test_the_in_memory_loop_runs_from_plain_python() -> None:
    """The docs/api.md example, as written there."""

    async def main() -> Outcome:
        loop = InMemoryLoop(
            {"implementer": Script(0.9, writes={"hello.py": "print(1)"}), "validator": Script(0.95)}
        )
        try:
            return await loop.orchestrator().start(TaskOptions("t1", "Build hello", mode="mvp"))
        finally:
            await loop.close()

    assert asyncio.run(main()).status == "succeeded"


def test_orchestrator_needs_no_redis_manager() -> None:
    import inspect

    params = inspect.signature(Orchestrator).parameters
    assert "redis" not in params and list(params)[:4] == [
        "board",
        "journal",
        "launcher",
        "product_owner",
    ]


async def test_transcript_steps_are_relayed_as_the_agent_wrote_them_under_its_own_id() -> None:
    """Team.relay_steps: each step of an agent's own stream becomes one agent:step event,
    named by the stream it was read from; the steps left when it stops are relayed too."""
    journal, board = InMemoryJournal(), InMemoryBoard()
    bus = InMemoryEventBus(journal)
    team = Team(journal, bus, board)
    stop = asyncio.Event()
    relay = asyncio.create_task(team.relay_steps("t1", "impl-1-1", stop, wait=5.0))
    board.step("t1", "impl-1-1", {"kind": "tool_use", "tool": "Write", "args": "{}", "ts": "1.5"})
    board.step("t1", "impl-2-1", {"kind": "text", "text": "another agent's step"})
    # A step claiming another agent is still this agent's (the stream is this agent's).
    board.step("t1", "impl-1-1", {"kind": "text", "text": "hi", "agentId": "impl-2-1"})
    await asyncio.sleep(0.05)
    stop.set()
    board.step("t1", "impl-1-1", {"kind": "tool_result", "text": "ok", "isError": "1"})
    await asyncio.wait_for(relay, 5.0)
    steps = [p for t, k, p in bus.emitted if k == "agent:step"]
    assert [s["agentId"] for s in steps] == ["impl-1-1"] * len(steps)
    assert [s["kind"] for s in steps][:2] == ["tool_use", "text"]
    assert steps[0]["tool"] == "Write" and steps[0]["ts"] == 1.5
    assert all("another agent's step" not in s.get("text", "") for s in steps)
    assert steps[-1]["kind"] == "tool_result" and steps[-1]["isError"] is True  # the drain
