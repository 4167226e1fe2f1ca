"""A master the Sentinel has replaced but that still answers: nothing is judged on it.

The case behind the Sentinel-loop flake (docs/coordination.md, "Faults"). A
master stalls (SIGSTOP), the Sentinel promotes its replica, an agent that
starts now reports to the new master; then the old master wakes up still
believing it is master, and stays so for seconds until the Sentinel turns it
into a replica, dropping whatever it took meanwhile. A supervisor still
connected to it must not conclude from *its* keys that the agent never
reported, nor must a collector judge the agent on a failure record that only
the old master holds.

Real processes: two redis-servers and a redis-sentinel (tests/support/replication.py).
The last test covers the other half: a watch on a master that is demoted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis

from cfn.agents.signals import record_agent_failure
from cfn.coordination.completion import collect_results, signal_completion
from cfn.coordination.connection import RedisManager, sentinel_url
from tests.faults.test_sentinel_failover import cluster  # noqa: F401  (fixture)
from tests.support.replication import SentinelCluster, _wait
from tests.support.servers import free_port

TASK = "T"
AGENT = "val-1-1"
REPORT = json.dumps({"confidence": 0.9, "summary": "checked"})


@asynccontextmanager
async def _stale_old_master(nodes: SentinelCluster, manager: RedisManager) -> AsyncIterator[int]:
    """Stall the master until the Sentinel replaces it, then wake it: yields the old port.

    (The nodes's calls block: nothing else runs on this event loop meanwhile.)
    """
    old = nodes.master_port()
    node = nodes.nodes[old]
    assert node.proc is not None
    await manager.run(lambda r: r.ping())  # the manager's pool now holds a connection to it
    node.proc.send_signal(signal.SIGSTOP)
    try:
        _wait("the Sentinel to promote the replica", lambda: nodes.master_port() != old, 30)
    finally:
        node.proc.send_signal(signal.SIGCONT)
    client = node.client()
    try:
        # Awake and still a master: the Sentinel converts it only seconds later.
        assert client.role()[0] == "master"
        yield old
    finally:
        client.close()


def _agent_reports_to_new_master(nodes: SentinelCluster) -> None:
    master = nodes.master()
    try:
        master.lpush(f"coord:{TASK}:payload:{AGENT}", REPORT)
        master.set(f"swarm:{TASK}:result:{AGENT}", REPORT)
        master.lpush(f"coord:{TASK}:complete", f"{AGENT}:success")
    finally:
        master.close()


def _final_entries(nodes: SentinelCluster) -> list[str]:
    master = nodes.master()
    try:
        return [str(e) for e in master.lrange(f"coord:{TASK}:complete", 0, -1)]
    finally:
        master.close()


async def _until_watched(nodes: SentinelCluster) -> None:
    """Until someone (the collector) is subscribed on the master."""
    master = nodes.master()
    try:
        while not master.pubsub_numpat():
            await asyncio.sleep(0.01)
    finally:
        master.close()


def _manager(nodes: SentinelCluster) -> RedisManager:
    assert nodes.sentinel is not None
    return RedisManager.from_url(sentinel_url([f"127.0.0.1:{nodes.sentinel.port}"], "mymaster"))


def test_no_failure_is_recorded_for_an_agent_whose_report_is_on_the_new_master(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    async def scenario() -> tuple[bool, int, list[str]]:
        manager = _manager(cluster)
        try:
            async with _stale_old_master(cluster, manager) as old:
                _agent_reports_to_new_master(cluster)
                recorded = await record_agent_failure(
                    manager, TASK, AGENT, "agent process ended without a result (exit 0)"
                )
                stale = cluster.nodes[old].client()
                try:
                    on_old = [str(e) for e in stale.lrange(f"coord:{TASK}:complete", 0, -1)]
                finally:
                    stale.close()
            return recorded, manager.generation, on_old
        finally:
            await manager.close()

    recorded, generation, on_old = asyncio.run(scenario())
    assert not recorded, "the agent's own report is on the master: no failure to record"
    assert generation == 1, "the manager noticed the master had moved"
    assert on_old == [], "nothing was written to the replaced master"
    assert _final_entries(cluster) == [f"{AGENT}:success"]


def test_a_failure_held_only_by_the_replaced_master_is_not_the_verdict(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    async def scenario() -> tuple[bool, list[str | None], float | None]:
        manager = _manager(cluster)
        try:
            # The collector is waiting (subscribed on the master, as in a loop) ...
            collector = asyncio.create_task(
                collect_results(manager, TASK, 1, 0.8, 30.0, agent_ids=[AGENT], payload_grace=0.2)
            )
            await _until_watched(cluster)
            async with _stale_old_master(cluster, manager) as old:
                # ... when the agent reports to the new master, and a supervisor's
                # failure record reaches only the old one (it wakes the collector there).
                _agent_reports_to_new_master(cluster)
                stale = cluster.nodes[old].client()
                try:
                    stale.lpush(f"coord:{TASK}:payload:{AGENT}", json.dumps({"status": "failed"}))
                    stale.lpush(f"coord:{TASK}:complete", f"{AGENT}:failed")
                finally:
                    stale.close()
                report = await collector
            return report.met, [r.reason for r in report.results], report.mean
        finally:
            await manager.close()

    met, reasons, mean = asyncio.run(scenario())
    assert reasons == [None], reasons
    assert met and mean == pytest.approx(0.9)
    assert _final_entries(cluster) == [f"{AGENT}:success"]


async def _until_blocked(nodes: SentinelCluster, port: int, timeout: float) -> bool:
    """Until a client of the node on ``port`` waits in a blocking command (False at timeout)."""
    client = nodes.nodes[port].client()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if int(client.info("clients")["blocked_clients"]) > 0:
                return True
            await asyncio.sleep(0.01)
        return False
    finally:
        client.close()


def test_a_command_retried_after_the_move_runs_on_the_new_master(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    """A command in flight on the replaced master when the manager closes its
    connections is retried by redis-py; the retry must re-open its connection on the
    master the sentinels name now. (It re-opened it at the old address: the connection
    went back to the pool on the old master and later reads, ``generation`` already
    bumped, were served by it. Under load the test above failed so, about 1 run in
    30: the collector judged the failure record only the old master held.)

    No follower here (nothing goes through ``run``): the move is noted by the
    ``confirm_master`` below, while the BLPOP is known to wait on the old master."""

    async def scenario() -> tuple[int, bool, bool, list[str], set[int], int]:
        manager = _manager(cluster)
        try:
            await manager.confirm_master(window=0)  # the master as it is now
            old = cluster.master_port()
            node = cluster.nodes[old]
            assert node.proc is not None
            await manager.client.ping()  # a pooled connection to it
            node.proc.send_signal(signal.SIGSTOP)
            try:
                _wait(
                    "the Sentinel to promote the replica", lambda: cluster.master_port() != old, 30
                )
            finally:
                node.proc.send_signal(signal.SIGCONT)
            new = cluster.master_port()
            awake = node.client()
            try:
                assert awake.role()[0] == "master"  # replaced, but not converted yet
            finally:
                awake.close()
            popping = asyncio.create_task(manager.client.blpop(["k"], timeout=20))
            on_old = await _until_blocked(cluster, old, 10)
            await manager.confirm_master()  # closes every connection to the old master
            on_new = await _until_blocked(cluster, new, 10)
            master = cluster.nodes[new].client()
            try:
                master.lpush("k", "v")
            finally:
                master.close()
            popped = await asyncio.wait_for(popping, 30)
            pool = manager.client.connection_pool
            ports = {int(c.port) for c in pool._available_connections if c.is_connected}
            return manager.generation, on_old, on_new, list(popped or []), ports, new
        finally:
            await manager.close()

    generation, on_old, on_new, popped, ports, new = asyncio.run(scenario())
    assert generation == 1
    assert on_old, "the BLPOP waited on the replaced master"
    assert on_new, "redis-py's retry of the BLPOP waits on the new master"
    assert popped == ["k", "v"]
    assert ports == {new}, ports


def test_a_collector_watching_a_master_that_is_demoted_wakes_on_the_new_one(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    """A live master handed over (SENTINEL FAILOVER) becomes a replica and gets the new
    master's data by a full resync, which publishes no keyspace events: the collector's
    subscription there would sleep until its timeout. The sentinels' ``+switch-master``
    makes it re-subscribe on the new master and read again."""
    assert cluster.sentinel is not None

    async def scenario() -> tuple[float, bool, int]:
        manager = _manager(cluster)
        try:
            collector = asyncio.create_task(
                collect_results(manager, TASK, 1, 0.8, 60.0, agent_ids=[AGENT])
            )
            old = cluster.master_port()
            await _until_watched(cluster)
            sentinel = redis.Redis(port=cluster.sentinel.port, decode_responses=True)
            try:
                sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
            finally:
                sentinel.close()
            _wait("the handover", lambda: cluster.master_port() != old, 30)
            demoted = cluster.nodes[old].client()
            try:
                _wait("the old master to be a replica", lambda: demoted.role()[0] == "slave", 30)
            finally:
                demoted.close()
            started = time.monotonic()
            _agent_reports_to_new_master(cluster)
            report = await collector
            return time.monotonic() - started, report.met, manager.generation
        finally:
            await manager.close()

    took, met, generation = asyncio.run(scenario())
    assert met
    assert generation == 1
    # Without the wake-up it waits out its 60 s timeout (measured: 48.8 s after the
    # report); the bound only tells the two apart.
    assert took < 30, took


def test_closing_a_manager_ends_its_sentinel_follower(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    """The follower's subscription read is ended by close(), so a process exits.

    (A cancellation alone could be lost inside redis-py's read: `cfn signal
    complete` then hung at exit in one of the 20-cycle runs.)"""

    async def scenario() -> tuple[bool, bool, float]:
        manager = _manager(cluster)
        await manager.run(lambda r: r.ping())
        follower = manager._follower
        assert follower is not None
        for _ in range(500):  # until it is subscribed and blocked in its read
            if manager._follower_pubsub is not None and manager._follower_pubsub.subscribed:
                break
            await asyncio.sleep(0.01)
        subscribed = bool(manager._follower_pubsub and manager._follower_pubsub.subscribed)
        started = time.monotonic()
        await asyncio.wait_for(manager.close(), 10)
        return subscribed, follower.done(), time.monotonic() - started

    subscribed, done, took = asyncio.run(scenario())
    assert subscribed
    assert done, "the follower still runs after close()"
    assert took < 5, took


def test_a_completion_waits_for_a_replica_that_is_reattaching(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    """The master has no replica connected (the replica was pointed elsewhere) while
    the Sentinel still counts the replica up: the completion is re-sent until the
    replica, pointed back 1.5 s later, acknowledges it, so it is there on return."""
    master_port = cluster.master_port()
    (replica_port,) = (p for p in cluster.nodes if p != master_port)
    replica = cluster.nodes[replica_port].client()

    def point_back() -> None:
        client = cluster.nodes[replica_port].client()
        try:
            client.replicaof("127.0.0.1", master_port)
        finally:
            client.close()

    async def scenario() -> tuple[list[str], float]:
        manager = _manager(cluster)
        try:
            await manager.run(lambda r: r.ping())
            replica.replicaof("127.0.0.1", free_port())  # nothing listens there
            master = cluster.master()
            try:
                _wait(
                    "the master to lose its replica",
                    lambda: master.info("replication")["connected_slaves"] == 0,
                    10,
                )
            finally:
                master.close()
            threading.Timer(1.5, point_back).start()
            started = time.monotonic()
            await signal_completion(manager, TASK, AGENT, "success", REPORT)
            took = time.monotonic() - started
            on_replica = [str(e) for e in replica.lrange(f"coord:{TASK}:complete", 0, -1)]
            return on_replica, took
        finally:
            await manager.close()

    try:
        on_replica, took = asyncio.run(scenario())
    finally:
        replica.close()
    assert on_replica == [f"{AGENT}:success"], "acknowledged by the replica before returning"
    assert 1.0 < took < 30, took


def test_a_failover_during_the_first_operation_is_seen(
    cluster: SentinelCluster,  # noqa: F811
) -> None:
    """The master is known before the first operation connects, not only after it.

    The flake behind this test (CI, the demoted-master test above): the test's
    blocking calls froze the event loop while the collector's first subscription
    was being confirmed on the old master. The follower then asked the sentinels
    first and recorded the *new* master as the first one seen, so no move was
    noticed: generation stayed 0, no watcher was told, and the subscription stayed
    on the old master. Here the first operation hands the master over itself and
    lets the follower run before it returns, so the order is fixed."""
    assert cluster.sentinel is not None

    async def scenario() -> tuple[int, bool, int, int]:
        manager = _manager(cluster)
        moved = manager.moved_event()
        # A connection to the master, made as the first operation's own would be
        # before the operation completes (the subscription in the flake).
        await manager.client.ping()
        on = int(manager.client.connection_pool.master_address[1])

        async def first(_r: object) -> None:
            cluster.fail_over()  # blocks this event loop until the replica is promoted
            for _ in range(500):  # the follower's first look at the sentinels runs now
                if manager._follower_pubsub is not None and manager._follower_pubsub.subscribed:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)

        try:
            await manager.run(first)
            return on, moved.is_set(), manager.generation, cluster.master_port()
        finally:
            await manager.close()

    on, woken, generation, new = asyncio.run(scenario())
    assert new != on
    assert generation == 1, "the move from the master the first operation ran on was noticed"
    assert woken, "watchers were told"
