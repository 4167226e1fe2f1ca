"""MCP servers forked from the agent server: the same servers, limits and stop, at a
fraction of the start cost; without the server (or with it off) they start as before."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cfn.agents.forkserver import AgentServer
from cfn.errors import CfnError
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


def test_a_port_answered_by_another_process_is_an_error_not_healthy(tmp_path: Path) -> None:
    """Another checkout's server on the port answers /health too: `up` must not take that
    answer for its own server, which died with EADDRINUSE."""

    class Foreign(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "server": "redis-tools", "pid": 1}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    foreign = ThreadingHTTPServer(("127.0.0.1", port), Foreign)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    settings = _settings(tmp_path, cfn_agent_server="off", mcp_redis_tools_port=port)
    launcher = Launcher(settings)
    try:
        with pytest.raises(CfnError, match="redis-tools MCP server exited at start"):
            launcher.up(["redis-tools"])
        (status,) = [s for s in launcher.status() if s.name == "redis-tools"]
        assert not status.healthy
    finally:
        launcher.down()
        foreign.shutdown()
        foreign.server_close()
