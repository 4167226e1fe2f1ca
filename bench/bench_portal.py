"""Portal benchmarks (issue 7).

1. Event latency: the orchestrator's ``EventBus.emit`` (SQL insert + XADD) to
   a python-socketio client receiving the event on ``/cfn-loop``; p50 / p99
   (target p99 < 20 ms). The client runs in this process, so one clock serves.
2. ``GET /api/tasks/{id}/status`` requests per second against the bare
   ``GET /api/ping`` of the same app in the same run (target >= half).

Real parts: redis-server on a free port, SQLite in a temp dir, uvicorn.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import socketio
from tests.portal.conftest import RunningPortal
from tests.support.servers import RedisServer

from cfn.coordination.connection import RedisManager
from cfn.loop.journal import SqlJournal
from cfn.loop.orchestrator import EventBus
from cfn.loop.state import AgentRow, Checkpoint, TaskOptions
from cfn.settings import Settings
from cfn.store.repository import Store

EVENTS = 300
REQUESTS = 600
CONCURRENCY = 8


async def _latency(portal: RunningPortal, settings: Settings, url: str) -> list[float]:
    redis = RedisManager.from_url(url, settings)
    store = Store.open(settings)
    bus = EventBus(SqlJournal(store), redis)
    got: dict[int, float] = {}
    arrived = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)

    @client.on("loop:progress", namespace="/cfn-loop")
    def on_progress(data: dict[str, Any]) -> None:
        got[int(data["n"])] = time.perf_counter()
        arrived.set()

    await client.connect(
        portal.url,
        namespaces=["/cfn-loop"],
        auth={"taskId": "bench", "token": portal.token()},
        transports=["websocket"],
    )
    await asyncio.sleep(0.5)
    sent: dict[int, float] = {}
    for n in range(EVENTS):
        arrived.clear()
        sent[n] = time.perf_counter()
        await bus.emit("bench", "loop:progress", loop=3, iteration=1, progress=n / EVENTS, n=n)
        await asyncio.wait_for(arrived.wait(), 5)
    await client.disconnect()
    await redis.close()
    store.close()
    return [(got[n] - sent[n]) * 1000 for n in range(EVENTS) if n in got]


async def _rps(url: str, path: str, headers: dict[str, str]) -> float:
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        for _ in range(20):
            (await http.get(path)).raise_for_status()
        per = REQUESTS // CONCURRENCY

        async def worker() -> None:
            for _ in range(per):
                (await http.get(path)).raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return per * CONCURRENCY / (time.perf_counter() - began)


def main(_argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        settings = Settings(
            redis_url=server.url, cfn_state_dir=root / ".cfn", cfn_portal_worker=False
        )
        with Store.open(settings) as store:
            journal = SqlJournal(store)
            journal.create_task(
                TaskOptions(task_id="bench", epic="bench", mode="mvp", workspace=tmp),
                Checkpoint(),
            )
            for n in range(1, 5):
                journal.save_agent(
                    AgentRow("bench", f"impl-{n}-1", "implementer", 3, 1, None, "offline", None,
                             "done", None, 0.9)
                )
        portal = RunningPortal(settings, worker=False).start()
        try:
            latencies = asyncio.run(_latency(portal, settings, server.url))
            headers = portal.headers()
            bare = asyncio.run(_rps(portal.url, "/api/ping", headers))
            status = asyncio.run(_rps(portal.url, "/api/tasks/bench/status", headers))
        finally:
            portal.stop()
            server.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"event latency emit -> Socket.IO client ({len(latencies)} events): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < 20 ms)")
    print(f"GET /api/ping: {bare:.0f} req/s; GET /api/tasks/:id/status: {status:.0f} req/s "
          f"= {status / bare:.2f} of bare (target >= 0.5); {CONCURRENCY} concurrent clients")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
