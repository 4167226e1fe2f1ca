"""A real CFN Loop through Sentinel (CFN_REDIS_SENTINELS only, no REDIS_URL), its
master killed while the implementers are mid-conversation: the Sentinel promotes
the replica, and the loop finishes on it with every completion.

Real processes: ``python -m cfn orchestrate``, its agent processes (given the
Sentinel URL, so they follow the failover, and the master's address in the
seed's context JSON), two redis-servers and a redis-sentinel, SQLite, the local
LLM stand-in on the OpenAI wire format (tests/loop/test_resume.py's rig).

One loop runs in the default suite; 20 loops, each across its own failover,
sit behind ``long``. The 20-loop run found the defects that
tests/faults/test_stale_master.py pins down (docs/coordination.md, "Faults").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults.test_sentinel_failover import cluster  # noqa: F401  (fixture)
from tests.loop.test_resume import Rig, running_rig
from tests.support.replication import SentinelCluster, assert_each_reported_once
from tests.support.servers import RedisServer

TEAM = ["impl-1-1", "impl-2-1", "val-1-1"]


def _loop_across_failover(rig: Rig, sentinel: SentinelCluster, task: str) -> None:
    with rig.model.cond:
        rig.model.arrivals.clear()  # a new task: wait for its own agents' requests
    rig.model.hold("implementer")
    proc = rig.orchestrate(task, implementers=2, validators=1)
    rig.model.wait_arrivals({"Coder", "System Architect"}, timeout=110)
    before = sentinel.master_port()
    for agent in TEAM[:2]:
        env = rig.redis_urls_of(task, agent)
        assert env.get("REDIS_URL", "").startswith("redis+sentinel://"), agent
        context = json.loads((rig.agent_dir(task, agent) / "context.json").read_text())
        assert context["coordination"]["redis"]["port"] == before, context

    old, new = sentinel.fail_over()  # the master dies mid-conversation
    assert old == before and new != old
    rig.model.release("implementer")
    code = rig.finish(proc, timeout=240)
    output = rig.output(proc)
    assert code == 0, output
    assert f"{task}: succeeded" in output

    master = sentinel.master()
    try:
        # Every agent's completion on the new master, once, with its confidence.
        assert_each_reported_once(master, task, TEAM)
    finally:
        master.close()
    # The validator started after the failover: its context names the new master.
    context = json.loads((rig.agent_dir(task, "val-1-1") / "context.json").read_text())
    assert context["coordination"]["redis"]["port"] == new, context
    with rig.store() as store:
        assert store.get_task(task).status == "succeeded"
        agents = store.list_agents(task)
        assert {a.agent_id: a.status for a in agents} == dict.fromkeys(TEAM, "done")
        assert [(d.iteration, d.decision) for d in store.decisions(task)] == [(1, "PROCEED")]


@contextmanager
def _sentinel_rig(
    tmp_path: Path, redis_server: RedisServer, sentinel: SentinelCluster
) -> Iterator[Rig]:
    with running_rig(tmp_path, redis_server) as rig:
        del rig.env["REDIS_URL"]  # the rig's server stays unused: all goes through the Sentinel
        rig.env.update(sentinel.env)
        # A busy 2-core machine starts agents slowly and may delay a beat by seconds.
        rig.env.update(AGENT_TIMEOUT="120", CFN_AGENT_HEARTBEAT_INTERVAL="20")
        rig.env["CFN_PROVIDER_TIMEOUT"] = "150"
        yield rig


def test_loop_through_sentinel_finishes_across_a_failover(
    tmp_path: Path,
    redis_server: RedisServer,
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    with _sentinel_rig(tmp_path, redis_server, cluster) as rig:
        _loop_across_failover(rig, cluster, "T")


@pytest.mark.long
def test_twenty_loops_each_across_a_failover(
    tmp_path: Path,
    redis_server: RedisServer,
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    started = time.monotonic()
    with _sentinel_rig(tmp_path, redis_server, cluster) as rig:
        for n in range(20):
            _loop_across_failover(rig, cluster, f"T{n}")
    assert cluster.failovers == 20
    print(f"20 loops, 20 failovers, 60 completions, 0 lost, {time.monotonic() - started:.1f} s")
