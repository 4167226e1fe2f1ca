"""cfn's own LLM gateway as a daemon: started on first need, reused, restarted when its
settings change, stopped; its port taken by another program; the health check."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from cfn.health import check_llm_gateway
from cfn.providers.gateway.server import ensure_gateway, running_gateway, stop_gateway
from cfn.settings import Settings
from tests.support.servers import RedisServer


@pytest.fixture
def env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)


async def test_started_on_first_need_reused_restarted_on_new_settings_and_stopped(
    env: None,
) -> None:
    settings = Settings()
    before = await check_llm_gateway(settings)
    assert before.status == "ok" and before.configured is False
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        settings = Settings(cfn_llm_gateway_port=taken)
        url = ensure_gateway(settings)
        assert urlsplit(url).port != taken  # the port was another program's: any free one
        first = running_gateway(settings)
        assert first is not None and first["url"] == url
        assert ensure_gateway(settings) == url  # reused
        assert running_gateway(settings)["pid"] == first["pid"]  # type: ignore[index]
        assert (await check_llm_gateway(settings)).status == "ok"
        # Other settings (a budget) are not served by the running one: it is replaced.
        changed = Settings(cfn_llm_gateway_port=taken, cfn_task_budget_usd=1.0)
        ensure_gateway(changed)
        second = running_gateway(changed)
        assert second is not None and second["pid"] != first["pid"]
        assert stop_gateway(changed)
        assert running_gateway(changed) is None
        assert (await check_llm_gateway(changed)).configured is False
    finally:
        holder.close()
        stop_gateway(settings)


async def test_a_configured_gateway_is_used_as_is_and_checked(env: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    settings = Settings(cfn_llm_gateway_url=f"http://127.0.0.1:{dead}/")
    assert ensure_gateway(settings) == f"http://127.0.0.1:{dead}"  # nothing started
    assert running_gateway(settings) is None
    check = await check_llm_gateway(settings, timeout=2)
    assert check.status == "error" and f":{dead}/healthz" in check.detail
