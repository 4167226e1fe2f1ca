"""Collectors killed again and again while completions keep arriving lose nothing.

The default suite runs 3 kill/restart cycles; ``make test-long`` runs 30.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import RedisServer, cfn_env


def collect_cmd(total: int, timeout: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cfn",
        "collect-results",
        "--task-id",
        "S1",
        "--expected",
        str(total),
        "--threshold",
        "0.5",
        "--timeout",
        str(timeout),
        "--json",
    ]


def soak(tmp_path: Path, server: RedisServer, cycles: int, per_cycle: int = 5) -> None:
    env = cfn_env(tmp_path, REDIS_URL=server.url)
    client = server.client()
    total = cycles * per_cycle
    sent = 0
    for _cycle in range(cycles):
        proc = subprocess.Popen(
            collect_cmd(total, 120),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while int(client.pubsub_numpat()) == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        for _ in range(per_cycle):
            sent += 1
            client.lpush(f"coord:S1:payload:a{sent}", json.dumps({"confidence": 0.9}))
            client.lpush("coord:S1:complete", f"a{sent}:success")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while int(client.pubsub_numpat()) != 0:  # the dead collector's subscription is gone
            assert time.monotonic() < deadline
            time.sleep(0.02)
    final = subprocess.run(
        collect_cmd(total, 30),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["arrived"] == total and report["failed"] == 0
    assert client.llen("coord:S1:complete") == total  # nothing consumed


def test_killed_collectors_lose_nothing_short(tmp_path: Path, redis_server: RedisServer) -> None:
    soak(tmp_path, redis_server, cycles=3)


@pytest.mark.long
def test_killed_collectors_lose_nothing_soak(tmp_path: Path, redis_server: RedisServer) -> None:
    soak(tmp_path, redis_server, cycles=30)
