from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.context import AgentContext, generate_cli_context
from cfn.agents.spawn.process import ProcessSpawner
from cfn.settings import Settings
from tests.support.servers import RedisServer


@pytest.fixture
def task_id() -> str:
    """Unique per test: agent names (and so cgroup names) are machine-wide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "README.md").write_text("# sample project\n")
    return path


@pytest.fixture
def spawner(settings: Settings, redis_server: RedisServer) -> ProcessSpawner:
    return ProcessSpawner(settings, redis_url=redis_server.url)


@pytest.fixture
def make_context(
    settings: Settings, redis_server: RedisServer, workspace: Path, task_id: str
) -> Any:
    def make(agent_id: str = "impl-1-1", **overrides: Any) -> AgentContext:
        return generate_cli_context(
            task_id,
            agent_id,
            settings=settings,
            redis_host="127.0.0.1",
            redis_port=redis_server.port,
            workspace=workspace,
            **overrides,
        )

    return make
