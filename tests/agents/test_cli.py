"""`cfn spawn-agent AGENT_ID TASK_ID [MODE] [PROVIDER]`, as the seed's spawn-agent.sh."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from cfn.agents.spawn.process import ProcessSpawner
from cfn.settings import Settings
from tests.conftest import CFN
from tests.support.servers import RedisServer, cfn_env

SHOW = "sh -c 'echo seen $AGENT_ID $TASK_ID $MODE $PROVIDER $COMPOSE_PROJECT_NAME'"


async def _logs_when_done(tmp_path: Path, task_id: str, agents: Iterable[str]) -> dict[str, str]:
    """Each detached agent's log, once it has ended well (re-attached by its pid)."""
    spawner = ProcessSpawner(Settings(cfn_state_dir=tmp_path / ".cfn"))
    logs = {}
    for agent in agents:
        handle = await spawner.attach(task_id, agent)
        assert (await handle.wait()).ok
        logs[agent] = handle.log_path.read_text()
    return logs


async def test_spawn_agent_prints_the_name_and_runs_detached(
    tmp_path: Path, redis_server: RedisServer, task_id: str, workspace: Path
) -> None:
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    runs = {
        "impl-1-1": [],
        "impl-1-2": ["cli", "kimi"],
    }
    procs = {
        agent: subprocess.Popen(
            [
                *CFN,
                "spawn-agent",
                agent,
                task_id,
                *extra,
                "--command",
                SHOW,
                "--workspace",
                str(workspace),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for agent, extra in runs.items()
    }
    for agent, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out == f"cfn-agent-{agent}-{task_id}\n"
    logs = await _logs_when_done(tmp_path, task_id, runs)
    assert f"seen impl-1-1 {task_id} cli zai cfn-main" in logs["impl-1-1"]
    assert f"seen impl-1-2 {task_id} cli kimi cfn-main" in logs["impl-1-2"]


def test_bad_input_is_one_error_exit_2_and_spawns_nothing(
    tmp_path: Path, redis_server: RedisServer, task_id: str, workspace: Path
) -> None:
    base = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    ok_cmd = ["--command", "true", "--workspace", str(workspace)]
    cases = {
        "agent id": (["bad/agent", task_id, *ok_cmd], {}),
        "task id": (["impl-1-1", "a:b", *ok_cmd], {}),
        "mode": (["impl-1-1", task_id, "no mode!", *ok_cmd], {}),
        "AGENT_MEMORY_LIMIT": (["impl-1-1", task_id, *ok_cmd], {"AGENT_MEMORY_LIMIT": "12x"}),
        "AGENT_CPU_LIMIT": (["impl-1-1", task_id, *ok_cmd], {"AGENT_CPU_LIMIT": "lots"}),
        "AGENT_TIMEOUT": (["impl-1-1", task_id, *ok_cmd], {"AGENT_TIMEOUT": "-5"}),
        "--command": (["impl-1-1", task_id, "--command", "'unclosed"], {}),
        "workspace": (["impl-1-1", task_id, "--command", "true", "--workspace", "/no/such"], {}),
    }
    procs = {
        name: subprocess.Popen(
            [*CFN, "spawn-agent", *args],
            env={**base, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, extra) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, err)
        assert out == "", name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("[ERROR] "), (name, err)
        assert name in lines[0], (name, err)
    assert not (tmp_path / ".cfn" / "tasks").exists()
    assert not (tmp_path / ".cfn" / "redis").exists()


async def test_spawn_agent_backend_comes_from_the_flag_the_profile_or_the_environment(
    tmp_path: Path, redis_server: RedisServer, task_id: str, workspace: Path
) -> None:
    """One rule for `spawn-agent` and the loop: --backend/--command, then the profile's
    `backend:`/`command:` (a `.claude/agents`-style Markdown file), then
    CFN_AGENT_BACKEND/CFN_AGENT_COMMAND, then builtin."""
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "shell-runner.md").write_text(
        "---\nname: shell-runner\ndescription: runs a shell line\nbackend: command\n"
        "command: sh -c 'echo via-profile $AGENT_ID'\n---\nYou run shell lines.\n"
    )
    base = cfn_env(tmp_path, REDIS_URL=redis_server.url, CFN_AGENTS_DIR=str(agents))
    env_chosen = {
        **base,
        "CFN_AGENT_BACKEND": "command",
        "CFN_AGENT_COMMAND": "sh -c 'echo via-env $AGENT_ID'",
    }
    runs = {
        "shell-runner": ([], base),
        "impl-9-2": ([], env_chosen),
        "impl-9-3": (["--command", "sh -c 'echo via-flag $AGENT_ID'"], env_chosen),
    }
    for agent, (extra, env) in runs.items():
        result = subprocess.run(
            [*CFN, "spawn-agent", agent, task_id, *extra, "--workspace", str(workspace)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    logs = await _logs_when_done(tmp_path, task_id, runs)
    assert "via-profile shell-runner" in logs["shell-runner"]
    assert "via-env impl-9-2" in logs["impl-9-2"]
    assert "via-flag impl-9-3" in logs["impl-9-3"]
    # A profile naming the command backend without a command, and nothing else to run:
    (agents / "no-command.md").write_text(
        "---\nname: no-command\ndescription: x\nbackend: command\n---\nNothing.\n"
    )
    refused = subprocess.run(
        [*CFN, "spawn-agent", "no-command", task_id, "--workspace", str(workspace)],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "runs an executable" in refused.stderr and "Traceback" not in refused.stderr
