"""The CFN Loop end to end on real parts: redis-server, SQLite, agent processes,
the offline provider (no key, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cfn.loop.app import run_loop
from cfn.loop.journal import SqlJournal
from cfn.loop.state import Phase
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.loop.conftest import options
from tests.support.servers import RedisServer


async def test_offline_loop_proceeds(
    tmp_path: Path, loop_settings: Settings, redis_server: RedisServer
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    outcome = await run_loop(
        loop_settings, options=options(tmp_path), listener=lambda _t, k, d: seen.append((k, d))
    )
    assert outcome.status == "succeeded" and outcome.decision == "PROCEED"
    assert outcome.exit_code == 0 and outcome.iterations == 1
    kinds = [k for k, _ in seen]
    assert kinds[0] == "task:created" and kinds[-1] == "task:finished"
    assert kinds.index("gate") < kinds.index("consensus") < kinds.index("decision")
    agent_updates = {d["agentId"] for k, d in seen if k == "agent:update"}
    assert agent_updates == {"impl-1-1", "impl-2-1", "val-1-1", "val-2-1"}
    # Redis: the seed's keys, the decision, the signals, the event stream.
    client = redis_server.client()
    assert sorted(client.lrange("coord:t1:complete", 0, -1)) == [
        "impl-1-1:success",
        "impl-2-1:success",
        "val-1-1:success",
        "val-2-1:success",
    ]
    assert json.loads(client.get("coord:t1:decision") or "{}")["decision"] == "PROCEED"
    assert json.loads(client.rpop("coord:t1:loop3:complete") or "{}")["gate"]["passed"]
    assert "deliverables" in json.loads(client.rpop("coord:t1:loop2:start") or "{}")
    # The stream holds the loop's events and, from the LLM gateway, one llm:call per call.
    streamed = [fields["kind"] for _id, fields in client.xrange("events:t1")]
    # (The same events; agents' steps are relayed concurrently, so not in one order.)
    assert sorted(k for k in streamed if k != "llm:call") == sorted(kinds)
    assert streamed.count("llm:call") >= 4  # every agent called its model at least once
    assert json.loads(client.get("context:t1:deliverables") or "[]")
    # SQL: task, agents, one decision, iteration figures, the event log.
    with Store.open(loop_settings) as store:
        assert store.get_task("t1").status == "succeeded"
        agents = store.list_agents("t1")
        assert {a.agent_id: a.status for a in agents} == {
            "impl-1-1": "done",
            "impl-2-1": "done",
            "val-1-1": "done",
            "val-2-1": "done",
        }
        assert all(a.provider == "offline" and a.confidence is not None for a in agents)
        (decision,) = store.decisions("t1")
        assert decision.decision == "PROCEED" and decision.decided_by == "policy"
        (iteration,) = store.iterations("t1")
        assert iteration.gate_mean is not None and iteration.consensus_mean is not None
        logged = [e.kind for e in store.events("t1") if e.kind != "llm:call"]
        assert len(logged) == len(seen) + 1  # + the workspace baseline
    # The implementers' work is in the workspace (offline notes say no model wrote them).
    notes = list((tmp_path / "ws" / "t1" / "offline").iterdir())
    assert len(notes) == 2 and all("no language model" in n.read_text().lower() for n in notes)


async def test_failed_gate_iterates_with_feedback_then_max_iterations(
    tmp_path: Path, loop_settings: Settings, redis_server: RedisServer
) -> None:
    opts = options(
        tmp_path,
        epic="Build it. offline-confidence: 0.5",
        implementers=1,
        validators=1,
        max_iterations=2,
    )
    outcome = await run_loop(loop_settings, options=opts)
    assert outcome.status == "failed" and outcome.decision == "MAX_ITERATIONS"
    assert outcome.exit_code == 1 and outcome.iterations == 2
    assert "gate failed" in outcome.reason
    # Every Loop 3 run is an iteration, with its own agent ids.
    client = redis_server.client()
    assert sorted(client.lrange("coord:t1:complete", 0, -1)) == [
        "impl-1-1:success",
        "impl-1-2:success",
    ]
    ctx = json.loads(
        (tmp_path / ".cfn" / "tasks" / "t1" / "agents" / "impl-1-2" / "context.json").read_text()
    )
    assert any("gate failed" in f for f in ctx["cfn"]["feedback"])
    with Store.open(loop_settings) as store:
        assert store.decisions("t1") == []
        assert store.get_task("t1").status == "failed"


async def test_proceed_without_change_becomes_iterate(
    tmp_path: Path, loop_settings: Settings
) -> None:
    """Validators only read; with no implementer writing (a read-only epic would not
    need it), a build epic's PROCEED turns into ITERATE."""
    from cfn.loop import workspace

    assert workspace.is_build_task("Build a hello module")
    assert not workspace.is_build_task("Review the architecture and report risks")
    opts = options(tmp_path, implementers=1, validators=1, max_iterations=1)
    # An implementer whose work is undone before the decision: remove the notes as
    # soon as Loop 2 starts, so the workspace equals its baseline at decision time.
    ws = Path(opts.workspace)

    def listener(_task: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "consensus":
            for note in (ws / "offline").iterdir():
                note.unlink()

    outcome = await run_loop(loop_settings, options=opts, listener=listener)
    assert outcome.status == "failed" and outcome.decision == "MAX_ITERATIONS"
    with Store.open(loop_settings) as store:
        (decision,) = store.decisions("t1")
    assert decision.decision == "ITERATE"
    assert "PROCEED turned into ITERATE" in (decision.reason or "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "turbo"}, "unknown mode"),
        ({"task_id": "bad id"}, "invalid task id"),
        ({"epic": "  "}, "epic must be"),
        ({"decision": "coin"}, "decision must be"),
        ({"complexity": "extreme"}, "complexity must be"),
        ({"implementers": 0}, "implementers must be"),
        ({"max_iterations": 1000}, "max iterations must be"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    from cfn.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=message):
        options(tmp_path, **kwargs)


async def test_resume_finishes_a_task_killed_between_its_outcome_and_its_status(
    tmp_path: Path, loop_settings: Settings, redis_server: RedisServer
) -> None:
    """The orchestrator saves the outcome (checkpoint at DONE, still running), then
    the final status. A SIGKILL between the two left a task that `cfn resume`
    reported as "running" with exit 1 for ever; resume now does the last step."""
    done = await run_loop(loop_settings, options=options(tmp_path))
    assert done.status == "succeeded"
    with Store.open(loop_settings) as store:
        journal = SqlJournal(store)
        _options, checkpoint, _status = journal.load_task("t1")
        assert checkpoint.phase is Phase.DONE
        journal.save_checkpoint("t1", checkpoint, "running")  # the state the kill leaves
    seen: list[str] = []
    outcome = await run_loop(
        loop_settings, resume_task="t1", listener=lambda _t, k, _d: seen.append(k)
    )
    assert (outcome.status, outcome.exit_code, outcome.decision) == ("succeeded", 0, "PROCEED")
    assert seen == ["task:resumed", "task:finished"]  # no agent ran again, no new decision
    with Store.open(loop_settings) as store:
        assert store.get_task("t1").status == "succeeded"
        assert len(store.decisions("t1")) == 1
    # A task that really ended is only reported, not finished twice.
    again: list[str] = []
    repeat = await run_loop(
        loop_settings, resume_task="t1", listener=lambda _t, k, _d: again.append(k)
    )
    assert repeat.status == "succeeded" and again == []


async def test_a_completion_list_overwritten_by_a_string_fails_the_task_once(
    tmp_path: Path, loop_settings: Settings, redis_server: RedisServer
) -> None:
    """An agent may SET the task's completion list (its ACL lets it push there): the
    orchestrator records one reason and ends the task, where it crashed (WRONGTYPE)
    and left the task running for good, every resume crashing the same way."""
    client = redis_server.client()

    def vandal(_task: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "loop:progress" and data["loop"] == 3 and data["progress"] == 0.0:
            client.set("coord:t1:complete", "garbage")

    opts = options(tmp_path, implementers=1, validators=1)
    outcome = await run_loop(loop_settings, options=opts, listener=vandal)
    assert outcome.status == "failed" and outcome.decision is None
    assert "coord:t1:complete is no longer a list" in outcome.reason
    with Store.open(loop_settings) as store:
        assert store.get_task("t1").status == "failed"
        finished = [e for e in store.events("t1") if e.kind == "task:finished"]
        assert len(finished) == 1 and store.decisions("t1") == []
    again = await run_loop(loop_settings, resume_task="t1")  # the same answer
    assert (again.status, again.reason) == (outcome.status, outcome.reason)
