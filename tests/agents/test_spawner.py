"""The process spawner on real processes and real cgroups: env, log, limits, timeout,
kill, re-attach."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.context import AgentContext
from cfn.agents.signals import record_agent_failure
from cfn.agents.spawn.process import ProcessSpawner
from cfn.coordination.completion import collect_results
from cfn.coordination.connection import RedisManager
from cfn.errors import AgentLookupError, AgentSpawnError, InvalidInputError
from cfn.settings import Settings
from cfn.system.cgroups import cgroups_writable
from cfn.system.proc import proc_alive, proc_start_ticks
from tests.conftest import CFN
from tests.support.servers import RedisServer, cfn_env

CGROUPS = cgroups_writable()
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="cgroup v1 memory/cpu not writable here")

PRINT_ENV = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
    "['AGENT_ID', 'TASK_ID', 'MODE', 'PROVIDER', 'COMPOSE_PROJECT_NAME', 'CFN_AGENT_CONTEXT', "
    "'REDISCLI_AUTH', 'CFN_STATE_DIR']})); "
    "print(open('/proc/self/cgroup').read())"
)
HOG = "x = bytearray(256 * 1024 * 1024); print('allocated', len(x))"


async def test_spawned_agent_gets_the_seed_environment_and_a_log(
    spawner: ProcessSpawner, make_context: Any, settings: Settings, workspace: Path
) -> None:
    ctx: AgentContext = make_context("impl-1-1", provider="kimi")
    handle = await spawner.spawn(ctx, command=[sys.executable, "-c", PRINT_ENV])
    assert handle.name == f"cfn-agent-impl-1-1-{ctx.task_id}"
    info = await handle.wait()
    assert info.ok, info
    assert info.status == "exited"
    assert info.exit_code == 0
    log = handle.log_path.read_text()
    env = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert env["AGENT_ID"] == "impl-1-1"
    assert env["TASK_ID"] == ctx.task_id
    assert env["MODE"] == "cli"
    assert env["PROVIDER"] == "kimi"
    assert env["COMPOSE_PROJECT_NAME"] == "cfn-main"
    assert env["CFN_STATE_DIR"] == str(settings.state_dir)
    context = AgentContext.from_file(env["CFN_AGENT_CONTEXT"])
    assert context.agent_id == "impl-1-1"
    assert context.cfn.log_file == str(handle.log_path)
    assert stat_mode(Path(env["CFN_AGENT_CONTEXT"])) == 0o600
    if CGROUPS:
        assert handle.limits == "cgroup"
        assert f"cfn/{handle.name}" in log  # it ran inside its own groups...
        for path in json.loads((handle.directory / "state.json").read_text())["cgroups"].values():
            assert not os.path.exists(path)  # ...which are gone after it ended


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@needs_cgroups
async def test_memory_limit_bites_and_the_agent_is_recorded_failed(
    settings: Settings,
    redis_server: RedisServer,
    manager: RedisManager,
    make_context: Any,
) -> None:
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    ctx = make_context("impl-1-1", memory_limit="64m")
    handle = await spawner.spawn(ctx, command=[sys.executable, "-c", HOG])
    info = await handle.wait()
    assert info.oom_killed
    assert info.status == "oom"
    assert not info.ok
    assert info.signal == signal.SIGKILL
    assert info.limits == "cgroup"
    assert info.max_memory_bytes is not None
    assert info.max_memory_bytes <= 64 * 1024 * 1024
    assert "OOM" in info.reason and "64 MiB" in info.reason
    assert "allocated" not in handle.log_path.read_text()

    assert await record_agent_failure(manager, ctx.task_id, "impl-1-1", info.reason, info.to_dict())
    report = await collect_results(manager, ctx.task_id, 1, 0.7, 5.0)
    assert report.arrived == 1
    assert not report.results[0].ok
    assert report.results[0].payload["reason"] == info.reason
    assert not report.met


async def test_memory_limit_without_cgroups_uses_rlimit(
    tmp_path: Path, redis_server: RedisServer, make_context: Any
) -> None:
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", cfn_agent_cgroups="off")
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    handle = await spawner.spawn(
        make_context("impl-1-2", memory_limit="128m"), command=[sys.executable, "-c", HOG]
    )
    info = await handle.wait()
    assert info.limits == "rlimit"
    assert info.exit_code == 1
    assert info.oom_killed
    assert info.status == "oom"
    assert "MemoryError" in handle.log_path.read_text()


@needs_cgroups
async def test_cpu_limit_bites(
    settings: Settings, redis_server: RedisServer, make_context: Any
) -> None:
    # docker's strict quota (100 ms periods, no burst): throttled within the first
    # period even on a busy machine.
    strict = settings.model_copy(
        update={"cfn_agent_cpu_period_us": 100_000, "cfn_agent_cpu_burst": 0.0}
    )
    spawner = ProcessSpawner(strict, redis_url=redis_server.url)
    burn = "import time\nend = time.monotonic() + 0.8\nwhile time.monotonic() < end: pass"
    handle = await spawner.spawn(
        make_context("impl-1-3", cpu_limit=0.2), command=[sys.executable, "-c", burn]
    )
    info = await handle.wait()
    assert info.ok
    assert info.record["cpu_throttled"] > 0
    assert info.cpu_seconds is not None
    assert info.cpu_seconds < 0.5  # unthrottled it would be ~0.8 s


@needs_cgroups
async def test_cpu_time_counts_processes_nobody_waited_for(
    spawner: ProcessSpawner, make_context: Any
) -> None:
    """A process the agent never waits for (a sandbox's, a daemonised tool's) is not in
    wait4's figures; the agent's cgroup counts it, and the exit record says so."""
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    script = f"({sys.executable} -c '{burn}' &) ; sleep 2"
    handle = await spawner.spawn(make_context("impl-1-9"), command=["bash", "-c", script])
    info = await handle.wait()
    assert info.ok, handle.log_path.read_text()
    rusage = info.record["cpu_user"] + info.record["cpu_system"]
    assert rusage < 0.4, info.record  # bash and sleep: the orphaned burner is not in it
    assert info.record["cpu_usage_seconds"] >= 0.45, info.record
    assert info.cpu_seconds == info.record["cpu_usage_seconds"]


@needs_cgroups
@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/cpu/cpu.cfs_burst_us").exists(), reason="no CFS burst (Linux < 5.14)"
)
async def test_cpu_limit_allows_one_periods_burst_unless_told_not(
    tmp_path: Path, redis_server: RedisServer, make_context: Any
) -> None:
    """AGENT_CPU_LIMIT is the average; CFN_AGENT_CPU_BURST (default 1: one period's
    quota) is what a multi-threaded start-up may run above it, 0 the strict quota;
    CFN_AGENT_CPU_PERIOD_US (default 1 s) is the period."""
    cases: list[tuple[dict[str, Any], int, int, int]] = [
        ({}, 1_000_000, 500_000, 500_000),
        ({"cfn_agent_cpu_burst": 0.0}, 1_000_000, 500_000, 0),
        ({"cfn_agent_cpu_burst": 0.5, "cfn_agent_cpu_period_us": 100_000}, 100_000, 50_000, 25_000),
    ]
    for n, (extra, period, quota, burst) in enumerate(cases):
        settings = Settings(cfn_state_dir=tmp_path / f".cfn-{n}", **extra)
        spawner = ProcessSpawner(settings, redis_url=redis_server.url)
        handle = await spawner.spawn(
            make_context(f"impl-2-{n}", cpu_limit=0.5), command=["sleep", "30"]
        )
        try:
            state = json.loads((handle.directory / "state.json").read_text())
            cpu = Path(state["cgroups"]["cpu"])
            assert int((cpu / "cpu.cfs_period_us").read_text()) == period
            assert int((cpu / "cpu.cfs_quota_us").read_text()) == quota
            assert int((cpu / "cpu.cfs_burst_us").read_text()) == burst
        finally:
            await handle.kill()
            await handle.wait()
    bad = subprocess.run(
        [*CFN, "agents", "list"],
        env=cfn_env(tmp_path, CFN_AGENT_CPU_PERIOD_US="2000000"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "CFN_AGENT_CPU_PERIOD_US" in bad.stderr.upper(), bad.stderr
    assert "Traceback" not in bad.stderr


async def test_timeout_kills(spawner: ProcessSpawner, make_context: Any) -> None:
    started = time.monotonic()
    handle = await spawner.spawn(make_context("impl-1-4", timeout=1), command=["sleep", "30"])
    info = await handle.wait()
    elapsed = time.monotonic() - started
    assert info.timed_out
    assert info.status == "timeout"
    assert info.signal == signal.SIGTERM
    assert 0.9 < elapsed < 5
    assert "timed out after 1 s" in info.reason


async def test_timeout_escalates_to_sigkill(
    tmp_path: Path, redis_server: RedisServer, make_context: Any
) -> None:
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", cfn_agent_kill_grace=0.3)
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    stubborn = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    handle = await spawner.spawn(
        make_context("impl-1-5", timeout=1), command=["sh", "-c", stubborn]
    )
    info = await handle.wait()
    assert info.timed_out
    assert info.signal == signal.SIGKILL


async def test_kill_and_stop(spawner: ProcessSpawner, make_context: Any) -> None:
    a = await spawner.spawn(make_context("impl-1-6"), command=["sleep", "30"])
    b = await spawner.spawn(make_context("impl-1-7"), command=["sleep", "30"])
    assert a.running and b.running
    await a.kill()
    await b.stop()
    info_a, info_b = await a.wait(), await b.wait()
    assert info_a.status == info_b.status == "killed"
    assert info_a.signal == signal.SIGKILL
    assert info_b.signal == signal.SIGTERM
    assert not a.running


async def test_a_running_agent_is_not_spawned_twice(
    spawner: ProcessSpawner, make_context: Any
) -> None:
    handle = await spawner.spawn(make_context("impl-1-8"), command=["sleep", "30"])
    try:
        with pytest.raises(AgentSpawnError, match="already running"):
            await spawner.spawn(make_context("impl-1-8"), command=["true"])
    finally:
        await handle.kill()
        await handle.wait()
    again = await spawner.spawn(make_context("impl-1-8"), command=["true"])
    assert (await again.wait()).ok


async def test_missing_command_is_a_spawn_error(spawner: ProcessSpawner, make_context: Any) -> None:
    with pytest.raises(AgentSpawnError, match="no-such-agent-binary"):
        await spawner.spawn(make_context("impl-1-9"), command=["/nonexistent/no-such-agent-binary"])


async def test_bad_limits_spawn_nothing(
    spawner: ProcessSpawner, make_context: Any, settings: Settings
) -> None:
    with pytest.raises(InvalidInputError, match="AGENT_MEMORY_LIMIT"):
        await spawner.spawn(make_context("impl-2-1", memory_limit="lots"), command=["true"])
    assert not (settings.state_dir / "tasks").exists()


async def test_reattach_by_pid_after_the_orchestrator_is_gone(
    tmp_path: Path, redis_server: RedisServer, task_id: str, workspace: Path
) -> None:
    # Another process (like a crashed orchestrator) spawns the agent and exits.
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    # It runs until the test has seen it running, however loaded the machine is.
    go = tmp_path / "go"
    script = f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished; exit 3"
    out = subprocess.run(
        [*CFN, "spawn-agent", "impl-1-1", task_id, "--workspace", str(workspace),
         "--command", f"sh -c '{script}'"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"cfn-agent-impl-1-1-{task_id}"

    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    spawner = ProcessSpawner(settings)
    state = json.loads((spawner.agent_dir(task_id, "impl-1-1") / "state.json").read_text())
    with pytest.raises(AgentLookupError, match="is not"):
        await spawner.attach(task_id, "impl-1-1", pid=state["pid"] + 1)
    with pytest.raises(AgentLookupError, match="no agent"):
        await spawner.attach(task_id, "impl-9-9")

    handle = await spawner.attach(task_id, "impl-1-1", pid=state["pid"])
    assert handle.running
    go.touch()
    info = await handle.wait()
    assert info.exit_code == 3
    assert info.status == "failed"
    assert "finished" in handle.log_path.read_text()
    # Attaching once it is over gives the same record at once.
    later = await spawner.attach(task_id, "impl-1-1")
    assert (await later.wait()).exit_code == 3


async def test_reattach_when_the_supervisor_was_killed(
    spawner: ProcessSpawner, make_context: Any, settings: Settings
) -> None:
    handle = await spawner.spawn(make_context("impl-1-1"), command=["sleep", "0.5"])
    os.kill(handle.shim_pid, signal.SIGKILL)
    other = await ProcessSpawner(settings).attach(handle.task_id, handle.agent_id, handle.pid)
    info = await other.wait()
    assert info.lost
    assert info.status == "lost"
    assert not handle.running


async def test_pid_of_another_process_is_not_trusted(
    spawner: ProcessSpawner, make_context: Any, settings: Settings
) -> None:
    handle = await spawner.spawn(make_context("impl-1-1"), command=["sleep", "30"])
    try:
        state_file = handle.directory / "state.json"
        state = json.loads(state_file.read_text())
        impostor = subprocess.Popen(["sleep", "30"])
        try:
            state.update(pid=impostor.pid, pid_start=proc_start_ticks(impostor.pid))
            state_file.write_text(json.dumps(state))
            with pytest.raises(AgentLookupError, match="is not cfn-agent"):
                await ProcessSpawner(settings).attach(handle.task_id, handle.agent_id)
        finally:
            impostor.kill()
            impostor.wait()
    finally:
        await handle.kill()
        await handle.wait()


def test_spawner_for_picks_the_runtime_from_the_settings_alone(tmp_path: Path) -> None:
    from cfn.agents.spawn import spawner_for
    from cfn.agents.spawn.container import ContainerSpawner

    state = tmp_path / ".cfn"
    process = spawner_for(Settings(cfn_state_dir=state, cfn_spawn_mode="process", mode="docker"))
    assert isinstance(process, ProcessSpawner)
    assert process.engine is None
    for docker in ({"cfn_spawn_mode": "docker"}, {"mode": "docker"}):
        chosen = Settings(cfn_state_dir=state, docker_host=None, **docker)
        container = spawner_for(chosen, redis_url="redis://x")
        assert isinstance(container, ContainerSpawner)
        assert container.redis_url == "redis://x"
        # cfn's own Podman service; asking where it is does not start it.
        assert container.engine == f"unix://{state.resolve()}/podman/podman.sock"
        assert container._client is None
        assert not (state / "podman" / "podman.sock").exists()


def test_only_spawner_for_decides_process_or_container() -> None:
    """The runtime is chosen in one place: nothing else reads the spawn mode or names a
    runtime class (tests that exercise one runtime directly may)."""
    src = Path(__file__).resolve().parents[2] / "src" / "cfn"
    spawn = src / "agents" / "spawn"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        if path.parent == spawn or path == src / "settings" / "model.py":
            continue
        text = path.read_text()
        for needle in ("spawn_mode", "ProcessSpawner", "ContainerSpawner"):
            if needle in text:
                offenders.append(f"{path.relative_to(src)}: {needle}")
    assert offenders == []
    reads = (spawn / "__init__.py").read_text().count("settings.spawn_mode")
    assert reads == 1
    for runtime in ("base.py", "process.py", "container.py", "agent.py"):
        assert "spawn_mode" not in (spawn / runtime).read_text()


DETACHING = (
    "setsid sh -c 'echo $$ > detached.pid; exec sleep 300' & "
    "echo $! > started.pid; exec sleep 300"
)


async def _detached_pid(workspace: Path) -> int:
    deadline = time.monotonic() + 30
    path = workspace / "detached.pid"
    while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return int(path.read_text())


@pytest.mark.parametrize("how", ["stop", "kill", "timeout"])
async def test_without_cgroups_a_stop_ends_commands_in_sessions_of_their_own(
    tmp_path: Path,
    redis_server: RedisServer,
    make_context: Any,
    workspace: Path,
    how: str,
) -> None:
    """A command the agent started with ``setsid`` (as Claude Code's Bash tool does) is
    in no group of the agent's: with cgroups off only the supervisor's scan of the
    agent's descendants reaches it, on stop, kill and timeout alike."""
    settings = Settings(
        cfn_state_dir=tmp_path / ".cfn", cfn_agent_cgroups="off", cfn_agent_kill_grace=0.5
    )
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    context = make_context(f"impl-3-{how}", **({"timeout": 2} if how == "timeout" else {}))
    handle = await spawner.spawn(context, command=["sh", "-c", DETACHING])
    detached = await _detached_pid(workspace)
    assert proc_alive(detached)
    if how == "stop":
        await handle.stop()
    elif how == "kill":
        await handle.kill()
    info = await handle.wait()
    assert info.limits == "rlimit"
    assert (info.timed_out, info.status) == (
        (True, "timeout") if how == "timeout" else (False, "killed")
    )
    deadline = time.monotonic() + 5
    while proc_alive(detached) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not proc_alive(detached), f"a detached command outlived the agent ({how})"


async def test_no_provider_key_reaches_an_agent_process_its_supervisor_or_its_files(
    tmp_path: Path,
    redis_server: RedisServer,
    make_context: Any,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The orchestrator holds provider keys; an agent (its environment, argv, context
    file, log, workspace), its supervisor and the agent server agents fork from, none."""
    from cfn.agents.forkserver import AgentServer
    from cfn.system.proc import proc_cmdline, proc_environ

    secrets_ = {"ZAI_API_KEY": "sk-zai-never-in-an-agent-4242", "OPENAI_API_KEY": "sk-oa-7777"}
    for name, value in secrets_.items():
        monkeypatch.setenv(name, value)
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", cfn_agents_dir=tmp_path / "agents")
    (tmp_path / "agents").mkdir()
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    dump = "env > env.txt; tr '\\0' ' ' < /proc/self/cmdline > argv.txt; exec sleep 30"
    handle = await spawner.spawn(make_context("impl-5-1"), command=["sh", "-c", dump])
    try:
        deadline = time.monotonic() + 30
        while not (workspace / "argv.txt").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen = {
            "agent env": (workspace / "env.txt").read_text(),
            "agent argv": (workspace / "argv.txt").read_text(),
            "agent /proc environ": repr(proc_environ(handle.pid)),
            "supervisor /proc environ": repr(proc_environ(handle.shim_pid)),
            "supervisor argv": " ".join(proc_cmdline(handle.shim_pid)),
        }
        assert "AGENT_ID=impl-5-1" in seen["agent env"]  # it is the agent's environment
        server = AgentServer.from_settings(settings).ensure()  # what builtin agents fork from
        seen["agent server /proc environ"] = repr(proc_environ(server.pid))
        files = [p for p in (tmp_path / ".cfn").rglob("*") if p.is_file()]
        files += [p for p in workspace.rglob("*") if p.is_file()]
        seen |= {str(p): p.read_bytes().decode(errors="replace") for p in files}
        assert any(p.name == "context.json" for p in files)
        for value in secrets_.values():
            leaked = [where for where, text in seen.items() if value in text]
            assert leaked == [], f"a provider key reached {leaked}"
    finally:
        await handle.kill()
        await handle.wait()


def test_a_container_agent_is_given_no_provider_key(
    tmp_path: Path, make_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a container agent's ``Config.Env`` is made of: an allow-list of the
    orchestrator's variables (base URLs, retry settings), never a key."""
    from cfn.agents.spawn.container import ContainerSpawner

    monkeypatch.setenv("ZAI_API_KEY", "sk-zai-never-in-a-container")
    monkeypatch.setenv("ZAI_BASE_URL", "http://provider.invalid/v1")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "sk-ant-never-either")
    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    env = ContainerSpawner(settings, redis_url="redis://:pw@127.0.0.1:6379/0").environment(
        make_context("impl-6-1"), {"CFN_LLM_TOKEN": "the-agents-own-token"}, "10.88.0.1"
    )
    assert env["ZAI_BASE_URL"] == "http://provider.invalid/v1"  # forwarded: not a secret
    assert env["CFN_LLM_TOKEN"] == "the-agents-own-token"
    text = repr(env)
    assert "sk-zai-never" not in text and "sk-ant-never" not in text


async def test_a_reattached_agent_keeps_its_route_and_backend(
    tmp_path: Path, redis_server: RedisServer, make_context: Any, task_id: str
) -> None:
    """A resumed orchestrator re-attaches to a running agent and shows it as it was
    started (read back from its context file), not with a blank route and backend."""
    from cfn.loop.launcher import ProcessLauncher
    from cfn.loop.ports import AgentPlan
    from cfn.providers import TaskTraits, build_service

    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    spawner = ProcessSpawner(settings, redis_url=redis_server.url)
    context = make_context("impl-7-1", provider="kimi", model="kimi-k2", backend="command")
    handle = await spawner.spawn(context, command=["sleep", "30"])
    try:
        launcher = ProcessLauncher(
            settings, build_service(settings), redis_server.url, tmp_path, TaskTraits(), "mvp"
        )
        plan = AgentPlan(task_id, "impl-7-1", "implementer", 3, 1, {})
        again = await launcher.reattach(plan, handle.pid)
        assert again is not None and again.pid == handle.pid
        assert (again.provider, again.model, again.backend) == ("kimi", "kimi-k2", "command")
    finally:
        await handle.kill()
        await handle.wait()
