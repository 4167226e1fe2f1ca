"""Heartbeats, hung-agent detection by keyspace expiry, per-agent signals."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from cfn import keys
from cfn.agents import heartbeat as hb
from cfn.agents.signals import (
    AgentSignal,
    record_agent_failure,
    send_agent_signal,
    send_feedback,
    send_stop,
    take_agent_signal,
    wait_agent_signal,
)
from cfn.agents.spawn.process import ProcessSpawner
from cfn.coordination.completion import collect_results, signal_completion
from cfn.coordination.connection import RedisManager
from cfn.errors import InvalidInputError, WaitTimeoutError
from tests.support.servers import RedisServer

INTERVAL = 0.5


async def test_beat_sets_json_with_ttl_of_twice_the_interval(
    manager: RedisManager, redis_server: RedisServer
) -> None:
    await hb.beat(manager, "t1", "a1", 3.0, pid=42)
    client = redis_server.client()
    value = json.loads(client.get("swarm:t1:heartbeat:a1") or "")
    assert value["pid"] == 42
    assert value["status"] == "running"
    assert abs(value["ts"] - time.time()) < 5
    assert 5000 < client.pttl("swarm:t1:heartbeat:a1") <= 6000
    with pytest.raises(InvalidInputError):
        await hb.beat(manager, "t1", "a1", 0)


async def test_hung_agent_is_detected_within_twice_the_interval_and_killed(
    manager: RedisManager,
    redis_server: RedisServer,
    spawner: ProcessSpawner,
    make_context: Any,
    task_id: str,
) -> None:
    ctx = make_context("impl-1-1", heartbeat_interval=INTERVAL)
    key = ctx.cfn.heartbeat.key
    # Beats three times, then hangs (never reports, never exits).
    hung = (
        f"for i in 1 2 3; do redis-cli -p {redis_server.port} SET {key} "
        f'"{{\\"ts\\":$(date +%s.%N),\\"pid\\":$$,\\"status\\":\\"running\\"}}" '
        f"PX {ctx.cfn.heartbeat.ttl_ms} >/dev/null; sleep {INTERVAL}; done; sleep 60"
    )
    async with hb.HeartbeatMonitor(manager, task_id, INTERVAL) as monitor:
        handle = await spawner.spawn(ctx, command=["sh", "-c", hung])
        await monitor.watch("impl-1-1")
        lapses = await monitor.wait_lapsed(10.0)
        detected = time.time()
    assert [lapse.agent_id for lapse in lapses] == ["impl-1-1"]
    lapse = lapses[0]
    assert lapse.last is not None and lapse.last["status"] == "running"
    assert lapse.last["pid"] == handle.pid
    # Detected within 2x the interval of the last beat (plus Redis's expiry cycle).
    assert detected - lapse.last["ts"] < 2 * INTERVAL + 0.35
    assert handle.running
    await handle.kill()
    info = await handle.wait()
    assert info.status == "killed"

    await record_agent_failure(manager, task_id, "impl-1-1", lapse.reason, info.to_dict())
    report = await collect_results(manager, task_id, 1, 0.7, 5.0)
    assert report.arrived == 1 and not report.results[0].ok
    assert "heartbeat lapsed" in report.results[0].payload["reason"]


async def test_healthy_and_finished_agents_do_not_lapse(
    manager: RedisManager, task_id: str
) -> None:
    interval = 0.3
    async with hb.HeartbeatMonitor(manager, task_id, interval) as monitor:
        async with hb.Heartbeater(manager, task_id, "impl-1-1", interval) as beater:
            await monitor.watch("impl-1-1")
            assert await monitor.wait_lapsed(4 * interval) == []
            assert beater.beats >= 3
            assert monitor.last("impl-1-1") is not None
        # Its final beat says "done": the key expiring afterwards is no lapse.
        assert await monitor.wait_lapsed(2 * interval + 0.4) == []
        assert monitor.watching == []
        assert (monitor.last("impl-1-1") or {}).get("status") == "done"


async def test_an_agent_that_never_beats_lapses_after_its_grace(
    manager: RedisManager, task_id: str
) -> None:
    async with hb.HeartbeatMonitor(manager, task_id, INTERVAL, startup_grace=0.6) as monitor:
        started = time.monotonic()
        await monitor.watch("impl-1-1")
        lapses = await monitor.wait_lapsed(5.0)
    assert lapses[0].never_beat
    assert lapses[0].reason == "no heartbeat since it was spawned"
    assert 0.5 < time.monotonic() - started < 1.5


async def test_monitor_waits_without_polling_redis(
    manager: RedisManager, redis_server: RedisServer, task_id: str
) -> None:
    client = redis_server.client()
    async with hb.HeartbeatMonitor(manager, task_id, 5.0) as monitor:
        await hb.beat(manager, task_id, "impl-1-1", 5.0)
        await monitor.watch("impl-1-1")
        assert await monitor.wait_lapsed(0.3) == []  # consumes the events of the two SETs
        before = client.info("commandstats")
        assert await monitor.wait_lapsed(1.5) == []
        after = client.info("commandstats")
    # One MGET to look and one at the timeout; silence in between (no events came).
    changed = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    assert {k: v for k, v in changed.items() if v} == {"cmdstat_mget": 2, "cmdstat_info": 1}


async def test_agent_signals_in_order_and_with_waiting(
    manager: RedisManager, redis_server: RedisServer
) -> None:
    assert await take_agent_signal(manager, "t1", "a1") is None
    await send_feedback(manager, "t1", "a1", "tests are missing")
    await send_stop(manager, "t1", "a1", "gate failed")
    first = await take_agent_signal(manager, "t1", "a1")
    second = await take_agent_signal(manager, "t1", "a1")
    assert first is not None and first.type == "feedback"
    assert first.data == {"feedback": "tests are missing"}
    assert second is not None and second.type == "stop"
    assert redis_server.client().exists(keys.swarm_signal("t1", "a1")) == 0

    async def later() -> None:
        await asyncio.sleep(0.2)
        await send_agent_signal(manager, "t1", "a1", "stop")

    task = asyncio.create_task(later())
    started = time.monotonic()
    got = await wait_agent_signal(manager, "t1", "a1", 5.0)
    assert got.type == "stop" and time.monotonic() - started < 2
    await task
    with pytest.raises(WaitTimeoutError, match="swarm:t1:signal:a1"):
        await wait_agent_signal(manager, "t1", "a1", 0.2)
    # A bare word pushed from bash is a signal too.
    redis_server.client().lpush(keys.swarm_signal("t1", "a1"), "stop")
    assert await take_agent_signal(manager, "t1", "a1") == AgentSignal("stop")
    with pytest.raises(InvalidInputError):
        await send_agent_signal(manager, "t1", "a1", "bad type!")


async def test_failure_is_not_recorded_over_a_real_report(manager: RedisManager) -> None:
    await signal_completion(manager, "t1", "a1", "success", json.dumps({"confidence": 0.9}))
    assert not await record_agent_failure(manager, "t1", "a1", "heartbeat lapsed")
    report = await collect_results(manager, "t1", 1, 0.7, 2.0)
    assert report.results[0].ok and report.results[0].confidence == 0.9
