from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cfn.coordination.connection import RedisManager
from cfn.settings import Settings
from tests.support.cgroups import private_cgroups
from tests.support.servers import RedisServer

CFN = [sys.executable, "-m", "cfn"]


@pytest.fixture(scope="session", autouse=True)
def _private_cgroups() -> Iterator[None]:
    """Agents' cgroups are private to this pytest process (see tests/support/cgroups.py)."""
    with private_cgroups(f"cfn-tests-{os.getpid()}"):
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's REDIS_URL etc.; state goes to tmp_path."""
    for name in list(os.environ):
        if name.startswith(("REDIS_", "CFN_", "DATABASE_URL", "DB_PATH")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CFN_STATE_DIR", str(tmp_path / ".cfn"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fallback(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server, for REDIS_FALLBACK_1."""
    server = RedisServer(tmp_path / "fallback").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(cfn_state_dir=tmp_path / ".cfn")


@pytest.fixture
async def manager(redis_server: RedisServer, settings: Settings) -> AsyncIterator[RedisManager]:
    mgr = RedisManager.from_url(redis_server.url, settings)
    try:
        yield mgr
    finally:
        await mgr.close()
