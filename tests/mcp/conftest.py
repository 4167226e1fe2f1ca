"""One MCP stack per test session: redis-server, the four servers and the gateway
(started by the real launcher, under cgroup limits where writable), a local
web page and an n8n stand-in, and a workspace with a vulnerable fixture project.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cfn.mcp.launcher import Launcher
from cfn.mcp.tokens import TokenAuthority
from cfn.settings import Settings
from tests.support.mcp_fakes import LocalWeb
from tests.support.servers import RedisServer, free_port

ALL_SKILLS = ("browser-automation", "redis-management", "workflow-automation", "security-scanning")

VULNERABLE = """import subprocess


def deploy(branch):
    return subprocess.call("git push origin " + branch, shell=True)


AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
"""


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    authority: TokenAuthority
    launcher: Launcher
    redis: RedisServer
    web: LocalWeb
    workspace: Path

    def url(self, name: str) -> str:
        return self.launcher.url(name)

    def token(
        self,
        skills: tuple[str, ...] | list[str] = ALL_SKILLS,
        *,
        agent_id: str = "impl-1-1",
        task_id: str = "task-mcp",
        scope: tuple[str, ...] = ("read",),
        ttl: float = 600,
        now: float | None = None,
    ) -> str:
        return self.authority.mint(agent_id, task_id, skills, scope=scope, ttl=ttl, now=now)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("mcp")
    redis = RedisServer(root / "redis").start()
    api_key = secrets.token_hex(8)
    web = LocalWeb(api_key).start()
    workspace = root / "workspace"
    (workspace / "project").mkdir(parents=True)
    (workspace / "project" / "deploy.py").write_text(VULNERABLE)
    (workspace / "project" / "clean.py").write_text("def add(a, b):\n    return a + b\n")
    # A symlink planted in the workspace, to a vulnerable file outside it.
    (root / "outside-secrets.py").write_text(VULNERABLE)
    (workspace / "linked").mkdir()
    (workspace / "linked" / "leak.py").symlink_to(root / "outside-secrets.py")
    (root / "outside").mkdir()
    (root / "outside" / "x.py").write_text("import pickle\n")
    env = {
        "CFN_STATE_DIR": str(root / ".cfn"),
        "REDIS_URL": redis.url,
        "MCP_AUTH_TOKEN": secrets.token_hex(32),
        "MCP_PLAYWRIGHT_PORT": str(free_port()),
        "MCP_REDIS_TOOLS_PORT": str(free_port()),
        "MCP_N8N_PORT": str(free_port()),
        "MCP_SECURITY_SCANNER_PORT": str(free_port()),
        "MCP_GATEWAY_PORT": str(free_port()),
        "MCP_WORKSPACE": str(workspace),
        "MCP_PLAYWRIGHT_ALLOWED_URLS": f"{web.url}/*",
        "N8N_URL": web.url,
        "N8N_API_KEY": api_key,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        settings = Settings()
    launcher = Launcher(settings)
    try:
        launcher.up(env=env)
        yield Stack(
            settings, env, TokenAuthority.from_settings(settings), launcher, redis, web, workspace
        )
    finally:
        launcher.down()
        web.stop()
        redis.stop()


@contextlib.asynccontextmanager
async def mcp_session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    """The SDK's streamable HTTP client, with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as http,
        streamable_http_client(url, http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        yield session


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    data: dict[str, Any] = result.structured_content
    return data
