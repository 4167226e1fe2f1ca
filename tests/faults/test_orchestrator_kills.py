"""The orchestrator SIGKILLed at seeded random points, then ``cfn resume``: every run
finishes, with no duplicated decision (or approval) row and no agent's work done twice.

Each run is its own task on real processes (tests/loop/test_resume.py's rig:
``python -m cfn orchestrate``, agent processes, redis-server, SQLite, the
local LLM stand-in). The kill point is drawn from a seeded generator: one of
the task's events (each in turn, in a random order; the orchestrator is
killed the moment the test reads it from ``events:{task}``) plus a random
delay of up to a second, so kills land between events too. The seed and
every run's kill point are printed and named in any failure
(``CFN_FAULT_SEED`` replays a sequence).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cfn.store.repository import T_APPROVALS, T_DECISIONS
from tests.loop.test_resume import Rig, running_rig, sigkill
from tests.support.servers import RedisServer

SEED = int(os.environ.get("CFN_FAULT_SEED", "9091"))
#: Events every run writes, in order; the kill follows one of them.
KILL_AFTER: list[tuple[str, dict[str, object]]] = [
    ("task:created", {}),
    ("agent:update", {"agentId": "impl-1-1", "status": "running"}),
    ("agent:update", {"agentId": "impl-1-1", "status": "done"}),
    ("gate", {}),
    ("agent:update", {"agentId": "val-1-1", "status": "running"}),
    ("consensus", {}),
    ("decision", {}),
]
TEAM = ["impl-1-1", "val-1-1"]


def one_run(
    tmp_path: Path,
    redis_server: RedisServer,
    n: int,
    rng: random.Random,
    after: tuple[str, dict[str, object]],
) -> str:
    """Run task ``K{n}``, SIGKILL its orchestrator at a random point, resume it, check it."""
    kind, match = after
    delay = rng.uniform(0.0, 1.0)
    decision = rng.choice(["policy", "agent"])
    point = f"run {n} (seed {SEED}): kill {delay:.2f} s after {kind} {match}, decision {decision}"
    task = f"K{n}"
    place = tmp_path / task
    place.mkdir()
    with running_rig(place, redis_server) as rig:
        # A busy 2-core machine starts agents slowly (the orchestrator's start-up grace
        # is the larger of 60 s and two beats). Hung agents are test_faults.py's business.
        rig.env["AGENT_TIMEOUT"] = "600"
        rig.env["CFN_AGENT_HEARTBEAT_INTERVAL"] = "100"
        rig.env["CFN_PROVIDER_TIMEOUT"] = "300"
        proc = rig.orchestrate(task, "--decision", decision, implementers=1, validators=1)
        events = rig.events(task, proc)
        try:
            events.wait(kind, timeout=600, **match)
        except AssertionError:
            if proc.poll() != 0:  # not simply finished before the kill point
                raise AssertionError(f"{point}: {rig.output(proc)}") from None
        time.sleep(delay)
        killed = sigkill(proc)
        resumed = rig.start("resume", task)
        code = rig.finish(resumed, timeout=900)
        assert code == 0, f"{point}: resume exited {code}: {rig.output(resumed)}"
        check(rig, task, decision, point)
    return f"{point}: {'killed' if killed else 'had already finished'}, resumed"


def check(rig: Rig, task: str, decision: str, point: str) -> None:
    team = TEAM + (["po-1-1"] if decision == "agent" else [])
    entries = rig.client.lrange(f"coord:{task}:complete", 0, -1)
    assert sorted(entries) == sorted(f"{a}:success" for a in team), f"{point}: {entries}"
    # Each agent's work was done once: the model heard one run of each agent
    # (implementer: write_file call + final answer; validator and owner: one answer).
    expected_requests = 2 + 1 + (1 if decision == "agent" else 0)
    assert len(rig.llm.requests) == expected_requests, f"{point}: {len(rig.llm.requests)} requests"
    with rig.store() as store:
        assert store.get_task(task).status == "succeeded", point
        agents = store.list_agents(task)
        assert {a.agent_id: a.status for a in agents} == dict.fromkeys(team, "done")
        with store.read() as conn:
            decisions = conn.execute(
                select(T_DECISIONS.c.iteration, T_DECISIONS.c.decision).where(
                    T_DECISIONS.c.task_id == task
                )
            ).all()
            approvals = conn.execute(
                select(T_APPROVALS.c.agent_id, func.count()).group_by(
                    T_APPROVALS.c.skill_id, T_APPROVALS.c.agent_id
                )
            ).all()
    assert [tuple(row) for row in decisions] == [(1, "PROCEED")], f"{point}: {decisions}"
    # The loop records no skill approvals; none may appear, let alone twice.
    assert approvals == [], f"{point}: {approvals}"


def run_many(tmp_path: Path, redis_server: RedisServer, runs: int) -> None:
    rng = random.Random(SEED)
    # Every event in turn, in a seeded random order (so 3 runs hit 3 different ones).
    points = [p for _ in range(runs // len(KILL_AFTER) + 1) for p in rng.sample(KILL_AFTER, 7)]
    started = time.monotonic()
    done = [one_run(tmp_path, redis_server, n, rng, points[n - 1]) for n in range(1, runs + 1)]
    print("\n".join(done))
    print(
        f"{runs} runs SIGKILLed and resumed, all succeeded, wall {time.monotonic() - started:.1f} s"
    )


def test_sigkill_at_random_points_then_resume(tmp_path: Path, redis_server: RedisServer) -> None:
    run_many(tmp_path, redis_server, 3)


@pytest.mark.long
def test_twenty_sigkills_at_random_points_then_resume(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    run_many(tmp_path, redis_server, 20)
