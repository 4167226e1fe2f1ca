"""Agents as containers through Podman's Docker API: a real CFN Loop, limits, exits."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.context import generate_cli_context, redis_endpoint
from cfn.agents.spawn.container import ContainerSpawner, network_name
from cfn.errors import AgentLookupError, AgentSpawnError, InvalidInputError
from cfn.loop.app import run_loop
from cfn.loop.launcher import ProcessLauncher
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.deploy.conftest import Engine
from tests.loop.conftest import options
from tests.support.servers import RedisServer


@pytest.fixture
def secured_redis(tmp_path: Path) -> Any:
    """A redis-server with a password, as cfn's embedded one has (containers reach it over a
    network, so it must not answer without one)."""
    server = RedisServer(tmp_path / "redis", password=secrets.token_hex(16)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def docker_settings(
    tmp_path: Path,
    engine: Engine,
    project: str,
    secured_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    subnet = f"10.{100 + secrets.randbelow(50)}.{secrets.randbelow(250)}.0/24"
    env = {
        "CFN_SPAWN_MODE": "docker",
        "DOCKER_HOST": engine.docker_host,
        "COMPOSE_PROJECT_NAME": project,
        "CFN_NETWORK_SUBNET": subnet,
        "REDIS_URL": secured_redis.url,
        "CFN_STATE_DIR": str(tmp_path / ".cfn"),
        "CFN_AGENTS_DIR": str(tmp_path / "agents"),
        "CFN_AGENT_HEARTBEAT_INTERVAL": "1",
        "AGENT_TIMEOUT": "120",
        "AGENT_MEMORY_LIMIT": "256m",
        "AGENT_CPU_LIMIT": "0.5",
    }
    (tmp_path / "agents").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _cgroup_value(pid: int, controller: str, name: str) -> str:
    """A cgroup v1 file of the process's own group, read on the host."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _num, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            mount = Path("/sys/fs/cgroup") / controllers.split(",")[0]
            for base in (mount, Path("/sys/fs/cgroup") / controller):
                candidate = base / path.lstrip("/") / name
                if candidate.exists():
                    return candidate.read_text().strip()
    raise AssertionError(f"no {controller} cgroup for pid {pid}")


async def test_loop_runs_its_agents_as_containers(
    tmp_path: Path,
    docker_settings: Settings,
    engine: Engine,
    project: str,
    secured_redis: RedisServer,
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    # A fixed offline confidence: one iteration, so exactly two agents.
    opts = options(
        tmp_path,
        task_id="ctask",
        epic="Build a hello module. offline-confidence: 0.95",
        implementers=1,
        validators=1,
    )
    outcome = await run_loop(
        docker_settings, options=opts, listener=lambda _t, k, d: seen.append((k, d))
    )
    assert outcome.status == "succeeded" and outcome.decision == "PROCEED", outcome.reason
    # The completions the containers pushed were collected (the seed's keys).
    client = secured_redis.client()
    assert sorted(client.lrange("coord:ctask:complete", 0, -1)) == [
        "impl-1-1:success",
        "val-1-1:success",
    ]
    with Store.open(docker_settings) as store:
        assert {a.agent_id: a.status for a in store.list_agents("ctask")} == {
            "impl-1-1": "done",
            "val-1-1": "done",
        }
    # The agents were the seed's containers, with the limits in force (docker inspect).
    containers = engine.client.containers.list(all=True, filters={"label": "cfn.task=ctask"})
    by_name = {c.name: c.attrs for c in containers}
    assert set(by_name) == {"cfn-agent-impl-1-1-ctask", "cfn-agent-val-1-1-ctask"}
    for attrs in by_name.values():
        host = attrs["HostConfig"]
        assert host["Memory"] == 256 * 1024**2
        assert host["NanoCpus"] == 500_000_000
        assert list(attrs["NetworkSettings"]["Networks"]) == [f"{project}_cfn-network"]
        assert attrs["State"]["ExitCode"] == 0
        env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
        assert env["COMPOSE_PROJECT_NAME"] == project and env["TASK_ID"] == "ctask"
        assert env["AGENT_ID"] in ("impl-1-1", "val-1-1")
        assert "127.0.0.1" not in env["REDIS_URL"]  # the gateway, which containers reach
    # `docker logs` of an agent's container is its transcript, a line per step, as
    # agent.log is for a process agent.
    implementer = engine.client.containers.get("cfn-agent-impl-1-1-ctask")
    transcript = implementer.logs(stdout=True, stderr=True).decode(errors="replace")
    assert "[tool_use]" in transcript and "[text]" in transcript, transcript[-2000:]
    # What the implementer wrote in /workspace is in the task's workspace on the host.
    notes = list((tmp_path / "ws" / "ctask" / "offline").iterdir())
    assert len(notes) == 1
    # exit.json and the container's log, as the process spawner leaves them.
    agent_dir = docker_settings.state_dir / "tasks" / "ctask" / "agents" / "impl-1-1"
    # Written when the container's end is seen: the loop may return (it has the agent's
    # report) a moment before the container has exited.
    exit_file = agent_dir / "exit.json"
    deadline = time.monotonic() + 30
    while not exit_file.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    record = json.loads(exit_file.read_text())
    assert record["exit_code"] == 0 and record["runtime"] == "container"
    assert network_name(docker_settings) == f"{project}_cfn-network"


def _context(settings: Settings, redis_url: str, workspace: Path, agent: str) -> Any:
    endpoint = redis_endpoint(redis_url)
    return generate_cli_context(
        "limits",
        agent,
        settings=settings,
        redis_host=endpoint.host,
        redis_port=endpoint.port,
        workspace=workspace,
    )


async def test_limits_kill_timeout_and_reattach(
    tmp_path: Path, docker_settings: Settings, engine: Engine, secured_redis: RedisServer
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spawner = ContainerSpawner(docker_settings, redis_url=secured_redis.url)
    # Plain redis-cli as the seed's bash agents use it: the address, REDISCLI_AUTH.
    sleeper = ["sh", "-c", 'redis-cli -u "redis://${REDIS_URL#*@}" ping; sleep 60']
    handle = await spawner.spawn(
        _context(docker_settings, secured_redis.url, workspace, "a1"), command=sleeper
    )
    assert handle.name == "cfn-agent-a1-limits" and handle.running and handle.pid > 0
    # The kernel enforces what inspect says: the container's own cgroup on the host.
    attrs = handle.inspect()
    assert attrs["HostConfig"]["Memory"] == 256 * 1024**2
    assert int(_cgroup_value(handle.pid, "memory", "memory.limit_in_bytes")) == 256 * 1024**2
    quota = int(_cgroup_value(handle.pid, "cpu", "cpu.cfs_quota_us"))
    period = int(_cgroup_value(handle.pid, "cpu", "cpu.cfs_period_us"))
    assert quota / period == pytest.approx(0.5)
    # A second spawn of the same agent is refused while it runs.
    with pytest.raises(AgentSpawnError, match="already running"):
        await spawner.spawn(
            _context(docker_settings, secured_redis.url, workspace, "a1"), command=sleeper
        )
    # Another orchestrator (a new spawner) re-attaches by the recorded pid, and kills it.
    other = ContainerSpawner(docker_settings, redis_url=secured_redis.url)
    again = await other.attach("limits", "a1", handle.pid)
    assert again.running
    with pytest.raises(AgentLookupError):
        await other.attach("limits", "a1", handle.pid + 100_000)
    await again.kill()
    info = await asyncio.wait_for(again.wait(), 60)
    assert info.killed and info.status == "killed" and not info.ok
    assert (await asyncio.wait_for(handle.wait(), 60)).killed  # the first handle agrees
    # The container reached Redis at the gateway (its PING answer is in the log).
    assert "PONG" in handle.log_path.read_text()
    # AGENT_TIMEOUT holds inside the container (coreutils timeout is its PID 1).
    short = _context(docker_settings, secured_redis.url, workspace, "a2")
    short = short.model_copy(
        update={"resources": short.resources.model_copy(update={"timeout": "2"})}
    )
    timed = await spawner.spawn(short, command=["sleep", "60"])
    info = await asyncio.wait_for(timed.wait(), 60)
    assert info.timed_out and info.status == "timeout"
    # stop: SIGTERM (coreutils timeout passes it on), recorded as killed on request.
    stopped = await spawner.spawn(
        _context(docker_settings, secured_redis.url, workspace, "a4"), command=["sleep", "60"]
    )
    # Once `timeout` (PID 1) has forked its command it has its handlers: a SIGTERM that
    # reaches a PID 1 before that is dropped by the kernel, and the grace ends in SIGKILL.
    children = Path(f"/proc/{stopped.pid}/task/{stopped.pid}/children")
    deadline = time.monotonic() + 30
    while not children.read_text().split() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await stopped.stop()
    info = await asyncio.wait_for(stopped.wait(), 60)
    assert info.killed and info.signal == 15, info
    # Exit codes come through.
    failing = await spawner.spawn(
        _context(docker_settings, secured_redis.url, workspace, "a3"),
        command=["sh", "-c", "exit 3"],
    )
    info = await asyncio.wait_for(failing.wait(), 60)
    assert info.exit_code == 3 and info.status == "failed"
    with pytest.raises(AgentLookupError):
        await spawner.attach("limits", "never-spawned")


async def test_bad_input_starts_no_container(
    tmp_path: Path, docker_settings: Settings, engine: Engine, secured_redis: RedisServer
) -> None:
    spawner = ContainerSpawner(docker_settings, redis_url=secured_redis.url)
    context = _context(docker_settings, secured_redis.url, tmp_path, "bad")
    with pytest.raises(InvalidInputError, match="environment variable"):
        await spawner.spawn(context, env={"A=B": "x"})
    with pytest.raises(InvalidInputError, match="non-empty"):
        await spawner.spawn(context, command=[])
    heavy = context.model_copy(
        update={"resources": context.resources.model_copy(update={"memory_limit": "lots"})}
    )
    with pytest.raises(InvalidInputError, match="AGENT_MEMORY_LIMIT"):
        await spawner.spawn(heavy)
    assert not engine.client.containers.list(all=True, filters={"name": "cfn-agent-bad-limits"})


def test_spawn_mode_is_chosen_by_setting_never_by_socket(
    docker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cfn.providers import TaskTraits, build_service

    service = build_service(docker_settings)
    launcher = ProcessLauncher(
        docker_settings, service, "redis://127.0.0.1:1/0", Path("."), TaskTraits(), "mvp"
    )
    assert isinstance(launcher.spawner, ContainerSpawner)
    monkeypatch.delenv("CFN_SPAWN_MODE")
    assert Settings().spawn_mode == "process"  # the engine's socket exists: no matter
    monkeypatch.setenv("MODE", "docker")  # the seed's name
    assert Settings().spawn_mode == "docker"
    monkeypatch.setenv("CFN_SPAWN_MODE", "process")
    assert Settings().spawn_mode == "process"
    monkeypatch.setenv("CFN_SPAWN_MODE", "kubernetes")
    from cfn.errors import ConfigError
    from cfn.settings import load_settings

    with pytest.raises(ConfigError, match="CFN_SPAWN_MODE"):
        load_settings()


@pytest.mark.parametrize("image", ["cfn-agent:latest", "cfn-orchestrator:latest"])
def test_images_have_cfn_and_the_seed_tools(engine: Engine, image: str) -> None:
    script = (
        "for t in bash curl jq sqlite3 redis-cli timeout; do command -v $t >/dev/null "
        "|| { echo missing $t; exit 1; }; done; cfn --version; id -un"
    )
    container = engine.client.containers.run(
        image, entrypoint=["sh", "-c", script], network_mode="none", detach=True
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        output = container.logs()
    finally:
        container.remove(v=True)  # the orchestrator image declares VOLUME /var/lib/cfn
    lines = output.decode().split()
    assert lines[0] == "0.1.0"
    assert lines[1] == ("agent" if "agent" in image else "cfn")  # not root


def test_spawn_agent_command_runs_a_container(
    tmp_path: Path, docker_settings: Settings, engine: Engine, project: str
) -> None:
    """The seed's spawn-agent.sh (`cfn spawn-agent`) in docker mode: a detached container."""
    import subprocess

    from tests.conftest import CFN

    result = subprocess.run(
        [
            *CFN,
            "spawn-agent",
            "sa-1",
            "satask",
            "--workspace",
            str(tmp_path),
            "--command",
            "sh -c 'echo from-the-container > /workspace/out.txt'",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cfn-agent-sa-1-satask"
    container = engine.client.containers.get("cfn-agent-sa-1-satask")
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [f"{project}_cfn-network"]
    assert (tmp_path / "out.txt").read_text() == "from-the-container\n"


def test_run_to_end_gives_status_and_both_streams_and_removes_the_container(
    engine: Engine, project: str
) -> None:
    from cfn.system.podman import EngineUnavailableError, run_to_end

    name = f"{project}-run-to-end"
    status, output = run_to_end(
        engine.client,
        "cfn-agent:latest",
        entrypoint=["sh", "-c", "echo out; echo err >&2; exit 7"],
        network_mode="none",
        name=name,
    )
    assert status == 7
    assert output.split() == [b"out", b"err"]
    assert not engine.client.containers.list(all=True, filters={"name": name})
    # One that outlives the wait is an engine error, and is removed all the same.
    with pytest.raises(EngineUnavailableError, match="did not end within 1 s"):
        run_to_end(
            engine.client,
            "cfn-agent:latest",
            timeout=1,
            entrypoint=["sleep", "30"],
            network_mode="none",
            name=name,
        )
    assert not engine.client.containers.list(all=True, filters={"name": name})


@pytest.mark.long
def test_run_to_end_never_hangs_on_a_container_that_ends_at_once(engine: Engine) -> None:
    """Podman left `containers.run(detach=False)`'s log follow of `true` unanswered about
    once in 40 runs (a 120 s read timeout in CI); run_to_end waits on the engine instead."""
    from cfn.system.podman import run_to_end

    for _ in range(120):
        status, _output = run_to_end(
            engine.client, "cfn-agent:latest", timeout=20, entrypoint=["true"], network_mode="none"
        )
        assert status == 0
