"""The seed's own bash functions, run with the real redis-cli, against our Python code.

Both directions: bash agents report, our collector judges; our agents report,
the seed's LLEN-polling waiter counts them. Plus a collector process killed
mid-way and started again finds every result.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfn.coordination import completion
from cfn.coordination.connection import RedisManager
from tests.support.servers import RedisServer, cfn_env

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")

# Verbatim from the seed ("Signal Pattern Implementation"); redis-cli is aimed
# at the test's server by a wrapper function, the functions are unchanged.
SEED_FUNCTIONS = r"""
signal_completion() {
  local task_id="$1"
  local agent_id="$2"
  local result="${3:-success}"
  local payload="$4"

  redis-cli LPUSH "coord:${task_id}:complete" "$agent_id:$result" >/dev/null

  if [ -n "$payload" ]; then
    redis-cli LPUSH "coord:${task_id}:payload:${agent_id}" "$payload" >/dev/null
  fi
}

# Wait for all agents in loop
wait_for_loop_completion() {
  local task_id="$1"
  local expected_agents="$2"
  local timeout="${3:-600}"

  local completed=0
  local start_time=$(date +%s)

  while [ $completed -lt $expected_agents ]; do
    local elapsed=$(($(date +%s) - start_time))
    if [ $elapsed -gt $timeout ]; then
      echo "[ERROR] Timeout waiting for agent completion" >&2
      return 1
    fi

    completed=$(redis-cli LLEN "coord:${task_id}:complete" || echo "0")
    sleep 2
  done
}
"""


def bash(server: RedisServer, script: str) -> subprocess.Popen[str]:
    wrapper = f'redis-cli() {{ command redis-cli -p {server.port} "$@"; }}\n'
    return subprocess.Popen(
        ["bash", "-c", wrapper + SEED_FUNCTIONS + script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_bash_agents_python_collector(
    manager: RedisManager, redis_server: RedisServer
) -> None:
    collector = asyncio.create_task(completion.collect_results(manager, "T1", 4, 0.8, 20))
    await asyncio.sleep(0.1)
    script = "\n".join(
        [
            "signal_completion T1 impl-1-1 success '{\"confidence\": 0.9}'",
            "signal_completion T1 impl-2-1 success '{\"confidence\": 0.85}'",
            "signal_completion T1 impl-3-1 error '{\"confidence\": 0.95}'",
            "signal_completion T1 impl-4-1 success",  # no payload: no confidence
        ]
    )
    proc = bash(redis_server, script)
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    report = await collector
    by_agent = {r.agent_id: r for r in report.results}
    assert report.arrived == 4
    assert by_agent["impl-1-1"].confidence == 0.9 and by_agent["impl-1-1"].ok
    assert by_agent["impl-2-1"].confidence == 0.85
    assert not by_agent["impl-3-1"].ok and "error" in (by_agent["impl-3-1"].reason or "")
    assert not by_agent["impl-4-1"].ok and by_agent["impl-4-1"].confidence is None
    assert report.mean == pytest.approx(0.875) and not report.met
    # The seed's payload is a list (LPUSH); the collector read it without consuming.
    assert redis_server.client().lrange("coord:T1:payload:impl-1-1", 0, -1) == [
        '{"confidence": 0.9}'
    ]


async def test_python_agents_seed_bash_waiter(
    manager: RedisManager, redis_server: RedisServer
) -> None:
    waiter = bash(redis_server, "wait_for_loop_completion T1 3 20 && echo DONE")
    await asyncio.sleep(0.3)
    for n in (1, 2, 3):
        await completion.signal_completion(
            manager, "T1", f"impl-{n}-1", "success", json.dumps({"confidence": 0.9})
        )
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out.strip() == "DONE"
    # Our collector beside it still sees all three: nobody consumed the list.
    report = await completion.collect_results(manager, "T1", 3, 0.5, 5)
    assert report.arrived == 3 and report.met


def test_killed_collector_restarted_finds_every_result(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    cmd = [
        sys.executable,
        "-m",
        "cfn",
        "collect-results",
        "--task-id",
        "T1",
        "--expected",
        "6",
        "--threshold",
        "0.5",
        "--timeout",
        "60",
        "--json",
    ]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = redis_server.client()
    deadline = time.monotonic() + 20
    # Wait until the collector is subscribed (it then shows as a pubsub client).
    while int(client.pubsub_numpat()) == 0:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    for n in range(1, 4):
        client.lpush(f"coord:T1:payload:a{n}", json.dumps({"confidence": 0.6 + n / 10}))
        client.lpush("coord:T1:complete", f"a{n}:success")
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    for n in range(4, 7):
        client.lpush(f"coord:T1:payload:a{n}", json.dumps({"confidence": 0.6 + n / 20}))
        client.lpush("coord:T1:complete", f"a{n}:success")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["arrived"] == 6 and report["failed"] == 0 and report["met"]
    assert sorted(r["agent_id"] for r in report["results"]) == [f"a{n}" for n in range(1, 7)]
    assert client.llen("coord:T1:complete") == 6
