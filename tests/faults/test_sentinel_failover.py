"""Sentinel failover while agents report: no completion signal is lost.

Real processes only: a master, a replica and a Sentinel (redis-server),
agents as ``python -m cfn signal complete`` processes and a collector as
``python -m cfn collect-results``, all reaching Redis through the Sentinel
(CFN_REDIS_SENTINELS). Each cycle is one task: its agents start at seeded
random moments, the master is SIGKILLed right after a seeded random number
of them reported to it, the Sentinel promotes the replica, and the killed node comes back as a
replica of the new master. Afterwards the master in charge must hold every
agent's completion exactly once, with its payload, and the collector must
have judged them all.

Replication is asynchronous: without ``signal_completion``'s ``WAIT 1`` and
its idempotent re-send, a completion the old master accepted just before the
kill is missing on the promoted replica (the long run counts how often the
re-send path ran: see docs/coordination.md, "Faults").
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.replication import SentinelCluster
from tests.support.servers import cfn_env

CFN = [sys.executable, "-m", "cfn"]
AGENTS = 5
SEED = int(os.environ.get("CFN_FAULT_SEED", "20261125"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "redis").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Tally:
    cycles: int = 0
    expected: int = 0
    found: int = 0
    duplicated: int = 0
    resends: int = 0
    collected: int = 0
    lost: list[str] = field(default_factory=list)


def run_cycle(
    cluster: SentinelCluster, tmp_path: Path, cycle: int, rng: random.Random, tally: Tally
) -> None:
    task = f"failover-{cycle}"
    env = cfn_env(tmp_path, **cluster.env)
    logs = tmp_path / "logs" / task
    logs.mkdir(parents=True)
    agents = [f"impl-{n}-1" for n in range(1, AGENTS + 1)]
    collector = subprocess.Popen(
        [
            *CFN,
            "collect-results",
            "--task-id",
            task,
            "--expected",
            str(AGENTS),
            "--threshold",
            "0.5",
            "--timeout",
            "120",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(logs / "collector.err", "wb"),  # noqa: SIM115 - closed with the process
    )
    starts = {agent: rng.uniform(0.0, 2.0) for agent in agents}
    # The master dies right after the k-th completion reached it: k were written to
    # it (and must have reached the replica), the rest meet the failover.
    kill_after = rng.randint(1, AGENTS - 1)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for agent in agents:
        payload = json.dumps({"confidence": 0.9, "agent": agent, "cycle": cycle})
        command = shlex.join(
            [
                *CFN,
                "signal",
                "complete",
                "--task-id",
                task,
                "--agent-id",
                agent,
                "--payload",
                payload,
            ]
        )
        procs[agent] = subprocess.Popen(
            ["sh", "-c", f"sleep {starts[agent]:.3f}; exec {command}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(logs / f"{agent}.err", "wb"),  # noqa: SIM115
        )
    where = f"cycle {cycle} (seed {SEED}): kill after {kill_after} completions, starts {starts}"
    watched = cluster.master()
    try:
        deadline = time.monotonic() + 90
        while watched.llen(f"coord:{task}:complete") < kill_after:
            assert time.monotonic() < deadline, f"{where}: agents never reported"
            time.sleep(0.005)
    finally:
        watched.close()
    old, new = cluster.fail_over()
    for agent, proc in procs.items():
        code = proc.wait(90)
        err = (logs / f"{agent}.err").read_text()
        assert code == 0, f"{where}: {agent} exited {code}: {err}"
        tally.resends += err.count("re-sending")
    out, _ = collector.communicate(timeout=120)
    report = json.loads(out or "{}")
    err = (logs / "collector.err").read_text()
    assert collector.returncode == 0, (
        f"{where}: collector exited {collector.returncode}: {out} {err}"
    )
    assert report["arrived"] == AGENTS and report["failed"] == 0, f"{where}: {report}"
    tally.collected += report["arrived"]

    master = cluster.master()
    try:
        assert master.info("replication")["role"] == "master"
        entries = master.lrange(f"coord:{task}:complete", 0, -1)
        payloads = {a: master.lrange(f"coord:{task}:payload:{a}", 0, -1) for a in agents}
    finally:
        master.close()
    tally.cycles += 1
    tally.expected += AGENTS
    tally.found += len(set(entries))
    tally.duplicated += len(entries) - len(set(entries))
    tally.lost += [f"{task}/{a}" for a in agents if f"{a}:success" not in entries]
    assert sorted(entries) == sorted(f"{a}:success" for a in agents), (
        f"{where}: master {new} (old {old}) holds {entries}"
    )
    for agent, items in payloads.items():
        assert len(items) == 1 and json.loads(items[0])["agent"] == agent, (where, agent, items)


def run_cycles(cluster: SentinelCluster, tmp_path: Path, cycles: int) -> Tally:
    rng = random.Random(SEED)
    tally = Tally()
    started = time.monotonic()
    for cycle in range(1, cycles + 1):
        run_cycle(cluster, tmp_path, cycle, rng, tally)
    wall = time.monotonic() - started
    # Printed for the docs (pytest -s, or shown on failure).
    print(
        f"sentinel failover: {tally.cycles} kill/restart cycles, {cluster.failovers} failovers, "
        f"{tally.expected} completions sent, {tally.found} found on the master, "
        f"lost {len(tally.lost)}, duplicated {tally.duplicated}, collected {tally.collected}, "
        f"re-send warnings {tally.resends}, wall {wall:.1f} s"
    )
    assert cluster.failovers == cycles
    assert tally.found == tally.expected == tally.collected and not tally.lost
    assert tally.duplicated == 0
    return tally


def test_failover_cycles_lose_no_completion(cluster: SentinelCluster, tmp_path: Path) -> None:
    run_cycles(cluster, tmp_path, 2)


@pytest.mark.long
def test_twenty_failover_cycles_lose_no_completion(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    run_cycles(cluster, tmp_path, 20)
