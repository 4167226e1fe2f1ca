from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from cfn.coordination import completion, context, signals
from cfn.coordination.connection import RedisManager, mask_url, parse_sentinel_url
from cfn.errors import ConfigError, RedisUnavailableError
from cfn.settings import Settings
from tests.support.servers import RedisServer, SentinelServer, free_port


def fast_settings(tmp_path: Path) -> Settings:
    return Settings(
        cfn_state_dir=tmp_path / ".cfn",
        redis_connect_timeout=1.0,
        redis_max_retries_per_request=1,
        redis_retry_delay_on_failover=0.01,
    )


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("redis://user:pw@host:1/2") == "redis://user:***@host:1/2"
    assert mask_url("redis://host:6379") == "redis://host:6379"


def test_parse_sentinel_url() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2")
    assert target.sentinels == [("h1", 26379), ("h2", 26380)]
    assert (target.master, target.db, target.password) == ("mymaster", 2, "pw")
    with pytest.raises(ConfigError, match="names no master"):
        parse_sentinel_url("redis+sentinel://h1:26379")
    with pytest.raises(ConfigError, match="not host:port"):
        parse_sentinel_url("redis+sentinel://h1/mymaster")


def test_unsupported_url_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported Redis URL"):
        RedisManager.from_url("http://:pw@x:1", fast_settings(tmp_path))


async def test_primary_stopped_mid_sequence_fallback_serves_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary = RedisServer(tmp_path / "p").start()
    fallback = RedisServer(tmp_path / "f").start()
    mgr = RedisManager.from_url(primary.url, fast_settings(tmp_path), fallback.url)
    try:
        for n in range(5):
            await context.store_context(mgr, "T1", f"k{n}", json.dumps(n), 60)
        assert primary.client().dbsize() == 5
        primary.kill()
        with caplog.at_level(logging.WARNING, logger="cfn.coordination.connection"):
            for n in range(5, 20):
                await context.store_context(mgr, "T1", f"k{n}", json.dumps(n), 60)
                assert await context.get_context(mgr, "T1", f"k{n}") == n
            await completion.signal_completion(mgr, "T1", "a1", "success", '{"confidence": 1}')
            report = await completion.collect_results(mgr, "T1", 1, 0.5, 5)
        assert report.met
        assert fallback.client().dbsize() == 15 + 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "using redis://127.0.0.1:" in warnings[0].getMessage()
    finally:
        await mgr.close()
        primary.stop()
        fallback.stop()


async def test_waiter_moves_to_fallback_when_primary_dies(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "p").start()
    fallback = RedisServer(tmp_path / "f").start()
    mgr = RedisManager.from_url(primary.url, fast_settings(tmp_path), fallback.url)
    sender = RedisManager.from_url(fallback.url, fast_settings(tmp_path))
    try:
        waiter = asyncio.create_task(signals.wait_signal(mgr, "T1", "loop2:start", 10))
        await asyncio.sleep(0.2)
        primary.kill()
        await asyncio.sleep(0.5)
        await signals.send_signal(sender, "T1", "loop2:start", '{"via": "fallback"}')
        assert await asyncio.wait_for(waiter, 8) == {"via": "fallback"}
    finally:
        await mgr.close()
        await sender.close()
        primary.stop()
        fallback.stop()


async def test_both_down_is_one_error_naming_both_masked(tmp_path: Path) -> None:
    p, f = free_port(), free_port()
    mgr = RedisManager.from_url(
        f"redis://:hunter2@127.0.0.1:{p}/0",
        fast_settings(tmp_path),
        f"redis://:pw2@127.0.0.1:{f}/0",
    )
    try:
        with pytest.raises(RedisUnavailableError) as info:
            await context.store_context(mgr, "T1", "k", "{}", 60)
    finally:
        await mgr.close()
    text = str(info.value)
    assert f"redis://:***@127.0.0.1:{p}/0" in text and f"redis://:***@127.0.0.1:{f}/0" in text
    assert "hunter2" not in text and "pw2" not in text


async def test_sentinel_failover_is_followed(tmp_path: Path) -> None:
    master = RedisServer(tmp_path / "m").start()
    replica = RedisServer(tmp_path / "r", replica_of=master.port).start()
    sentinel = SentinelServer(tmp_path / "s", master.port).start()
    settings = Settings(
        cfn_state_dir=tmp_path / ".cfn",
        cfn_redis_sentinels=[f"127.0.0.1:{sentinel.port}"],
        redis_retry_delay_on_failover=0.2,
        redis_max_retries_per_request=3,
        redis_connect_timeout=1.0,
    )
    deadline = time.monotonic() + 15
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.05)
    mgr = RedisManager.from_settings(settings)
    try:
        await context.store_context(mgr, "T1", "before", '"x"', 600)
        # Replication is asynchronous: wait until the replica acknowledged it.
        assert await mgr.client.wait(1, 5000) == 1
        master.kill()
        deadline = time.monotonic() + 30
        while sentinel.master_port_now() != replica.port:
            assert time.monotonic() < deadline, "sentinel did not promote the replica"
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                await context.store_context(mgr, "T1", "after", '"y"', 600)
                break
            except RedisUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await context.get_context(mgr, "T1", "before") == "x"
        assert replica.client().get("context:T1:after") == '"y"'
    finally:
        await mgr.close()
        sentinel.stop()
        replica.stop()
        master.stop()
