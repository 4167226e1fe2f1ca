"""Spawning N process agents that report at once, until all N results are collected.

The orchestrator (this process) starts ``collect_results(expected=N)`` and
waits until it listens; the clock starts at the first spawn and stops when the
collector returns with all N results. Modes, alternating, on our own
redis-server (a free port) with a temp state dir:

* ``baseline``  N ``subprocess.Popen`` of ``python -c`` that imports redis (sync)
                and LPUSHes one ``{agent}:success`` onto ``coord:{task}:complete``.
* ``direct``    N ``subprocess.Popen`` of the cfn agent script (imports
                ``cfn.coordination``, ``signal_completion`` with a confidence),
                no supervisor: the cost of cfn's import and report alone.
* ``cfn-nocg``  ``ProcessSpawner`` with CFN_AGENT_CGROUPS=off (RLIMIT_AS): the
                same script under the per-agent supervisor, without cgroups.
* ``cfn``       ``ProcessSpawner`` as configured by default (cgroup v1 memory and
                cpu groups where writable) running the script: a command of its own.
* ``cfn-builtin`` ``ProcessSpawner`` with no command: cfn's own agent runtime (the
                offline provider, a whole conversation, its completion), forked
                from the agent server (docs/agents.md); its CPU is the agents' own
                (exit records), as a forked agent is not this process's child.

The target compares ``cfn`` with ``baseline`` (at most 1.5x); ``direct`` and
``cfn-nocg`` say where the difference goes (interpreter start-up and imports,
the supervisor, cgroup setup). Every mode must deliver all N results.

Memory: the orchestrator's peak RSS (VmHWM, reset through /proc/self/clear_refs
before each run) and each agent's peak RSS (its own VmHWM, sent in its payload;
the supervisor's exit record ``max_rss_bytes``; ``wait4`` for Popen children).
CPU: everything the run's processes used (RUSAGE_CHILDREN of the orchestrator,
which includes agents the supervisors reaped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from tests.support.servers import RedisServer

from cfn import keys
from cfn.agents.context import generate_cli_context
from cfn.agents.spawn.process import ProcessHandle, ProcessSpawner
from cfn.coordination.completion import collect_results
from cfn.coordination.connection import RedisManager
from cfn.settings import Settings

TARGET_RATIO = 1.5
MODES = ("baseline", "direct", "cfn-nocg", "cfn", "cfn-builtin")
CONFIDENCE = 0.9

#: The agent: cfn's coordination, one completion with a confidence and its own peak RSS.
AGENT_SCRIPT = """\
import asyncio, json, os

from cfn.coordination import RedisManager, signal_completion


def peak_rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


async def main():
    manager = RedisManager.from_url(os.environ["REDIS_URL"])
    await manager.connect()
    try:
        payload = json.dumps({"confidence": CONFIDENCE, "vm_hwm_bytes": peak_rss()})
        await signal_completion(
            manager, os.environ["TASK_ID"], os.environ["AGENT_ID"], "success", payload
        )
    finally:
        await manager.close()


asyncio.run(main())
""".replace("CONFIDENCE", repr(CONFIDENCE))

#: The baseline: import redis, LPUSH one completion (the key comes from the environment).
BASELINE_CODE = (
    "import os, redis; "
    "redis.Redis.from_url(os.environ['REDIS_URL'])"
    ".lpush(os.environ['COMPLETE_KEY'], os.environ['AGENT_ID'] + ':success')"
)


def now() -> float:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    mode: str
    agents: int
    seconds: float  # first spawn -> all N collected
    spawned_s: float  # first spawn -> last spawn call returned
    arrived: int
    failed: int
    orchestrator_peak: int
    agent_rss: list[int] = field(default_factory=list)  # per agent, bytes
    agent_hwm: list[int] = field(default_factory=list)  # VmHWM the agent sent
    cpu_s: float = 0.0  # every process of the run
    agent_cpu_s: float | None = None  # agents only (spawner modes: from exit records)
    limits: str = ""


async def _wait_listening(probe: redis.Redis, before: int, task: asyncio.Task[Any]) -> None:
    deadline = now() + 30
    while int(probe.pubsub_numpat()) < before + 2:
        if task.done() or now() > deadline:
            raise RuntimeError("collector never subscribed")
        await asyncio.sleep(0.002)


def _reap(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Wait for each child with wait4: its peak RSS (bytes)."""
    rss: list[int] = []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"agent pid {proc.pid} exited with {proc.returncode}")
        rss.append(usage.ru_maxrss * 1024)
    return rss


async def run_once(
    mode: str, n: int, url: str, port: int, base: Path, script: Path, round_no: int
) -> Run:
    task = f"spawn-{mode}-{n}-{round_no}"
    agents = [f"impl-{i}-1" for i in range(n)]
    workspace = base / "workspace"
    workspace.mkdir(exist_ok=True)
    settings = Settings(
        cfn_state_dir=base / "state",
        cfn_agent_cgroups="off" if mode == "cfn-nocg" else "auto",
        redis_url=url,
    )
    spawner = ProcessSpawner(settings, redis_url=url)
    contexts = [
        generate_cli_context(
            task,
            agent,
            settings=settings,
            redis_host="127.0.0.1",
            redis_port=port,
            workspace=workspace,
            role="implementer",
            provider="offline",
            epic=f"Say hello. offline-confidence: {CONFIDENCE}",
        )
        for agent in agents
    ]
    env = {**os.environ, "REDIS_URL": url, "TASK_ID": task}
    manager = RedisManager.from_url(url, settings)
    await manager.connect()
    probe = redis.Redis.from_url(url)
    grace = 0.0 if mode == "baseline" else 1.0  # the baseline sends no payload
    procs: list[subprocess.Popen[bytes]] = []
    handles: list[ProcessHandle] = []
    try:
        before = int(probe.pubsub_numpat())
        collector = asyncio.create_task(
            collect_results(
                manager, task, expected=n, threshold=0.5, timeout=300.0, payload_grace=grace
            )
        )
        await _wait_listening(probe, before, collector)
        cpu0 = children_cpu()
        reset_peak_rss()
        t0 = now()
        if mode == "baseline":
            key = keys.coord_complete(task)
            for agent in agents:
                agent_env = {**env, "AGENT_ID": agent, "COMPLETE_KEY": key}
                procs.append(subprocess.Popen([sys.executable, "-c", BASELINE_CODE], env=agent_env))
        elif mode == "direct":
            for agent in agents:
                agent_env = {**env, "AGENT_ID": agent}
                procs.append(subprocess.Popen([sys.executable, str(script)], env=agent_env))
        elif mode == "cfn-builtin":
            # cfn's own agent runtime (offline provider), forked from the agent server.
            handles = list(await asyncio.gather(*(spawner.spawn(c) for c in contexts)))
        else:
            command = [sys.executable, str(script)]
            handles = list(
                await asyncio.gather(*(spawner.spawn(c, command=command) for c in contexts))
            )
        t_spawned = now()
        report = await collector
        t1 = now()
        peak = vm_hwm()
    finally:
        probe.close()
        await manager.close()
    if procs:
        rss = _reap(procs)
        agent_cpu = None
    else:
        infos = [await h.wait() for h in handles]
        bad = [i for i in infos if not i.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} agents failed, e.g. {bad[0].reason}")
        rss = [int(i.record.get("max_rss_bytes") or 0) for i in infos]
        agent_cpu = sum(i.cpu_seconds or 0.0 for i in infos)
    cpu = children_cpu() - cpu0
    hwm = [
        int(r.payload["vm_hwm_bytes"])
        for r in report.results
        if isinstance(r.payload, dict) and r.payload.get("vm_hwm_bytes")
    ]
    if report.arrived != n or report.timed_out:
        raise RuntimeError(f"{mode}: {report.arrived} of {n} results arrived (lost results)")
    failed = len(report.failed)
    if mode != "baseline" and (failed or abs((report.mean or 0) - CONFIDENCE) > 1e-9):
        raise RuntimeError(f"{mode}: {failed} failed reports, mean {report.mean}")
    return Run(
        mode,
        n,
        t1 - t0,
        t_spawned - t0,
        report.arrived,
        failed if mode != "baseline" else 0,
        peak,
        rss,
        hwm,
        cpu,
        agent_cpu,
        handles[0].limits if handles else "none",
    )


def mib(value: float) -> str:
    return f"{value / 1048576:.1f}"


def report(runs: dict[int, dict[str, list[Run]]], console: Console) -> bool:
    table = Table(title="Spawn N agents -> all N results collected (median of rounds)")
    for column in (
        "N",
        "mode",
        "s (rounds)",
        "spawn calls s",
        "vs baseline",
        "CPU vs baseline",
        "lost",
        "orch. peak MiB",
        "agent RSS MiB med/max",
        "agent VmHWM MiB",
        "CPU s (agents)",
        "limits",
    ):
        table.add_column(column, justify="left" if column in {"mode", "limits"} else "right")
    met = True
    for n, by_mode in runs.items():
        base = statistics.median(r.seconds for r in by_mode["baseline"])
        base_cpu = statistics.median(r.cpu_s for r in by_mode["baseline"])
        for mode, rs in by_mode.items():
            med = statistics.median(r.seconds for r in rs)
            ratio = med / base
            if mode == "cfn" and ratio > TARGET_RATIO:
                met = False
            rss = [x for r in rs for x in r.agent_rss]
            hwm = [x for r in rs for x in r.agent_hwm]
            cpu = statistics.median(r.cpu_s for r in rs)
            agent_cpu = [r.agent_cpu_s for r in rs if r.agent_cpu_s is not None]
            cpu_text = f"{cpu:.1f}" + (
                f" ({statistics.median(agent_cpu):.1f})" if agent_cpu else ""
            )
            table.add_row(
                str(n),
                mode,
                f"{med:.2f} (" + " ".join(f"{r.seconds:.2f}" for r in rs) + ")",
                f"{statistics.median(r.spawned_s for r in rs):.2f}",
                f"{ratio:.2f}",
                f"{cpu / base_cpu:.2f}",
                str(sum(n - r.arrived for r in rs)),
                mib(max(r.orchestrator_peak for r in rs)),
                f"{mib(statistics.median(rss))}/{mib(max(rss))}" if rss else "-",
                mib(statistics.median(hwm)) if hwm else "-",
                cpu_text,
                rs[0].limits,
            )
    console.print(table)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"  load average (1/5/15 min) at the end: {load} on {os.cpu_count()} cores")
    return met


def startup_costs(script_dir: Path, samples: int) -> dict[str, float]:
    """Wall time of one process, started alone (median): where a spawn's time goes."""
    python = sys.executable
    commands = {
        "python -I -S (supervisor interpreter)": [python, "-I", "-S", "-c", "pass"],
        "python (venv, site)": [python, "-c", "pass"],
        "python: import redis": [python, "-c", "import redis"],
        "python: import cfn.coordination": [python, "-c", "import cfn.coordination"],
    }
    result: dict[str, float] = {}
    for name, argv in commands.items():
        times = []
        for _ in range(samples):
            t0 = now()
            subprocess.run(argv, check=True, cwd=script_dir)
            times.append(now() - t0)
        result[name] = statistics.median(times)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench spawn", description=__doc__)
    parser.add_argument("--sizes", default="10,50,100", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=1, help="per mode and N, alternating")
    parser.add_argument("--startup-samples", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    console = Console(width=max(Console().width, 150))
    runs: dict[int, dict[str, list[Run]]] = {n: {m: [] for m in MODES} for n in sizes}
    try:
        with tempfile.TemporaryDirectory(prefix="cfn-bench-spawn-") as tmp:
            base = Path(tmp)
            script = base / "agent.py"
            script.write_text(AGENT_SCRIPT)
            server = RedisServer(base / "redis").start()
            if server.port == 6379:
                raise RuntimeError("refusing port 6379")
            try:
                costs = startup_costs(base, args.startup_samples)
                # Round 0 warms caches (and the page cache of every import); not reported.
                for round_no in range(args.rounds + 1):
                    for n in sizes if round_no else [min(sizes)]:
                        for mode in MODES:
                            run = asyncio.run(
                                run_once(mode, n, server.url, server.port, base, script, round_no)
                            )
                            if round_no:
                                runs[n][mode].append(run)
            finally:
                server.stop()
    except Exception as exc:
        print(f"[ERROR] spawn benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    met = report(runs, console)
    console.print("  one process started alone, wall time (median):")
    for name, seconds in costs.items():
        console.print(f"    {name:<40} {seconds * 1000:7.1f} ms")
    biggest = max(sizes)
    ratio = statistics.median(r.seconds for r in runs[biggest]["cfn"]) / statistics.median(
        r.seconds for r in runs[biggest]["baseline"]
    )
    console.print(
        f"  {'[green]met' if met else '[red]MISSED'}[/]  cfn vs baseline at N={biggest}: "
        f"{ratio:.2f}x (target <= {TARGET_RATIO:g}x at every N); no result lost in any run "
        f"(each run asserts all N arrived)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
