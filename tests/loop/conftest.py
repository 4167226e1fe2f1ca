from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cfn.loop.state import TaskOptions
from cfn.settings import Settings
from tests.support.servers import RedisServer


@pytest.fixture
def loop_settings(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for a real loop: the test's Redis, SQLite under tmp_path, fast heartbeats.

    Agent processes inherit the environment, so it is set there too.
    """
    env = {
        "REDIS_URL": redis_server.url,
        "CFN_STATE_DIR": str(tmp_path / ".cfn"),
        "CFN_AGENTS_DIR": str(tmp_path / "agents"),
        "CFN_AGENT_HEARTBEAT_INTERVAL": "0.5",
        "AGENT_TIMEOUT": "60",
    }
    (tmp_path / "agents").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def options(tmp_path: Path, task_id: str = "t1", **kwargs: Any) -> TaskOptions:
    values: dict[str, Any] = {
        "task_id": task_id,
        "epic": "Build a hello module",
        "mode": "mvp",
        "implementers": 2,
        "validators": 2,
        "workspace": str(tmp_path / "ws" / task_id),
    }
    values.update(kwargs)
    return TaskOptions(**values)
