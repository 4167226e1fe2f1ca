"""An agent that has not sent its first heartbeat yet is hung only if it uses no
CPU: on a machine starting a hundred agents at once, each gets a sliver of CPU
and may need several grace periods to reach its first beat (the 20 x 5 load run
lost every implementer to a fixed 60 s grace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

from cfn.coordination import completion
from cfn.coordination.connection import RedisManager
from cfn.loop.orchestrator import Orchestrator

GRACE = 1.5


class _Proc:
    """A real process behind the loop's RunningAgent interface."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv)

    @property
    def pid(self) -> int:
        return self.popen.pid

    profile = provider = model = None

    async def wait(self) -> str:
        return f"exit {await asyncio.to_thread(self.popen.wait)}"

    async def kill(self) -> None:
        self.popen.kill()
        await asyncio.to_thread(self.popen.wait)


async def test_starting_agent_using_cpu_gets_more_time_a_silent_one_is_killed(
    manager: RedisManager,
) -> None:
    orchestrator = Orchestrator(
        manager,
        journal=None,  # type: ignore[arg-type]  # _monitor touches neither
        launcher=None,  # type: ignore[arg-type]
        product_owner=None,  # type: ignore[arg-type]
        heartbeat_interval=0.5,
        startup_grace=GRACE,
    )
    busy = _Proc([sys.executable, "-c", "while True: pass"])  # starting, slowly
    silent = _Proc(["sleep", "300"])  # alive, no CPU, never beats: hung
    handles: dict[str, Any] = {"impl-1-1": busy, "impl-1-2": silent}
    monitor = asyncio.create_task(orchestrator._monitor("T", handles))
    try:
        deadline = time.monotonic() + 30
        while "impl-1-2" not in await completion.reported_agents(manager, "T"):
            assert time.monotonic() < deadline, "the silent agent was never killed"
            await asyncio.sleep(0.1)
        assert silent.popen.poll() is not None  # killed
        # The busy one outlives three more grace periods: each look finds CPU used.
        await asyncio.sleep(3 * GRACE)
        assert busy.popen.poll() is None
        assert await completion.reported_agents(manager, "T") == {"impl-1-2"}
        errors = await manager.run(lambda r: r.lrange("coord:T:error", 0, -1))
        assert len(errors) == 1 and "no heartbeat since it was spawned" in errors[0]
        assert json.loads(errors[0])["agent_id"] == "impl-1-2"
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        for proc in (busy, silent):
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()
