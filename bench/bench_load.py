"""Load: many CFN Loop tasks at once, each a real ``cfn orchestrate`` process.

``python -m bench load [--tasks=20] [--agents=5] [--validators=5]``

On our own redis-server (a free port), a temp state dir and one SQLite
database shared by every orchestrator, with the offline provider (no LLM):

* ``baseline``  one task alone (same team), its wall time;
* ``load``      ``--tasks`` tasks started together: ``--agents`` implementers
                each in Loop 3 (so tasks x agents agent processes at once, as far
                as the machine lets them overlap), then ``--validators`` each in
                Loop 2.

Reported: wall time of each, the ratio load / (tasks x baseline) (below 1:
running tasks together beats running them one after the other), peak memory
(sum of RSS of this run's orchestrators, supervisors and agents, sampled every
0.2 s from /proc), the peak number of agent processes alive at once, Redis
commands per second (``total_commands_processed`` delta / wall, and the highest
``instantaneous_ops_per_sec`` seen) and lost results: every agent row must be
``done`` with a confidence and every agent must have its entry on
``coord:{task}:complete``; anything else is counted lost and fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import RedisServer

from cfn.settings import Settings
from cfn.store.repository import Store

PAGE = os.sysconf("SC_PAGE_SIZE")
EPIC = "Build a hello module with tests"


@dataclass
class Sampler:
    """Every 0.2 s: RSS of our process tree, agent processes alive, Redis ops/s."""

    root: int
    redis: Any
    workdir: Path | None = None
    peak_rss: int = 0
    peak_agents: int = 0
    peak_ops: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rss, agents = tree_usage(self.root, self.workdir)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_agents = max(self.peak_agents, agents)
            try:
                ops = int(self.redis.info("stats")["instantaneous_ops_per_sec"])
            except Exception:
                ops = 0
            self.peak_ops = max(self.peak_ops, ops)
            self.samples += 1


def _forked_agents_under(workdir: str, skip: set[int]) -> list[int]:
    """Agents forked by the agent server (children of that server, not of ``root``)
    working under ``workdir``: their comm is their tag ("cfn" + hash), their cwd the
    task's workspace."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb") as handle:
                if not handle.read().startswith(b"cfn"):
                    continue
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == workdir or cwd.startswith(workdir + "/"):
            found.append(int(entry.name))
    return found


def tree_usage(root: int, workdir: Path | None = None) -> tuple[int, int]:
    """(sum of RSS, agent processes) of ``root``'s descendants (not ``root`` itself),
    and of the agents the agent server forked for tasks working under ``workdir``."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    rss = agents = 0
    tree: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    forked = _forked_agents_under(str(workdir), set(tree)) if workdir is not None else []
    for pid in [*tree, *forked]:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                rss += int(handle.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if pid in forked or b"\0agent\0run\0--context\0" in handle.read():
                    agents += 1
        except (OSError, IndexError, ValueError):
            continue
    return rss, agents


@dataclass
class Run:
    tasks: int
    wall: float
    failed: list[str]
    lost: int
    results: int
    iterations: int
    commands: int
    peak_rss: int
    peak_agents: int
    peak_ops: int
    #: Why results were lost: "status: reason" -> count.
    causes: dict[str, int] = field(default_factory=dict)
    #: CPU seconds of the agent processes (their exit records), and how many.
    agent_cpu: float = 0.0
    agents: int = 0

    @property
    def ops_per_sec(self) -> float:
        return self.commands / self.wall if self.wall > 0 else 0.0


def run_tasks(
    env: dict[str, str],
    settings: Settings,
    redis: Any,
    names: list[str],
    implementers: int,
    validators: int,
    workdir: Path,
) -> Run:
    """Start one ``cfn orchestrate`` per task name at once; wait for all; count results."""
    before = int(redis.info("stats")["total_commands_processed"])
    sampler = Sampler(os.getpid(), redis, workdir.resolve()).start()
    began = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cfn",
                "orchestrate",
                "--task-id",
                name,
                "--epic",
                EPIC,
                "--mode",
                "mvp",
                "--implementers",
                str(implementers),
                "--validators",
                str(validators),
                "--provider",
                "offline",
                "--workspace",
                str(workdir / name),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"{name}.err", "wb"),  # noqa: SIM115 - closed on exit
        )
        for name in names
    }
    codes = {name: proc.wait() for name, proc in procs.items()}
    wall = time.monotonic() - began
    sampler.stop()
    commands = int(redis.info("stats")["total_commands_processed"]) - before
    failed = [f"{n} (exit {c})" for n, c in codes.items() if c != 0]
    lost = results = iterations = 0
    causes: dict[str, int] = {}
    agent_cpu, agent_count = 0.0, 0
    for name in names:
        for record in (settings.state_dir / "tasks" / name / "agents").glob("*/exit.json"):
            data = json.loads(record.read_text())
            agent_cpu += float(data.get("cpu_user") or 0) + float(data.get("cpu_system") or 0)
            agent_count += 1
    with Store.open(settings) as store:
        for name in names:
            agents = store.list_agents(name)
            iterations += len(store.iterations(name))
            reported = set(redis.lrange(f"coord:{name}:complete", 0, -1))
            for agent in agents:
                ok = agent.status == "done" and agent.confidence is not None
                entry = any(r.startswith(f"{agent.agent_id}:") for r in reported)
                if ok and entry:
                    results += 1
                else:
                    lost += 1
                    why = f"{agent.status}: {(agent.reason or 'no reason recorded')[:120]}"
                    if ok:
                        why = "done, but no entry on coord:{task}:complete"
                    causes[why] = causes.get(why, 0) + 1
            if not agents:
                lost += implementers + validators
    return Run(
        tasks=len(names),
        wall=wall,
        failed=failed,
        lost=lost,
        results=results,
        iterations=iterations,
        commands=commands,
        peak_rss=sampler.peak_rss,
        peak_agents=sampler.peak_agents,
        peak_ops=sampler.peak_ops,
        causes=causes,
        agent_cpu=agent_cpu,
        agents=agent_count,
    )


def load_env(root: Path, redis_url: str, heartbeat: float | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CFN_"))}
    env.pop("DATABASE_URL", None)
    env.pop("DB_PATH", None)
    (root / "agents").mkdir(exist_ok=True)
    env.update(
        {
            "REDIS_URL": redis_url,
            "CFN_STATE_DIR": str(root / ".cfn"),
            "CFN_AGENTS_DIR": str(root / "agents"),
            # 100 agents starting on 2 cores: generous, so only real faults fail a run.
            # The heartbeat interval stays cfn's default unless --heartbeat says otherwise.
            "AGENT_TIMEOUT": "1800",
        }
    )
    if heartbeat is not None:
        # The orchestrator's start-up grace is max(60 s, 2 x this): see docs/benchmarks.md.
        env["CFN_AGENT_HEARTBEAT_INTERVAL"] = repr(heartbeat)
    return env


def run_load(
    root: Path,
    tasks: int,
    implementers: int,
    validators: int,
    *,
    baseline: bool = True,
    heartbeat: float | None = None,
) -> tuple[Run | None, Run]:
    """The baseline (one task) and the load run, on a fresh redis-server under ``root``."""
    server = RedisServer(root / "redis", notify="Klgx").start()
    try:
        env = load_env(root, server.url, heartbeat)
        settings = Settings(cfn_state_dir=root / ".cfn")
        Store.open(settings).close()  # migrate once, before 20 processes race to
        client = server.client()
        (root / "ws").mkdir(exist_ok=True)
        base = (
            run_tasks(env, settings, client, ["base-1"], implementers, validators, root / "ws")
            if baseline
            else None
        )
        names = [f"load-{i + 1}" for i in range(tasks)]
        load = run_tasks(env, settings, client, names, implementers, validators, root / "ws")
        return base, load
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--agents", type=int, default=5, help="implementers per task")
    parser.add_argument("--validators", type=int, default=5)
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        help="CFN_AGENT_HEARTBEAT_INTERVAL for the run (default: cfn's, 5 s)",
    )
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="cfn-load-")
    base, load = run_load(
        Path(tmp), args.tasks, args.agents, args.validators, heartbeat=args.heartbeat
    )
    assert base is not None
    for run in (base, load):
        for name in run.failed:
            err = Path(tmp) / "ws" / f"{name.split()[0]}.err"
            text = err.read_text()[-2000:] if err.exists() else ""
            if text.strip():
                print(f"--- {name} stderr:\n{text}")
        for why, count in sorted(run.causes.items(), key=lambda kv: -kv[1])[:8]:
            print(f"lost x{count}: {why}")
    mib = 1024 * 1024
    print(
        f"tasks={args.tasks} implementers={args.agents} validators={args.validators} "
        f"(mode mvp, offline provider, SQLite, one redis-server), {os.cpu_count()} CPUs, "
        f"heartbeat interval {args.heartbeat or 'default'}"
    )
    for label, run in (("baseline (1 task)", base), (f"load ({load.tasks} tasks)", load)):
        print(
            f"{label:20} wall {run.wall:7.1f} s  iterations {run.iterations:3}  "
            f"results {run.results:4}  lost {run.lost}  failed {len(run.failed)}  "
            f"peak agents at once {run.peak_agents:3}  peak RSS {run.peak_rss / mib:7.0f} MiB  "
            f"redis {run.ops_per_sec:7.0f} cmd/s (peak {run.peak_ops} ops/s)  "
            f"agent CPU {run.agent_cpu / max(1, run.agents):.2f} s each ({run.agents} agents)"
        )  # fmt: skip
    ratio = load.wall / (load.tasks * base.wall)
    print(f"ratio load wall / ({load.tasks} x baseline wall) = {ratio:.2f}")
    ok = not load.failed and load.lost == 0 and not base.failed and base.lost == 0
    one, _five, fifteen = os.getloadavg()
    print(f"load average at the end: {one:.1f} (1 min), {fifteen:.1f} (15 min)")
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
        print("all tasks finished, zero lost results")
    else:
        print(f"[FAIL] failed tasks or lost results; state kept in {tmp}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
