"""The agent server on real processes: builtin agents forked from one preloaded Python,
with the same contract as a plain start (pid, cgroups, stop, re-attach, exit record),
a fallback when it is not there, no secret in its memory, and its own lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cfn.agents import shim
from cfn.agents.forkserver import AgentServer, server_environment
from cfn.agents.spawn.process import ProcessSpawner
from cfn.coordination.completion import collect_results
from cfn.coordination.connection import RedisManager
from cfn.settings import Settings
from cfn.system import forkwire as wire
from cfn.system.cgroups import cgroups_writable
from cfn.system.proc import proc_alive, proc_comm, proc_environ, proc_stat_fields
from tests.conftest import CFN
from tests.support.llm_servers import LLMServer, Reply
from tests.support.servers import RedisServer, cfn_env

CGROUPS = cgroups_writable()


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while proc_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not proc_alive(pid)


def _server_pid(settings: Settings) -> int:
    info = AgentServer.from_settings(settings).running()
    assert info is not None, "no agent server is running"
    return info.pid


async def test_a_builtin_agent_is_forked_and_reports(
    spawner: ProcessSpawner, make_context: Any, redis_server: RedisServer
) -> None:
    ctx = make_context("impl-1-1", provider="offline", epic="hello. offline-confidence: 0.9")
    handle = await spawner.spawn(ctx)
    info = await handle.wait()
    assert info.exit_code == 0, handle.log_path.read_text()
    state = json.loads((handle.directory / "state.json").read_text())
    record = json.loads((handle.directory / "exit.json").read_text())
    assert state["forked"] is True and record["forked"] is True
    assert record["cpu_user"] + record["cpu_system"] > 0
    manager = RedisManager.from_url(redis_server.url)
    try:
        report = await collect_results(manager, ctx.task_id, 1, 0.5, 5.0)
    finally:
        await manager.close()
    assert report.results[0].agent_id == "impl-1-1" and report.results[0].ok


async def test_a_forked_agent_keeps_the_process_contract(
    make_context: Any, settings: Settings, redis_server: RedisServer
) -> None:
    secret = "sk-moonshot-forkserver-test-key"
    with LLMServer() as llm:
        # The model never answers in time: the agent waits in its first call.
        llm.push(Reply(body={"error": "too late"}, delay=30.0))
        spawner = ProcessSpawner(settings, redis_url=redis_server.url)
        ctx = make_context("impl-1-2", provider="kimi")
        env = {"KIMI_BASE_URL": llm.openai_url, "MOONSHOT_API_KEY": secret}
        handle = await spawner.spawn(ctx, env=env)
        try:
            deadline = time.monotonic() + 20
            while not llm.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert llm.requests, handle.log_path.read_text()
            server = _server_pid(settings)
            # Its own process, forked by its supervisor (forked by the server), in its
            # own group, named by its tag.
            assert proc_stat_fields(handle.pid, 4) == [handle.shim_pid]  # ppid
            assert proc_stat_fields(handle.shim_pid, 4) == [server]
            assert proc_stat_fields(handle.shim_pid, 6) == [handle.shim_pid]  # its session
            assert proc_stat_fields(handle.pid, 5) == [handle.pid]  # its own process group
            assert proc_comm(handle.pid) == shim.comm_tag(handle.name)
            if CGROUPS:
                groups = Path(f"/proc/{handle.pid}/cgroup").read_text()
                assert f"cfn/{handle.name}" in groups
            # The key went to the agent (it called the stand-in with it) and nowhere else.
            assert llm.requests[0].headers.get("authorization") == f"Bearer {secret}"
            assert secret not in json.dumps(proc_environ(server))
            assert secret not in Path(f"/proc/{server}/cmdline").read_text()
            # A restarted orchestrator re-attaches by pid, and the tag vouches for it.
            again = await ProcessSpawner(settings).attach(ctx.task_id, "impl-1-2", handle.pid)
            assert again.running
            await again.stop()
            info = await handle.wait()
        finally:
            await handle.kill()
    assert info.status == "killed" and info.signal == signal.SIGTERM, info
    assert info.reason == "stopped on request (SIGTERM)"
    assert not proc_alive(handle.pid)


async def test_off_means_a_plain_start(
    make_context: Any, settings: Settings, redis_server: RedisServer
) -> None:
    plain = settings.model_copy(update={"cfn_agent_server": "off"})
    spawner = ProcessSpawner(plain, redis_url=redis_server.url)
    ctx = make_context("impl-1-3", provider="offline", epic="hello. offline-confidence: 0.9")
    handle = await spawner.spawn(ctx)
    info = await handle.wait()
    assert info.exit_code == 0, handle.log_path.read_text()
    assert json.loads((handle.directory / "exit.json").read_text())["forked"] is False


class _ServerGone(ProcessSpawner):
    """A spawner whose agent server vanished between finding it and asking it to fork."""

    def __init__(self, settings: Settings, socket_path: Path, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.socket_path = socket_path

    def agent_server(self) -> str | None:
        return str(self.socket_path)


async def test_the_supervisor_is_a_new_python_when_the_server_is_gone(
    make_context: Any, settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    spawner = _ServerGone(settings, tmp_path / "nobody.sock", redis_url=redis_server.url)
    ctx = make_context("impl-1-4", provider="offline", epic="hello. offline-confidence: 0.9")
    handle = await spawner.spawn(ctx)
    info = await handle.wait()
    log = handle.log_path.read_text()
    assert info.exit_code == 0, log
    assert json.loads((handle.directory / "exit.json").read_text())["forked"] is False
    assert "agent server not used" in log
    # The supervisor was our child (reaped here), the agent a new Python of its own.
    assert not proc_alive(handle.shim_pid)


def test_the_supervisor_as_its_own_python_runs_the_command(tmp_path: Path) -> None:
    """The shim's own contract (``python -I -S shim.py SPEC READY_FD``): the agent is the
    spec's command, the ready pipe gets one line and closes once exit.json is there."""
    out = tmp_path / "ran"
    spec = {
        "name": "cfn-agent-impl-1-1-tfallback",
        "task_id": "tfallback",
        "agent_id": "impl-1-1",
        "dir": str(tmp_path),
        "command": [sys.executable, "-c", f"open({str(out)!r}, 'w').write('yes')"],
        "cwd": str(tmp_path),
        "log": str(tmp_path / "agent.log"),
        "memory": None,
        "memory_bytes": None,
        "cpus": None,
        "timeout": 30,
        "kill_grace": 1,
        "cgroups": "off",
        "fork": True,  # no agent server to fork from: the command runs
    }
    (tmp_path / "shim.json").write_text(json.dumps(spec))
    ready_r, ready_w = os.pipe()
    with open(tmp_path / "agent.log", "ab") as log:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", shim.__file__, str(tmp_path / "shim.json"), str(ready_w)],
            pass_fds=(ready_w,),
            stdout=log,
            stderr=log,
            timeout=60,
            check=False,
        )
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        said = ready.read()
    assert proc.returncode == 0
    assert out.read_text() == "yes"
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["forked"] is False and record["exit_code"] == 0
    line = json.loads(said.decode())
    assert line["pid"] == record["pid"] and said.count(b"\n") == 1


def test_a_stale_server_is_replaced_and_an_idle_one_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CFN_TEST_SECRET", "do-not-copy-me")
    servers = AgentServer(tmp_path / "srv", idle=1.5, preload=False)
    first = servers.ensure()
    try:
        assert servers.ensure().pid == first.pid  # reused
        environ = proc_environ(first.pid) or {}
        assert "CFN_TEST_SECRET" not in environ
        assert set(environ) <= set(server_environment(environ))
        assert (tmp_path / "srv" / "agents.sock").stat().st_mode & 0o077 == 0
        # A record from other code: the old server is told to go, a new one starts.
        record = json.loads((tmp_path / "srv" / "instance.json").read_text())
        record["stamp"] = "older-code"
        (tmp_path / "srv" / "instance.json").write_text(json.dumps(record))
        second = servers.ensure()
        assert second.pid != first.pid
        assert _wait_gone(first.pid)
        # Idle for longer than its idle time: it exits and takes its socket with it.
        assert _wait_gone(second.pid)
        assert not (tmp_path / "srv" / "agents.sock").exists()
    finally:
        servers.stop(grace=1.0)


def test_bad_requests_are_refused_and_the_server_stays(tmp_path: Path) -> None:
    servers = AgentServer(tmp_path / "srv", idle=60, preload=False)
    info = servers.ensure()
    try:
        # No file descriptor with the header: refused with a reason.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(info.socket))
            sock.sendall(wire.SUPERVISOR)
            reply = wire.read_line(sock.recv)
            assert reply.startswith(b"error ") and b"file descriptor" in reply
        # An unknown kind of request: refused too.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(info.socket))
            sock.sendall(b"Z")
            with pytest.raises(ValueError, match="unknown request"):
                wire.parse_pid(wire.read_line(sock.recv))
        # A malformed request reaches only the forked child: it exits 127 with one line.
        log = tmp_path / "child.log"
        ready_r, ready_w = os.pipe()
        with open(log, "ab") as handle:
            pid, conn = wire.request_fork(
                str(info.socket),
                wire.SUPERVISOR,
                [handle.fileno(), ready_w],
                json.dumps({"spec": {}, "env": "not a dict"}).encode() + b"\n",
            )
        os.close(ready_w)
        os.close(ready_r)
        with conn:
            conn.settimeout(20)
            report = wire.parse_exit(wire.read_line(conn.recv))
        assert report is not None and os.waitstatus_to_exitcode(report[0]) == 127
        assert not proc_alive(pid)
        assert "[cfn] not started: ValueError" in log.read_text()
        assert proc_alive(info.pid)
        assert servers.running() is not None
    finally:
        assert servers.stop(grace=1.0)
    assert not proc_alive(info.pid)


def test_the_cli_shows_starts_and_stops_the_server(tmp_path: Path) -> None:
    env = cfn_env(tmp_path, CFN_AGENT_SERVER_DIR=str(tmp_path / "servers"))

    def cfn(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CFN, "agents", "server", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert cfn("status").returncode == 1
    started = cfn("start")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("pid ")[1].split()[0])
    assert proc_alive(pid)
    status = cfn("status")
    assert status.returncode == 0 and str(pid) in status.stdout and "current" in status.stdout
    assert "agent server stopped" in cfn("stop").stdout
    assert _wait_gone(pid)
    assert cfn("status").returncode == 1
    assert "was not running" in cfn("stop").stdout
    bad = cfn("status", CFN_AGENT_SERVER="sometimes")
    assert bad.returncode != 0 and "CFN_AGENT_SERVER" in bad.stderr.upper()
    assert "Traceback" not in bad.stderr


def test_the_supervisor_logs_redis_urls_without_passwords() -> None:
    urls = shim.redis_urls(
        {
            "REDIS_URL": "redis://cfn%3AT%3Aimpl-1-1:s3cret-pass@127.0.0.1:6380/0",
            "REDIS_FALLBACK_1": "redis://:admin-pass@[::1]:6390",
            "REDIS_SENTINELS": "redis+sentinel://127.0.0.1:26379/mymaster",
            "REDISCLI_AUTH": "s3cret-pass",
            "OTHER_URL": "redis://user:pw@elsewhere:1",
        }
    )
    assert urls == {
        "REDIS_FALLBACK_1": "redis://:***@[::1]:6390",
        "REDIS_SENTINELS": "redis+sentinel://127.0.0.1:26379/mymaster",
        "REDIS_URL": "redis://cfn%3AT%3Aimpl-1-1:***@127.0.0.1:6380/0",
    }
    assert "pass" not in json.dumps(urls)
