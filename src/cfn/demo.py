"""The coordination primitives, end to end, on the real Redis.

Until the CFN Loop lands this is what ``make run`` shows: a task's context
stored, a lock with its fencing number, agent *processes* (Python ones through
``cfn signal complete`` and, where redis-cli exists, one speaking the seed's
bash wire format with plain ``redis-cli``) reporting completions, a collector
waking on them and judging confidence, then the loop signals. The agents are
labelled as demo agents: they call no LLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from cfn import keys
from cfn.coordination import completion, context, inspect, locks, signals
from cfn.coordination.completion import CollectReport
from cfn.coordination.connection import RedisManager
from cfn.errors import CfnError

THRESHOLD = 0.75  # the standard mode's gate


@dataclass
class DemoResult:
    task_id: str
    redis: str
    fence: int
    report: CollectReport
    loop2_payload: object
    keys: list[str] = field(default_factory=list)
    bash_agent: bool = False


def _agent_commands(
    task_id: str, redis_url: str | None, agents: int
) -> tuple[list[list[str]], dict[str, str], bool]:
    commands: list[list[str]] = []
    for n in range(1, agents + 1):
        confidence = round(0.78 + 0.04 * n, 2)
        payload = json.dumps({"confidence": confidence, "deliverable": f"impl-{n}-1.patch"})
        commands.append(
            [
                sys.executable,
                "-m",
                "cfn",
                "signal",
                "complete",
                "--task-id",
                task_id,
                "--agent-id",
                f"impl-{n}-1",
                "--payload",
                payload,
            ]
        )
    env = dict(os.environ)
    bash = shutil.which("redis-cli") is not None and shutil.which("bash") is not None
    if bash and redis_url:
        parts = urlsplit(redis_url)
        env["REDISCLI_AUTH"] = unquote(parts.password or "")
        port = str(parts.port or 6379)
        host = parts.hostname or "127.0.0.1"
        # The seed's signal_completion, verbatim, with redis-cli aimed at our server.
        script = (
            f'redis-cli() {{ command redis-cli -h {host} -p {port} "$@"; }}\n'
            "signal_completion() {\n"
            '  local task_id="$1"\n  local agent_id="$2"\n'
            '  local result="${3:-success}"\n  local payload="$4"\n'
            '  redis-cli LPUSH "coord:${task_id}:complete" "$agent_id:$result" >/dev/null\n'
            '  if [ -n "$payload" ]; then\n'
            '    redis-cli LPUSH "coord:${task_id}:payload:${agent_id}" "$payload" >/dev/null\n'
            "  fi\n}\n"
            f"signal_completion {task_id} impl-{agents + 1}-1 success "
            '\'{"confidence": 0.81, "agent": "bash"}\'\n'
        )
        commands.append(["bash", "-c", script])
    else:
        bash = False
    return commands, env, bash


async def run_demo(
    redis: RedisManager,
    redis_url: str | None,
    agents: int = 3,
    on_progress: Callable[[str, CollectReport | None], None] | None = None,
) -> DemoResult:
    """Run one coordination round; ``on_progress`` hears each step."""

    def step(text: str, report: CollectReport | None = None) -> None:
        if on_progress is not None:
            on_progress(text, report)

    task_id = f"demo-{secrets.token_hex(4)}"
    step(f"task {task_id}: storing context")
    await context.store_context(
        redis, task_id, "metadata", json.dumps({"epic": "coordination demo", "mode": "standard"})
    )
    lock = await locks.acquire_lock(redis, f"{task_id}.workspace", ttl=60)
    step(f"lock {lock.resource} acquired, fencing number {lock.fence}")

    commands, env, bash = _agent_commands(task_id, redis_url, agents)
    expected = len(commands)
    collector = asyncio.create_task(
        completion.collect_results(
            redis,
            task_id,
            expected,
            THRESHOLD,
            60.0,
            on_update=lambda report: step("collecting", report),
        )
    )
    await asyncio.sleep(0)  # let the collector subscribe before the agents start
    step(f"starting {expected} demo agent processes (no LLM)")
    procs = [
        await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        for cmd in commands
    ]
    for proc in procs:
        _out, errs = await proc.communicate()
        if proc.returncode != 0:
            collector.cancel()
            raise CfnError(f"demo agent failed: {errs.decode(errors='replace').strip()}")
    report = await collector
    step("results collected", report)

    await signals.send_signal(redis, task_id, keys.LOOP3_COMPLETE, json.dumps({"met": report.met}))
    await signals.send_signal(
        redis, task_id, keys.LOOP2_START, json.dumps({"deliverables": task_id})
    )
    loop2 = await signals.wait_signal(redis, task_id, keys.LOOP2_START, 5.0)
    step("loop2:start received")
    await context.store_context(
        redis,
        task_id,
        "deliverables",
        json.dumps([r.payload for r in report.results if r.ok]),
    )
    await locks.release_lock(redis, lock.resource, lock.token)
    found = await inspect.scan_keys(redis, f"*{task_id}*")
    return DemoResult(task_id, redis.active_label, lock.fence, report, loop2, found, bash)
