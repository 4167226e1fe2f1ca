"""Completions reported and collected per second, 1,000 agents.

Every mode writes the same entries per agent, on the same redis-server (our
own, on a free port), and reads every confidence back:

    LPUSH coord:{task}:payload:{agent} '{"confidence": 0.9, ...}'
    SET   swarm:{task}:result:{agent}  (same JSON)
    LPUSH coord:{task}:complete        "{agent}:success"

* ``raw``      the floor: one process, one connection, ONE non-transactional
               pipeline for all 3,000 writes, then LRANGE of the list and one
               pipeline of 1,000 LINDEX reads, confidences JSON-parsed.
               No waiting, no notifications, no per-agent round trip.
* ``raw-multi`` per-agent like real agents: ``--concurrency`` asyncio workers,
               each completion its own MULTI/EXEC (redis.asyncio, no cfn code),
               read back as ``raw`` does. Separates "one round trip per agent"
               from cfn's own overhead.
* ``raw-eval`` as ``raw-multi`` but each completion is one EVALSHA of a Lua
               script doing the same three writes (atomic like MULTI/EXEC, one
               command and one reply instead of five): what a script-based
               ``signal_completion`` would reach.
* ``cfn``      ``signal_completion`` from ``--concurrency`` asyncio workers (one
               MULTI/EXEC per agent, as cfn does) while ``collect_results(
               expected=1000)`` runs in a second process, woken by keyspace
               notifications. The clock starts at the first report and stops
               when the collector returns a full, judged report.

Connections are opened before the clock starts in every mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table
from tests.support.servers import RedisServer

from cfn import keys
from cfn.coordination.completion import collect_results, signal_completion
from cfn.coordination.connection import RedisManager

TARGET_RATIO = 0.5
MODES = ("raw", "raw-multi", "raw-eval", "cfn")
COMPLETE_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('LPUSH', KEYS[3], ARGV[1])
"""


def now() -> float:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9


def agent_ids(n: int) -> list[str]:
    return [f"impl-{i}-1" for i in range(n)]


def payload_for(agent: str) -> str:
    return json.dumps({"confidence": 0.9, "agent": agent, "summary": "done"})


@dataclass
class Run:
    mode: str
    agents: int
    reported_s: float  # writes only
    total_s: float  # writes + every confidence read back
    extra: dict[str, Any] = field(default_factory=dict)


# --- raw -------------------------------------------------------------------------


def run_raw(url: str, task: str, n: int) -> Run:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.ping()
    agents = agent_ids(n)
    payloads = [payload_for(a) for a in agents]
    complete = keys.coord_complete(task)
    t0 = now()
    pipe = client.pipeline(transaction=False)
    for agent, payload in zip(agents, payloads, strict=True):
        pipe.lpush(keys.coord_payload(task, agent), payload)
        pipe.set(keys.swarm_result(task, agent), payload)
        pipe.lpush(complete, f"{agent}:success")
    pipe.execute()
    t1 = now()
    mean = _read_back_sync(client, task)
    t2 = now()
    client.close()
    return Run("raw", n, t1 - t0, t2 - t0, {"mean": mean})


def _read_back_sync(client: redis.Redis, task: str) -> float:
    entries = client.lrange(keys.coord_complete(task), 0, -1)
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.lindex(keys.coord_payload(task, str(entry).partition(":")[0]), 0)
    confidences = [float(json.loads(raw)["confidence"]) for raw in pipe.execute()]
    return statistics.fmean(confidences)


# --- raw per-agent: MULTI/EXEC or one EVALSHA ------------------------------------


async def run_raw_per_agent(mode: str, url: str, task: str, n: int, concurrency: int) -> Run:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await _warm(concurrency, lambda: client.ping())
    script = client.register_script(COMPLETE_LUA)
    await client.script_load(COMPLETE_LUA)
    agents = agent_ids(n)
    payloads = {a: payload_for(a) for a in agents}
    complete = keys.coord_complete(task)

    async def report_multi(agent: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.coord_payload(task, agent), payloads[agent])
            pipe.set(keys.swarm_result(task, agent), payloads[agent])
            pipe.lpush(complete, f"{agent}:success")
            await pipe.execute()

    async def report_eval(agent: str) -> None:
        await script(
            keys=[keys.coord_payload(task, agent), keys.swarm_result(task, agent), complete],
            args=[f"{agent}:success", payloads[agent]],
        )

    report = report_multi if mode == "raw-multi" else report_eval

    t0 = now()
    await _workers(agents, concurrency, report)
    t1 = now()
    entries = await client.lrange(complete, 0, -1)
    async with client.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.lindex(keys.coord_payload(task, str(entry).partition(":")[0]), 0)
        raws = await pipe.execute()
    mean = statistics.fmean(float(json.loads(r)["confidence"]) for r in raws)
    t2 = now()
    await client.aclose()
    return Run(mode, n, t1 - t0, t2 - t0, {"mean": mean})


async def _workers(agents: list[str], concurrency: int, report: Any) -> None:
    queue = iter(agents)

    async def worker() -> None:
        for agent in queue:
            await report(agent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _warm(concurrency: int, op: Any) -> None:
    """Open ``concurrency`` pooled connections before the clock starts."""
    await asyncio.gather(*(op() for _ in range(concurrency)))


# --- cfn ---------------------------------------------------------------------------


def _collector(url: str, task: str, n: int, out: Connection) -> None:
    async def collect() -> dict[str, Any]:
        manager = RedisManager.from_url(url)
        await manager.connect()
        result = await collect_results(manager, task, expected=n, threshold=0.5, timeout=120.0)
        done = now()
        await manager.close()
        return {
            "done": done,
            "arrived": result.arrived,
            "failed": len(result.failed),
            "mean": result.mean,
            "timed_out": result.timed_out,
        }

    try:
        out.send(asyncio.run(collect()))
    except BaseException as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        out.close()


async def run_cfn(
    ctx: mp.context.SpawnContext, url: str, task: str, n: int, concurrency: int
) -> Run:
    probe = redis.Redis.from_url(url, decode_responses=True)
    recv, send = ctx.Pipe(duplex=False)
    collector = ctx.Process(target=_collector, args=(url, task, n, send), daemon=True)
    collector.start()
    send.close()
    manager = RedisManager.from_url(url)
    try:
        await _warm(concurrency, lambda: manager.run(lambda r: r.ping()))
        agents = agent_ids(n)
        payloads = {a: payload_for(a) for a in agents}
        # The collector is listening once both of its patterns are subscribed.
        deadline = now() + 30
        while int(probe.pubsub_numpat()) < 2:
            if now() > deadline or not collector.is_alive():
                raise RuntimeError("collector never subscribed")
            time.sleep(0.005)

        async def report(agent: str) -> None:
            await signal_completion(manager, task, agent, "success", payloads[agent])

        t0 = now()
        await _workers(agents, concurrency, report)
        t1 = now()
        if not recv.poll(120):
            raise TimeoutError("collector reported nothing within 120 s")
        got: dict[str, Any] = recv.recv()
    finally:
        await manager.close()
        probe.close()
        collector.join(10)
        if collector.is_alive():
            collector.kill()
    if "error" in got:
        raise RuntimeError(f"collector failed: {got['error']}")
    if got["arrived"] != n or got["failed"] or got["timed_out"]:
        raise RuntimeError(f"collector saw {got}, expected {n} successful results")
    # Collected means both sides are done: the collector may return before the
    # reporters' event loop has resumed its last EXEC.
    return Run("cfn", n, t1 - t0, max(t1, got["done"]) - t0, {"mean": got["mean"]})


# --- report ------------------------------------------------------------------------


def report(runs: dict[str, list[Run]], console: Console) -> None:
    def rate(r: Run, total: bool = True) -> float:
        return r.agents / (r.total_s if total else r.reported_s)

    med = {m: statistics.median(rate(r) for r in rs) for m, rs in runs.items()}
    med_rep = {m: statistics.median(rate(r, False) for r in rs) for m, rs in runs.items()}
    table = Table(title=f"Completions of {next(iter(runs.values()))[0].agents:,} agents")
    for column in (
        "mode",
        "rounds",
        "reported/s",
        "reported+collected/s",
        "per round (r+c/s)",
        "vs raw",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, rs in runs.items():
        table.add_row(
            mode,
            str(len(rs)),
            f"{med_rep[mode]:,.0f}",
            f"{med[mode]:,.0f}",
            " ".join(f"{rate(r):,.0f}" for r in rs),
            f"{med[mode] / med['raw']:.3f}",
        )
    console.print(table)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(
        f"  load average (1/5/15 min) at the end: {load} on {os.cpu_count()} cores; "
        "other work on the machine shows up in p99 and rates"
    )
    ratio = med["cfn"] / med["raw"]
    ok = ratio >= TARGET_RATIO
    console.print(
        f"  {'[green]met' if ok else '[red]MISSED'}[/]  cfn reported+collected/s is "
        f"{ratio:.3f} of raw pipelined (target >= {TARGET_RATIO:g}); "
        f"per-agent MULTI without cfn code: {med['raw-multi'] / med['raw']:.3f} of raw; "
        f"cfn vs raw-multi: {med['cfn'] / med['raw-multi']:.2f}; "
        f"per-agent EVALSHA (proposed): {med['raw-eval'] / med['raw']:.3f} of raw"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench completions", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="async reporters")
    parser.add_argument("--rounds", type=int, default=5, help="per mode, alternating")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    ctx = mp.get_context("spawn")
    runs: dict[str, list[Run]] = {m: [] for m in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="cfn-bench-") as tmp:
            server = RedisServer(Path(tmp) / "redis").start()
            flusher = server.client()
            try:
                # Round 0 warms the server and the code paths; it is not reported.
                for round_no in range(args.rounds + 1):
                    for mode in MODES:
                        task = f"bench-{mode}-{round_no}"
                        if mode == "raw":
                            run = run_raw(server.url, task, args.agents)
                        elif mode in {"raw-multi", "raw-eval"}:
                            run = asyncio.run(
                                run_raw_per_agent(
                                    mode, server.url, task, args.agents, args.concurrency
                                )
                            )
                        else:
                            run = asyncio.run(
                                run_cfn(ctx, server.url, task, args.agents, args.concurrency)
                            )
                        if abs(run.extra["mean"] - 0.9) > 1e-9:
                            raise RuntimeError(f"{mode}: mean confidence {run.extra['mean']}")
                        if round_no:
                            runs[mode].append(run)
                        flusher.flushdb()
            finally:
                flusher.close()
                server.stop()
    except Exception as exc:
        print(f"[ERROR] completions benchmark failed: {exc}", file=sys.stderr)
        return 1
    report(runs, console)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
