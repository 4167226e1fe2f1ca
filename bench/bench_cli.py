"""What a bash agent pays per coordination call: ``cfn signal send`` against ``redis-cli``.

Compared in the same run, on the same redis-server (our own, on a free port), each
one a fresh process started the way a script starts it, wall time from fork to exit:

* ``bare``       ``python -c pass``: the interpreter alone, the floor of any Python CLI.
* ``redis-cli``  ``redis-cli -p PORT LPUSH coord:{task}:{channel} {}``: the seed's way.
* ``cfn``        ``cfn signal send`` with the checkout's agent server up: the launcher
                 hands it to a process forked from the server (cfn/cli/launch.py).
* ``cfn-plain``  ``CFN_AGENT_SERVER=off cfn signal send``: the CLI imported in the process.

Each mode runs ``--samples`` times, interleaved round by round, after a warm-up; the
median and p90 are reported, with ``cfn``'s ratio to ``redis-cli``. Target: ``cfn``'s
median at most 60 ms. Every sample's exit code is checked and the pushed entries counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table
from tests.support.servers import RedisServer, cfn_env

TASK = "bench-cli"
CHANNEL = "go"
TARGET_MS = 60.0
MODES = ("bare", "redis-cli", "cfn", "cfn-plain")


def commands(port: int, cfn: str) -> dict[str, list[str]]:
    send = [cfn, "signal", "send", "--task-id", TASK, "--channel", CHANNEL, "--payload", "{}"]
    return {
        "bare": [sys.executable, "-c", "pass"],
        "redis-cli": ["redis-cli", "-p", str(port), "LPUSH", f"coord:{TASK}:{CHANNEL}", "{}"],
        "cfn": send,
        "cfn-plain": send,
    }


def time_once(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[:300]}")
    return took


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cli", description=__doc__)
    parser.add_argument("--samples", type=int, default=20, help="per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded, per mode")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 100))
    cfn = shutil.which("cfn", path=str(Path(sys.executable).parent))
    if cfn is None:
        print("[ERROR] no cfn executable beside this Python", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="cfn-bench-") as tmp:
            server = RedisServer(Path(tmp) / "redis").start()
            env = cfn_env(
                Path(tmp), REDIS_URL=server.url, CFN_AGENT_SERVER_DIR=str(Path(tmp) / "srv")
            )
            envs = {m: env for m in MODES}
            envs["cfn-plain"] = {**env, "CFN_AGENT_SERVER": "off"}
            argvs = commands(server.port, cfn)
            try:
                subprocess.run(
                    [cfn, "agents", "server", "start"], env=env, check=True, capture_output=True
                )
                for mode in MODES:
                    for _ in range(args.warmup):
                        time_once(argvs[mode], envs[mode])
                for _ in range(args.samples):
                    for mode in MODES:
                        times[mode].append(time_once(argvs[mode], envs[mode]))
                client = redis.Redis(port=server.port)
                pushed = int(client.llen(f"coord:{TASK}:{CHANNEL}"))
                client.close()
            finally:
                subprocess.run([cfn, "agents", "server", "stop"], env=env, capture_output=True)
                server.stop()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"[ERROR] cli benchmark failed: {exc}", file=sys.stderr)
        return 1
    expected = (args.samples + args.warmup) * 3
    report(times, pushed, expected, console)
    met = statistics.median(times["cfn"]) * 1000 <= TARGET_MS and pushed == expected
    return 0 if met else 1


def report(times: dict[str, list[float]], pushed: int, expected: int, console: Console) -> None:
    base = statistics.median(times["redis-cli"])
    load = os.getloadavg()[0]
    table = Table(title=f"One coordination call, a fresh process each (load {load:.2f})")
    for column in ("mode", "median ms", "p90 ms", "vs redis-cli"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, values in times.items():
        ordered = sorted(values)
        median = statistics.median(ordered)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        table.add_row(mode, f"{median * 1000:.1f}", f"{p90 * 1000:.1f}", f"{median / base:.2f}x")
    console.print(table)
    median = statistics.median(times["cfn"]) * 1000
    verdict = "[green]met[/]" if median <= TARGET_MS else "[red]not met[/]"
    console.print(
        f"cfn signal send median {median:.1f} ms (target <= {TARGET_MS:.0f} ms): {verdict}; "
        f"entries pushed {pushed}/{expected}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
