"""`cfn agents list|kill`, `cfn logs [-f]`, `cfn stats` on real agent processes
started by `cfn spawn-agent` (each a shell loop that prints and sleeps)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import CFN
from tests.support.servers import RedisServer, cfn_env

TICKER = "sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done'"


def cfn(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFN, *args], env=env, capture_output=True, text=True, timeout=timeout)


def many(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several cfn commands at once (each starts Python: the slow part)."""
    procs = [
        subprocess.Popen(
            [*CFN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    done = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_list_logs_stats_kill(tmp_path: Path, redis_server: RedisServer) -> None:
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url, AGENT_TIMEOUT="120")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    task, other = f"d{uuid.uuid4().hex[:8]}", f"e{uuid.uuid4().hex[:8]}"
    spawned = many(
        env,
        *(
            ["spawn-agent", agent, t, "--command", TICKER, "--workspace", str(workspace)]
            for agent, t in (("impl-1-1", task), ("impl-1-1", other), ("impl-2-1", task))
        ),
    )
    assert all(p.returncode == 0 for p in spawned), [p.stderr for p in spawned]
    try:
        running_json, table = many(
            env, ["agents", "list", "--json"], ["agents", "list", "--task-id", task]
        )
        running = as_json(running_json)
        assert {(a["taskId"], a["agentId"]) for a in running} == {
            (task, "impl-1-1"),
            (other, "impl-1-1"),
            (task, "impl-2-1"),
        }
        assert all(a["status"] == "running" and a["pid"] for a in running)
        assert table.returncode == 0 and "impl-2-1" in table.stdout and other not in table.stdout

        # Follow one agent's log while it runs; it ends when the agent is killed.
        follower = subprocess.Popen(
            [*CFN, "logs", "impl-2-1", "--task-id", task, "--follow"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "follow.err").open("wb"),
            text=True,
        )
        assert follower.stdout is not None
        first: list[str] = []
        while sum(line.startswith("tick ") for line in first) < 3:
            line = follower.stdout.readline()
            assert line, first
            first.append(line)

        # Stats: the running agents' processes, CPU and memory; and without --task-id
        # the shared id is ambiguous: one clear error, nothing stopped.
        stats, table, ambiguous = many(
            env,
            ["stats", "--json", "--interval", "0.3"],
            ["stats", "--interval", "0.2"],
            ["agents", "kill", "impl-1-1"],
        )
        rows = {(s["taskId"], s["agentId"]): s for s in as_json(stats)}
        assert set(rows) == {(a["taskId"], a["agentId"]) for a in running}
        for row in rows.values():
            assert row["processes"] >= 1 and row["rssBytes"] > 100_000
            assert 0 <= row["cpuPercent"] < 250
        assert table.returncode == 0 and "running agent(s)" in table.stdout
        assert ambiguous.returncode == 1 and "--task-id" in ambiguous.stderr
        assert "Traceback" not in ambiguous.stderr

        killed = cfn(env, "agents", "kill", "impl-2-1", "--task-id", task)
        assert killed.returncode == 0, killed.stderr
        assert "killed" in killed.stderr
        out = follower.stdout.read()  # to EOF: the follower exits when the agent has
        assert follower.wait(60) == 0, (tmp_path / "follow.err").read_text()
        lines = first + out.splitlines(keepends=True)
        ticks = [int(line.split()[1]) for line in lines if line.startswith("tick ")]
        assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) >= 3
        record = json.loads(
            (tmp_path / ".cfn" / "tasks" / task / "agents" / "impl-2-1" / "exit.json").read_text()
        )
        assert record["killed"] and record["signal"] == 9

        # The lists after it; logs of an ended agent: all of it, the tail, and
        # --follow, which prints and returns at once.
        started = time.monotonic()
        every, now, whole, tail, ended = many(
            env,
            ["agents", "list", "--json", "--all"],
            ["agents", "list", "--json"],
            ["logs", "impl-2-1", "--task-id", task],
            ["logs", "impl-2-1", "--task-id", task, "--tail", "2"],
            ["logs", "impl-2-1", "--task-id", task, "-f"],
        )
        everything = {(a["taskId"], a["agentId"]): a for a in as_json(every)}
        assert everything[(task, "impl-2-1")]["status"] == "killed"
        assert len(as_json(now)) == 2  # the ambiguous kill stopped nothing
        assert whole.returncode == 0 and "tick 1\n" in whole.stdout
        assert "started cfn-agent-impl-2-1" in whole.stdout  # its supervisor's line
        assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2
        assert whole.stdout.endswith(tail.stdout)
        assert ended.returncode == 0 and ended.stdout == whole.stdout
        assert time.monotonic() - started < 60

        # Bad input: one error each, exit 1 (unknown) or 2 (invalid), nothing stopped.
        cases = [
            (["agents", "kill", "nobody"], 1, "no agent 'nobody'"),
            (["agents", "kill", "impl-2-1", "--task-id", task], 1, "is not running"),
            (["agents", "kill", "impl-*"], 2, "agent id"),
            (["agents", "kill", "impl-1-1", "--task-id", "../x"], 2, "task id"),
            (["logs", "nobody"], 1, "no agent 'nobody'"),
            (["logs", "a\nb"], 2, "agent id"),
            (["logs", "impl-2-1", "--task-id", task, "--tail", "-1"], 2, "--tail"),
            (["stats", "--interval", "0"], 2, "interval"),
            (["agents", "list", "--task-id", "a b"], 2, "task id"),
        ]
        for (args, code, words), proc in zip(
            cases, many(env, *(args for args, _, _ in cases)), strict=True
        ):
            assert proc.returncode == code, (args, proc.stdout, proc.stderr)
            assert words in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    finally:
        many(env, *(["agents", "kill", "impl-1-1", "--task-id", t] for t in (task, other)))
    assert as_json(cfn(env, "agents", "list", "--json")) == []
