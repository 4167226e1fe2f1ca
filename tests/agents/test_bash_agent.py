"""The example agent in bash with plain redis-cli, interchangeable with Python agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cfn.agents import heartbeat as hb
from cfn.agents.context import generate_cli_context
from cfn.agents.signals import send_stop
from cfn.agents.spawn.process import ProcessSpawner
from cfn.coordination.completion import collect_results
from cfn.coordination.connection import RedisManager
from cfn.settings import Settings
from tests.support.servers import RedisServer

BASH_AGENT = Path(__file__).resolve().parents[2] / "examples" / "agents" / "bash-agent.sh"


@pytest.fixture
def auth_server(tmp_path: Path) -> Any:
    """A Redis with a password, like the embedded one: redis-cli needs REDISCLI_AUTH."""
    server = RedisServer(tmp_path / "auth-redis", password="s3cret-pw").start()
    try:
        yield server
    finally:
        server.stop()


async def test_bash_agent_reports_a_completion_collect_results_reads(
    auth_server: RedisServer, settings: Settings, workspace: Path, task_id: str
) -> None:
    manager = RedisManager.from_url(auth_server.url, settings)
    try:
        spawner = ProcessSpawner(settings, redis_url=auth_server.url)
        handles = []
        for n, confidence in ((1, "0.8"), (2, "0.9")):
            ctx = generate_cli_context(
                task_id,
                f"impl-{n}-1",
                settings=settings,
                redis_host="127.0.0.1",
                redis_port=auth_server.port,
                workspace=workspace,
                # The final "done" beat lives 2 x interval: long enough to be read
                # after both agents are reaped, however loaded the machine is.
                heartbeat_interval=5.0,
            )
            handles.append(
                await spawner.spawn(
                    ctx,
                    command=["bash", str(BASH_AGENT)],
                    env={"BASH_AGENT_CONFIDENCE": confidence},
                )
            )
        report = await collect_results(manager, task_id, 2, 0.75, 20.0)
        for handle in handles:
            info = await handle.wait()
            assert info.ok, handle.log_path.read_text()
        assert report.arrived == 2 and not report.failed, report.to_dict()
        assert sorted(r.confidence or 0 for r in report.results) == [0.8, 0.9]
        assert report.met
        assert report.mean == pytest.approx(0.85)
        payload = report.results[0].payload
        assert payload["deliverables"] == [f"bash-agent-{report.results[0].agent_id}.txt"]
        written = (workspace / "bash-agent-impl-1-1.txt").read_text()
        assert f"agent impl-1-1 of task {task_id}" in written
        assert "README.md" in written
        last = await hb.read_heartbeat(manager, task_id, "impl-1-1")
        assert last is not None and last["status"] == "done"
        assert "s3cret-pw" not in handles[0].context_path.read_text()
    finally:
        await manager.close()


async def test_bash_agent_honours_a_stop_signal(
    manager: RedisManager,
    spawner: ProcessSpawner,
    make_context: Any,
    task_id: str,
    workspace: Path,
) -> None:
    await send_stop(manager, task_id, "impl-1-1", "gate failed")
    handle = await spawner.spawn(make_context("impl-1-1"), command=["bash", str(BASH_AGENT)])
    info = await handle.wait()
    assert info.ok, handle.log_path.read_text()
    report = await collect_results(manager, task_id, 1, 0.7, 5.0)
    result = report.results[0]
    assert result.result == "stopped" and not result.ok
    assert json.loads(json.dumps(result.payload))["reason"] == "stop signal"
    assert not (workspace / "bash-agent-impl-1-1.txt").exists()


def test_cfn_run_with_the_command_backend_runs_bash_agents_end_to_end(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`cfn run --backend command` with CFN_AGENT_COMMAND naming the bash agent: each
    agent is shown done with its confidence as it reports (the seed's bash
    signal_completion pushes its entry before its payload), the events name the
    backend, the decision lands."""
    import subprocess

    from cfn.store.repository import Store
    from tests.conftest import CFN
    from tests.support.servers import cfn_env

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "agents").mkdir()
    env = cfn_env(
        tmp_path,
        REDIS_URL=redis_server.url,
        CFN_AGENTS_DIR=str(tmp_path / "agents"),
        CFN_AGENT_COMMAND=str(BASH_AGENT),
        DB_PATH=str(tmp_path / ".cfn" / "cfn.db"),
    )
    result = subprocess.run(
        [*CFN, "run", "--epic", "say hi", "--mode", "mvp", "--implementers", "2",
         "--validators", "1", "--backend", "command", "--max-iterations", "1",
         "--workspace", str(workspace)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for agent in ("impl-1-1", "impl-2-1", "val-1-1"):
        assert f"{agent}: done (0.85)" in lines, result.stdout
    assert "failed" not in result.stdout and "Traceback" not in result.stderr
    task = lines[0].removeprefix("task id: ").strip()
    assert f"{task}: succeeded" in result.stdout
    stored = Settings(cfn_state_dir=tmp_path / ".cfn", db_path=tmp_path / ".cfn" / "cfn.db")
    with Store.open(stored) as store:
        updates = [json.loads(e.payload) for e in store.events(task) if e.kind == "agent:update"]
    running = [u for u in updates if u.get("status") == "running"]
    assert len(running) == 3 and {u["backend"] for u in running} == {"command"}
    done = [u for u in updates if u.get("status") in ("done", "failed")]
    assert {(u["agentId"], u["status"], u["confidence"]) for u in done} == {
        ("impl-1-1", "done", 0.85), ("impl-2-1", "done", 0.85), ("val-1-1", "done", 0.85)
    }
