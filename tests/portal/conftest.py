"""The portal on real parts: uvicorn on a free port (in a thread with its own event
loop), the test's redis-server, SQLite under tmp_path, agent processes with the
offline provider."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cfn.portal.auth import load_secret, mint_token
from cfn.portal.server import serve
from cfn.settings import Settings
from tests.support.servers import RedisServer, free_port

CLAIM_IDLE = 3.0


@pytest.fixture
def portal_settings(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's Redis and SQLite; agent processes inherit the same environment."""
    env = {
        "REDIS_URL": redis_server.url,
        "CFN_STATE_DIR": str(tmp_path / ".cfn"),
        "CFN_AGENTS_DIR": str(tmp_path / "agents"),
        "AGENT_TIMEOUT": "90",
        "CFN_WORKER_CLAIM_IDLE": str(CLAIM_IDLE),
        # Slow agent start-up on a loaded machine must not count as a lapsed heartbeat
        # (start-up grace is twice the interval): these tests are about the portal.
        "CFN_AGENT_HEARTBEAT_INTERVAL": "15",
    }
    (tmp_path / "agents").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@dataclass
class RunningPortal:
    settings: Settings
    worker: bool
    port: int = field(default_factory=free_port)
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str = "operator", sub: str = "tester", task_id: str | None = None,
              ttl: float = 3600) -> str:
        return mint_token(load_secret(self.settings), sub, role, task_id, ttl)

    def headers(self, role: str = "operator", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, **kwargs)}"}

    def client(self, role: str | None = "operator", **kwargs: Any) -> httpx.Client:
        headers = self.headers(role, **kwargs) if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def start(self) -> RunningPortal:
        self._thread = threading.Thread(target=self._run, name="portal", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"portal did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self.task = asyncio.create_task(
            serve(
                self.settings,
                port=self.port,
                host="127.0.0.1",
                worker=self.worker,
                ready=ready,
                record=False,
            )
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({self.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def stop(self) -> None:
        if self.loop is not None and self.task is not None and not self.task.done():
            self.loop.call_soon_threadsafe(self.task.cancel)
        if self._thread is not None:
            self._thread.join(30)


@pytest.fixture
def portal(portal_settings: Settings) -> Iterator[RunningPortal]:
    """The portal with its in-process orchestrator worker."""
    server = RunningPortal(portal_settings, worker=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bare_portal(portal_settings: Settings) -> Iterator[RunningPortal]:
    """The portal without a worker: queued tasks wait for one."""
    server = RunningPortal(portal_settings, worker=False).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    """For test code only: wait until ``predicate()`` is truthy (REST has no push)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def task_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "epic": "Build a hello module",
        "mode": "mvp",
        "implementers": 1,
        "validators": 1,
    }
    body.update(overrides)
    return body
