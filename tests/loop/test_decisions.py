"""The product owner's decision, as real processes: ``cfn orchestrate
--decision human`` waiting for ``cfn decide``, a product-owner agent, and
``cfn orchestrate`` refusing bad input before writing anything.

The human-decision tasks run on the offline provider (labelled as such; no
model is called, the epic pins its confidence); the product-owner agent
talks to the local LLM stand-in on the OpenAI wire format.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.loop.launcher import REAP_WAIT
from tests.loop.test_faults import wait_gone
from tests.loop.test_resume import CFN, Rig, running_rig
from tests.support.servers import RedisServer

OFFLINE_EPIC = "Build a hello module. offline-confidence: 0.9"


@pytest.fixture
def rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Rig]:
    with running_rig(tmp_path, redis_server) as rig:
        yield rig


def error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The command's one-line ``[ERROR]`` message (and nothing else on stderr)."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("[ERROR] "), run.stderr
    return lines[0]


def command_calls(rig: Rig) -> int:
    """Commands Redis has served, not counting the ones this count itself uses."""
    stats = rig.client.info("commandstats")
    return sum(
        int(v["calls"])
        for name, v in stats.items()
        if name not in ("cmdstat_info", "cmdstat_client|list")
    )


def test_human_decisions_proceed_and_abort(rig: Rig) -> None:
    team: dict[str, Any] = {
        "epic": OFFLINE_EPIC,
        "implementers": 1,
        "validators": 1,
        "provider": "offline",
    }
    first = rig.orchestrate("T1", "--decision", "human", **team)
    second = rig.orchestrate("T2", "--decision", "human", **team)

    # While they run: a task nobody waits on, and a word that is no decision.
    nobody = rig.cfn("decide", "NOPE", "PROCEED")
    assert nobody.returncode == 1
    assert "task 'NOPE' is not waiting for a decision" in error_line(nobody)
    bad = rig.cfn("decide", "T1", "MAYBE")
    assert bad.returncode == 2 and "PROCEED, ITERATE or ABORT" in error_line(bad)

    events1, events2 = rig.events("T1", first), rig.events("T2", second)
    assert events1.wait("decision:awaiting")["iteration"] == 1
    assert events2.wait("decision:awaiting")["iteration"] == 1
    # Nothing was sent by the refused commands.
    assert rig.client.keys("*NOPE*") == []
    assert rig.client.llen("coord:T1:decision:input") == 0

    # Waiting is a blocked BRPOP, not polling: both orchestrators sit in one,
    # and, once their agents have exited, Redis serves nothing while they wait.
    for task in ("T1", "T2"):
        for agent in ("impl-1-1", "val-1-1"):
            wait_gone(rig.pid_of(task, agent))
    # ... and the orchestrators have deleted the agents' Redis ACL users (done
    # after each agent's process ended: the last commands before the silence).
    # A user whose agent's end the orchestrator no longer watches goes in the background
    # once the process is reaped, at the latest REAP_WAIT after it stopped watching.
    deadline = time.monotonic() + REAP_WAIT + 30
    while any(user.startswith("cfn:") for user in rig.client.acl_users()):
        assert time.monotonic() < deadline, rig.client.acl_users()
        time.sleep(0.05)
    blocked = [c for c in rig.client.client_list() if c["cmd"] == "brpop" and "b" in c["flags"]]
    assert len(blocked) == 2, blocked
    # Observing silence (there is no event to wait for): a full second in which Redis
    # serves no command. A write already under way (the LLM gateway records its calls
    # off the request path) may land in the first windows; a poller never goes quiet.
    quiet = []
    for _ in range(5):
        calls = command_calls(rig)
        time.sleep(1.0)
        quiet.append(command_calls(rig) - calls)
        if quiet[-1] == 0:
            break
    assert quiet[-1] == 0, quiet
    assert first.poll() is None and second.poll() is None

    go = rig.cfn("decide", "T1", "proceed")
    assert go.returncode == 0 and "PROCEED sent to T1 (iteration 1)" in go.stderr
    stop = rig.cfn("decide", "T2", "ABORT", "--reason", "wrong direction")
    assert stop.returncode == 0, stop.stderr
    assert rig.finish(first) == 0, rig.output(first)
    assert rig.finish(second) == 1, rig.output(second)
    assert "T2: aborted" in rig.output(second)

    with rig.store() as store:
        assert store.get_task("T1").status == "succeeded"
        assert store.get_task("T2").status == "aborted"
        (d1,) = store.decisions("T1")
        (d2,) = store.decisions("T2")
    assert (d1.decision, d1.decided_by) == ("PROCEED", "human:cli")
    assert (d2.decision, d2.decided_by, d2.reason) == ("ABORT", "human:cli", "wrong direction")
    assert json.loads(rig.client.get("coord:T2:decision") or "{}")["decision"] == "ABORT"

    # Decided already: refused, the recorded decision named, nothing sent.
    before = set(rig.client.keys("*"))
    again = rig.cfn("decide", "T1", "ABORT")
    assert again.returncode == 1
    assert "not waiting for a decision (its last decision: PROCEED)" in error_line(again)
    # no key made (one with a TTL, a heartbeat say, may expire meanwhile)
    assert rig.client.llen("coord:T1:decision:input") == 0
    assert set(rig.client.keys("*")) <= before
    with rig.store() as store:
        assert len(store.decisions("T1")) == 1 and store.get_task("T1").status == "succeeded"


def test_product_owner_agent_unusable_answer_becomes_iterate(rig: Rig) -> None:
    """A product-owner agent (through the LLM stand-in) answers PROCEED in a report
    that is unusable (confidence 7): the decision is ITERATE, never PROCEED."""
    rig.model.finals["Product Owner"] = [
        '{"decision": "PROCEED", "reason": "ship it", "confidence": 7}',
    ]
    proc = rig.orchestrate(
        "T", "--decision", "agent", "--max-iterations", "1", implementers=1, validators=1
    )
    events = rig.events("T", proc)
    decision = events.wait("decision", iteration=1)
    assert decision["decision"] == "ITERATE" and decision["by"] == "po-1-1"
    assert rig.finish(proc) == 1, rig.output(proc)
    assert "T: failed" in rig.output(proc)

    with rig.store() as store:
        (row,) = store.decisions("T")
        agents = {a.agent_id: a for a in store.list_agents("T")}
        assert store.get_task("T").status == "failed"
    assert (row.iteration, row.decision, row.decided_by) == (1, "ITERATE", "po-1-1")
    assert "product-owner agent failed" in (row.reason or "")
    assert "confidence 7 is outside [0, 1]" in (row.reason or "")
    assert agents["po-1-1"].status == "failed" and agents["po-1-1"].role == "product-owner"
    assert rig.model.calls["Product Owner"] == 1


def test_orchestrate_bad_input_writes_nothing(rig: Rig) -> None:
    cases = {
        "unknown mode": ["--task-id", "T", "--mode", "turbo", "--epic", "Build it"],
        "invalid task id": ["--task-id", "bad id!", "--mode", "mvp", "--epic", "Build it"],
        "epic must be": ["--task-id", "T", "--mode", "mvp", "--epic", "   "],
        "unknown provider 'nope-provider'": [
            "--task-id", "T", "--mode", "mvp", "--epic", "Build it", "--provider", "nope-provider"
        ],
    }  # fmt: skip
    procs = {
        why: subprocess.Popen(
            [*CFN, "orchestrate", *args],
            env=rig.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for why, args in cases.items()
    }
    for why, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        run = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert run.returncode == 2, (why, out, err)
        assert why in error_line(run)
    assert rig.client.dbsize() == 0
    database = rig.state / "cfn.db"
    if database.exists():
        with rig.store() as store:
            assert store.list_tasks() == []
    assert not (rig.state / "tasks").exists() and not (rig.tmp / "ws").exists()
