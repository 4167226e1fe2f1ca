"""Portal benchmarks (issue 7).

1. Event latency: the orchestrator's ``JournalEventBus.emit`` (SQL insert + XADD) to
   a python-socketio client receiving the event on ``/cfn-loop``; p50 / p99
   (target p99 < 20 ms). Emitter and client run in this process: one clock.
2. ``GET /api/tasks/{id}/status`` requests per second against the bare
   ``GET /api/ping`` of the same app in the same run (target >= half), with
   8 concurrent keep-alive clients. The two are measured in alternating
   rounds (bare, status, status, bare, ...) so that other jobs on a shared
   machine weigh on both alike; the figure is the median of the rounds'
   ratios. The portal's own CPU time per request (from /proc, its process
   only) is printed beside it: it does not move with the load of other jobs
   the way requests per second do.

Real parts: redis-server on a free port, SQLite in a temp dir, the portal as
its own process (``python -m cfn portal``: uvicorn, the app, its worker
threads), so the client's work never shares the portal's interpreter.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import socketio
from tests.support.servers import RedisServer, free_port

from cfn.coordination.connection import RedisManager
from cfn.loop.board import RedisBoard
from cfn.loop.journal import SqlJournal
from cfn.loop.orchestrator import JournalEventBus
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.portal.auth import load_secret, mint_token
from cfn.settings import Settings
from cfn.store.records import AgentRecord
from cfn.store.repository import Store

EVENTS = 300
REQUESTS = 600
CONCURRENCY = 8
ROUNDS = 6
BARE, STATUS = "/api/ping", "/api/tasks/bench/status"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


async def _latency(url: str, settings: Settings, redis_url: str, token: str) -> list[float]:
    redis = RedisManager.from_url(redis_url, settings)
    store = Store.open(settings)
    bus = JournalEventBus(SqlJournal(store), RedisBoard(redis))
    got: dict[int, float] = {}
    arrived = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)

    @client.on("loop:progress", namespace="/cfn-loop")
    def on_progress(data: dict[str, Any]) -> None:
        got[int(data["n"])] = time.perf_counter()
        arrived.set()

    await client.connect(
        url,
        namespaces=["/cfn-loop"],
        auth={"taskId": "bench", "token": token},
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


async def _rps(http: httpx.AsyncClient, path: str, pid: int) -> tuple[float, float]:
    """(requests per second, portal CPU ms per request) for one burst on ``path``."""
    per = REQUESTS // CONCURRENCY

    async def worker() -> None:
        for _ in range(per):
            (await http.get(path)).raise_for_status()

    cpu = _cpu_seconds(pid)
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - began
    return per * CONCURRENCY / elapsed, (_cpu_seconds(pid) - cpu) * 1000 / (per * CONCURRENCY)


async def _throughput(url: str, token: str, pid: int) -> list[dict[str, float]]:
    rounds: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:
        for path in (BARE, STATUS):  # warm both paths (connections, compiled statements)
            for _ in range(40):
                (await http.get(path)).raise_for_status()
        for n in range(ROUNDS):
            order = (BARE, STATUS) if n % 2 == 0 else (STATUS, BARE)
            result: dict[str, float] = {}
            for path in order:
                rps, cpu = await _rps(http, path, pid)
                key = "bare" if path == BARE else "status"
                result[key], result[f"{key}_cpu"] = rps, cpu
            result["ratio"] = result["status"] / result["bare"]
            rounds.append(result)
    return rounds


def _start_portal(root: Path, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CFN_STATE_DIR": str(root / ".cfn"),
        "CFN_PORTAL_WORKER": "false",
        "CFN_PORTAL_MCP": "off",
    }
    log = open(root / "portal.log", "wb")  # noqa: SIM115 (the process keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfn", "portal", "--port", str(port), "--no-worker"],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"portal exited: {(root / 'portal.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/ping", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("portal did not answer within 60 s")


def main(_argv: list[str]) -> int:
    print(f"start: {_load()} (2 cores; other jobs share the machine)")
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
            journal.save_checkpoint("bench", Checkpoint(), "running")
            for n in range(1, 5):
                journal.save_agent(
                    AgentRecord("bench", f"impl-{n}-1", "implementer", 3, 1, None, "offline", None,
                             "done", None, 0.9)
                )
        token = mint_token(load_secret(settings), "bench", "operator")
        port = free_port()
        portal = _start_portal(root, server.url, port)
        url = f"http://127.0.0.1:{port}"
        try:
            latencies = asyncio.run(_latency(url, settings, server.url, token))
            rounds = asyncio.run(_throughput(url, token, portal.pid))
        finally:
            portal.terminate()
            try:
                portal.wait(20)
            except subprocess.TimeoutExpired:
                portal.kill()
            server.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"event latency emit -> Socket.IO client ({len(latencies)} events): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < 20 ms)")
    for n, r in enumerate(rounds, 1):
        print(f"  round {n}: ping {r['bare']:.0f} req/s ({r['bare_cpu']:.2f} ms CPU), "
              f"status {r['status']:.0f} req/s ({r['status_cpu']:.2f} ms CPU) "
              f"= {r['ratio']:.2f}")
    ratio = statistics.median(r["ratio"] for r in rounds)
    bare_cpu = statistics.median(r["bare_cpu"] for r in rounds)
    status_cpu = statistics.median(r["status_cpu"] for r in rounds)
    print(f"GET /api/tasks/:id/status vs GET /api/ping: {ratio:.2f} of bare (median of "
          f"{ROUNDS} rounds, min {min(r['ratio'] for r in rounds):.2f}; target >= 0.5); "
          f"portal CPU per request {status_cpu:.2f} vs {bare_cpu:.2f} ms "
          f"= {bare_cpu / status_cpu:.2f}; {CONCURRENCY} concurrent clients")
    print(f"end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
