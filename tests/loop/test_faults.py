"""Agents that crash, hang, or report nonsense: recorded as failed, never as
success; the loop goes on and the gate decides.

Real processes throughout (``python -m cfn orchestrate``, the agent
processes, redis-server, SQLite); the agents' model is the local LLM
stand-in on the OpenAI wire format, scripted per agent name. Two
implementers: Coder (``impl-1-N``) is the faulty one, System Architect
(``impl-2-N``) reports a good 0.9. A failed agent counts as 0 in the team's
mean, so the gate sees 0.45 against 0.70 and fails, where leaving the
failure out (0.9) would have passed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select

from cfn.store.repository import T_AGENTS
from tests.loop.test_resume import HEARTBEAT, Rig, running_rig
from tests.support.servers import RedisServer


@pytest.fixture
def rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Rig]:
    with running_rig(tmp_path, redis_server) as rig:
        yield rig


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Block until process ``pid`` has exited (a pidfd; returns at once if it is gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still runs after {timeout} s"
    finally:
        os.close(fd)


def assert_gate_decided(rig: Rig, events_gate: dict[str, object]) -> None:
    assert events_gate["reported"] == 2 and events_gate["failed"] == 1
    assert events_gate["score"] == pytest.approx(0.45) and events_gate["passed"] is False


def assert_failed_in_sql(rig: Rig, agent: str, reason_part: str) -> None:
    with rig.store() as store, store.read() as conn:
        query = sql_select(T_AGENTS).where(T_AGENTS.c.task_id == "T")
        rows = {r.id: r for r in conn.execute(query)}
        task = store.get_task("T")
    row = rows[agent]
    assert row.status == "failed" and row.confidence is None
    assert row.reason and reason_part in row.reason, row.reason
    healthy = rows[agent.replace("impl-1-", "impl-2-")]
    assert healthy.status == "done" and healthy.confidence == 0.9
    assert task.status == "failed"
    # Never a success on the wire either.
    entries = rig.client.lrange("coord:T:complete", 0, -1)
    assert f"{agent}:success" not in entries and entries.count(f"{agent}:failed") == 1


def test_crashed_agent_is_recorded_failed(rig: Rig) -> None:
    rig.model.hold("Coder")  # Coder's model reply is delayed: it is mid-call when killed
    proc = rig.orchestrate("T", "--max-iterations", "1", validators=1)
    events = rig.events("T", proc)
    pid = events.wait("agent:update", agentId="impl-1-1", status="running")["pid"]
    rig.model.wait_arrivals({"Coder"})
    os.kill(pid, signal.SIGKILL)
    failed = events.wait("agent:update", agentId="impl-1-1", status="failed")
    assert failed["confidence"] is None
    assert "agent process ended without a result" in failed["reason"]
    assert_gate_decided(rig, events.wait("gate"))
    finished = events.wait("task:finished")
    assert finished["status"] == "failed" and finished["outcome"] == "MAX_ITERATIONS"
    assert rig.finish(proc) == 1
    assert_failed_in_sql(rig, "impl-1-1", "ended without a result")


def test_hung_agent_is_killed_when_its_heartbeat_lapses(rig: Rig) -> None:
    rig.model.hold("Coder")  # it has started, heartbeats, and waits on its model
    proc = rig.orchestrate("T", "--max-iterations", "1", validators=1)
    events = rig.events("T", proc)
    pid = events.wait("agent:update", agentId="impl-1-1", status="running")["pid"]
    rig.model.wait_arrivals({"Coder"})
    os.kill(pid, signal.SIGSTOP)  # hung: alive, silent
    stopped_at = time.monotonic()
    try:
        failed = events.wait("agent:update", agentId="impl-1-1", status="failed")
        noticed = time.monotonic() - stopped_at
        # The orchestrator killed it (SIGKILL ends a stopped process too).
        wait_gone(pid)
    finally:
        if _alive(pid):  # the test failed: do not leave a stopped process behind
            # An exited agent stays visible (a zombie) until its shim reaps it, which may
            # happen between the check and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    lapse = r"killed: heartbeat lapsed \(([\d.]+) s since its last beat\)"
    match = re.search(lapse, failed["reason"])
    assert match, failed["reason"]
    # The beat key lives 2x the interval; Redis expires it within ~0.1 s of that.
    assert float(match.group(1)) <= 2 * HEARTBEAT + 0.5
    assert noticed <= 2 * HEARTBEAT + 1.0  # slack for a busy machine
    assert_gate_decided(rig, events.wait("gate"))
    assert rig.finish(proc) == 1
    assert_failed_in_sql(rig, "impl-1-1", "heartbeat lapsed")
    record = json.loads((rig.agent_dir("T", "impl-1-1") / "exit.json").read_text())
    assert record.get("killed") or record.get("stop_requested"), record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_garbage_and_out_of_range_confidences_are_failed_reports(rig: Rig) -> None:
    """Three iterations of one implementer; each time its model ends with something
    unusable. Each is a failed report (never a default confidence), the gate fails
    on it, and the loop goes on to the next iteration with the failure as feedback."""
    rig.model.finals["Coder"] = [
        "I am quite sure it works. Confidence: very high!",
        'Done.\n{"confidence": 7, "summary": "perfect"}',
        '{"confidence": NaN, "summary": "?"}',
    ]
    proc = rig.orchestrate("T", "--max-iterations", "3", implementers=1, validators=1)
    events = rig.events("T", proc)
    expected = {
        "impl-1-1": "no JSON line with a confidence",
        "impl-1-2": "confidence 7 is outside [0, 1]",
        "impl-1-3": "confidence nan is outside [0, 1]",
    }
    for iteration, (agent, why) in enumerate(expected.items(), start=1):
        failed = events.wait("agent:update", agentId=agent, status="failed")
        assert failed["confidence"] is None and why in failed["reason"], failed
        gate = events.wait("gate", iteration=iteration)
        assert (gate["reported"], gate["failed"], gate["score"], gate["passed"]) == (1, 1, 0, False)
    finished = events.wait("task:finished")
    assert finished["outcome"] == "MAX_ITERATIONS" and finished["iterations"] == 3
    assert rig.finish(proc) == 1
    with rig.store() as store, store.read() as conn:
        query = sql_select(T_AGENTS).where(T_AGENTS.c.task_id == "T")
        rows = {r.id: r for r in conn.execute(query)}
        assert store.get_task("T").status == "failed"
    assert set(rows) == set(expected)
    for agent, why in expected.items():
        assert rows[agent].status == "failed" and rows[agent].confidence is None
        assert why in (rows[agent].reason or "")
    entries = rig.client.lrange("coord:T:complete", 0, -1)
    assert sorted(entries) == [f"{a}:failed" for a in expected]
    # The agent said what went wrong, and the next iteration's implementer heard it.
    context = (rig.agent_dir("T", "impl-1-2") / "context.json").read_text()
    assert "impl-1-1 failed" in context and "no JSON line" in context
    # The gate failed every time, so no validator ever ran.
    assert "consensus" not in events.kinds()
