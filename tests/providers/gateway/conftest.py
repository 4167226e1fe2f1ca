"""Fixtures of the gateway tests: a gateway over a real socket, on a real Redis and SQLite."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cfn.providers.gateway.server import mint_agent_token, serve
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.providers.conftest import MakeSettings
from tests.support.servers import RedisServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    url: str
    settings: Settings

    def token(self, agent: str = "impl-1-1", task: str = "T1", **kw: Any) -> str:
        values: dict[str, Any] = {"provider": "zai", "model": "glm-4.6", "providers": ("zai",)}
        values.update(kw)
        return mint_agent_token(self.settings, agent, task, **values)

    def store(self) -> Store:
        return Store.open(self.settings)


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway_factory(
    served: MakeSettings, redis_server: RedisServer
) -> AsyncIterator[GatewayFactory]:
    tasks: list[asyncio.Task[None]] = []

    async def start(**overrides: Any) -> Gateway:
        settings = served(redis_url=redis_server.url, **overrides)
        port = free_port()
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, port=port, record=False, ready=ready))
        tasks.append(task)
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.is_set()
        return Gateway(f"http://127.0.0.1:{port}", settings)

    yield start
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """The gateway writes history off the request's path: wait for it to land."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
