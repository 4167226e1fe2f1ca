"""MCP servers forked from the agent server: the same servers, limits and stop, at a
fraction of the start cost; without the server (or with it off) they start as before."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from cfn.agents.forkserver import AgentServer
from cfn.mcp.launcher import Launcher
from cfn.settings import Settings
from cfn.system.proc import proc_alive, proc_stat_fields
from tests.support.servers import free_port


def _settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "cfn_state_dir": tmp_path / ".cfn",
        "cfn_agent_server_dir": tmp_path / "srv",
        "mcp_auth_token": secrets.token_hex(32),
        "mcp_redis_tools_port": free_port(),
        "mcp_gateway_port": free_port(),
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_servers_are_forked_when_the_agent_server_runs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    # Without preloading (cheaper to start here): forking is the same either way.
    server = AgentServer(settings.agent_server_dir, idle=60, preload=False)
    info = server.ensure()
    launcher = Launcher(settings)
    try:
        assert launcher.up(["redis-tools", "gateway"]) == ["redis-tools", "gateway"]
        state = launcher.read_state()
        for name in ("redis-tools", "gateway"):
            item = state[name]
            assert proc_stat_fields(item.pid, 4) == [info.pid]  # a child of the agent server
            assert proc_stat_fields(item.pid, 6) == [item.pid]  # its own session
            assert httpx.get(item.url + "/health", timeout=5).status_code == 200
            if item.limits == "cgroup":
                groups = Path(f"/proc/{item.pid}/cgroup").read_text()
                assert f"mcp-{name}-{item.port}" in groups
        pids = [state[n].pid for n in ("redis-tools", "gateway")]
        assert sorted(launcher.down()) == ["gateway", "redis-tools"]
        assert not any(proc_alive(pid) for pid in pids)
    finally:
        launcher.down()
        server.stop(grace=1.0)


def test_servers_start_as_their_own_python_without_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, cfn_agent_server="off")
    launcher = Launcher(settings)
    try:
        assert launcher.up(["redis-tools"]) == ["redis-tools"]
        item = launcher.read_state()["redis-tools"]
        assert AgentServer.from_settings(settings).running() is None
        assert Path(f"/proc/{item.pid}/cmdline").read_bytes().split(b"\0")[1:5] == [
            b"-m",
            b"cfn.mcp.serve",
            b"redis-tools",
            b"--port",
        ]
    finally:
        launcher.down()
