"""One orchestrator per task: the lease on a real redis-server (and the live stream's
ids a resume reads)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cfn.coordination import lease
from cfn.coordination.connection import RedisManager
from cfn.coordination.events import publish_event, recent_event_ids
from cfn.coordination.lease import Holder
from cfn.errors import TaskLeaseError
from cfn.loop.journal import SqlJournal
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.support.servers import RedisServer, cfn_env


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_a_second_orchestrator_is_told_who_runs_the_task(manager: RedisManager) -> None:
    value = await lease.acquire(manager, "T1")
    with pytest.raises(TaskLeaseError, match=rf"task T1 is run by pid {os.getpid()} on "):
        await lease.acquire(manager, "T1")
    assert await lease.renew(manager, "T1", value)
    await lease.release(manager, "T1", value)
    again = await lease.acquire(manager, "T1")  # free again
    assert again != value


async def test_a_holder_that_ended_here_is_taken_over_at_once(manager: RedisManager) -> None:
    dead = replace(Holder.here(), pid=_ended_pid(), start=None)
    stale = await lease.acquire(manager, "T1", dead)
    mine = await lease.acquire(manager, "T1")
    assert mine != stale and await manager.client.get("lease:task:T1") == mine
    assert not await lease.renew(manager, "T1", stale)  # the old holder lost it
    await lease.release(manager, "T1", stale)  # and cannot delete the new one's
    assert await manager.client.get("lease:task:T1") == mine


async def test_a_holder_elsewhere_or_unknown_is_waited_out(manager: RedisManager) -> None:
    elsewhere = replace(Holder.here(), host="box-2", place="box-2/x/y", pid=_ended_pid())
    await lease.acquire(manager, "T1", elsewhere)
    with pytest.raises(TaskLeaseError, match=r"run by pid .* on box-2"):
        await lease.acquire(manager, "T1")  # its pid means nothing here
    await manager.client.set("lease:task:T2", "not a lease", px=30_000)
    with pytest.raises(TaskLeaseError, match=r"run by an unknown holder; .* lapses [23]"):
        await lease.acquire(manager, "T2")


async def test_a_lease_lost_to_another_stops_the_block(manager: RedisManager) -> None:
    async def run() -> None:
        async with lease.held(manager, "T1", renew_every=0.05):
            # a stall past the TTL, and someone took the task over
            await manager.client.set("lease:task:T1", Holder.here().to_json())
            await asyncio.sleep(30)

    with pytest.raises(TaskLeaseError, match="taken over while this orchestrator stalled"):
        async with asyncio.timeout(10):  # a bound on the test itself
            await run()
    assert await manager.client.get("lease:task:T1") is not None  # the new holder's stays


async def test_the_lease_goes_with_the_block(manager: RedisManager) -> None:
    async with lease.held(manager, "T1"):
        assert await manager.client.pttl("lease:task:T1") > 0
    assert await manager.client.get("lease:task:T1") is None


def test_cfn_resume_of_a_task_run_elsewhere_says_who_and_exits(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    holder = Holder.here()  # this test process: alive
    client.set("lease:task:T9", holder.to_json(), px=60_000)
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", redis_url=redis_server.url)
    with Store.open(settings) as store:  # a task that stopped halfway
        options = TaskOptions(task_id="T9", epic="x", workspace=str(tmp_path / "ws"))
        SqlJournal(store).create_task(options, Checkpoint())
    done = subprocess.run(
        [sys.executable, "-m", "cfn", "resume", "T9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"[ERROR] task T9 is run by pid {os.getpid()} on " in done.stderr, done.stderr
    assert client.get("lease:task:T9") == holder.to_json()  # left alone
    with Store.open(settings) as store:
        assert store.events("T9") == []  # not even a task:resumed


async def test_the_ids_of_the_live_streams_last_events(manager: RedisManager) -> None:
    """What a resume compares with the journal to publish what a kill kept back."""
    assert await recent_event_ids(manager, "T1", 10) == []
    for event_id in (7, 8, 9):
        await publish_event(manager, "T1", event_id, "agent:update", {"n": event_id})
    await manager.client.xadd("events:T1", {"id": "not-a-number", "kind": "x"})
    assert await recent_event_ids(manager, "T1", 10) == [9, 8, 7]
    assert await recent_event_ids(manager, "T1", 2) == [9]


async def test_a_lease_that_lapsed_with_nobody_taking_it_is_kept(manager: RedisManager) -> None:
    """Redis away longer than the TTL (or restarted without the key): the holder takes
    its lease again and runs on."""
    async with lease.held(manager, "T1", renew_every=0.05):
        value = await manager.client.get("lease:task:T1")
        await manager.client.delete("lease:task:T1")
        for _ in range(100):
            if await manager.client.get("lease:task:T1") == value:
                break
            await asyncio.sleep(0.02)
        assert await manager.client.get("lease:task:T1") == value
    assert await manager.client.get("lease:task:T1") is None
