"""Per-agent Redis ACL users on a real redis-server with a password (like the embedded one).

An agent's credentials reach its own task's keys and nothing else; the admin
password never reaches an agent's environment or context; the users go when
the agents end; a real loop with real agent processes still succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cfn.agents import heartbeat as hb
from cfn.agents.context import generate_cli_context
from cfn.agents.signals import send_stop, wait_agent_signal
from cfn.agents.spawn.process import ProcessSpawner
from cfn.coordination import acl, completion, locks
from cfn.coordination.connection import RedisManager
from cfn.errors import AgentSpawnError, ConfigError
from cfn.loop.app import run_loop
from cfn.providers import RedisLedger
from cfn.providers.usage import Charge
from cfn.settings import Settings
from tests.loop.conftest import options
from tests.support.servers import RedisServer

ADMIN_PW = "admin-Pw-7f3c9e2a1b"
BASH_AGENT = Path(__file__).resolve().parents[2] / "examples" / "agents" / "bash-agent.sh"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis", password=ADMIN_PW).start()
    try:
        yield srv
    finally:
        srv.stop()


def agent_client(srv: RedisServer, creds: acl.AgentCredentials) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=srv.port,
        username=creds.username,
        password=creds.password,
        decode_responses=True,
    )


async def test_agent_user_reaches_only_its_own_task(server: RedisServer) -> None:
    admin = server.client()
    admin.lpush("coord:t2:complete", "x:success")
    admin.set("context:t2:metadata", "{}")
    admin.set("context:t1:metadata", "{}")
    users = acl.AgentAcl([server.url])
    creds = await users.create("t1", "impl-1-1")
    assert creds is not None and creds.username == "cfn:t1:impl-1-1"
    assert creds.password not in repr(creds)
    agent = agent_client(server, creds)
    # Its own keys: the seed's wire format, heartbeat, signals, budget, reads of its task.
    assert agent.lpush("coord:t1:complete", "impl-1-1:success") == 1
    agent.lpush("coord:t1:payload:impl-1-1", '{"confidence": 0.9}')
    agent.set("swarm:t1:heartbeat:impl-1-1", "{}", px=1000)
    assert agent.rpop("swarm:t1:signal:impl-1-1") is None
    admin.hset("usage:t1", "cost_usd", "0.25")
    assert agent.hget("usage:t1", "cost_usd") == "0.25"  # its budget: read, never written
    assert agent.get("context:t1:metadata") == "{}"
    assert agent.lrange("coord:t1:complete", 0, -1) == ["impl-1-1:success"]
    assert agent.publish("coord:t1:loop3:complete", "hi") == 0
    refused: list[tuple[str, tuple[Any, ...]]] = [
        ("lrange", ("coord:t2:complete", 0, -1)),  # another task
        ("lpush", ("coord:t2:complete", "impl-1-1:success")),
        ("get", ("context:t2:metadata",)),
        ("set", ("swarm:t2:heartbeat:impl-1-1", "{}")),
        ("hincrbyfloat", ("usage:t2", "cost_usd", 1)),
        ("hincrbyfloat", ("usage:t1", "cost_usd", -0.25)),  # its own task's budget too
        ("hset", ("usage:t1:agent:impl-1-1", "cost_usd", "0")),
        ("delete", ("usage:t1",)),
        ("lpush", ("coord:t1:payload:impl-2-1", "{}")),  # another agent's own key
        ("set", ("context:t1:metadata", "forged")),  # task context is read-only
        ("set", ("lock:anything", "1")),
        ("get", ("queue:tasks",)),
        ("publish", ("coord:t2:loop3:complete", "x")),
        ("keys", ("*",)),
        ("scan", (0,)),
        ("flushall", ()),
        ("config_get", ("requirepass",)),
        ("acl_list", ()),
        ("acl_setuser", ("evil",)),
        ("shutdown", ()),
        ("client_list", ()),
        ("execute_command", ("MONITOR",)),
    ]
    for name, args in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            getattr(agent, name)(*args)
    # Scripts run with the agent's permissions: keys inside are checked too.
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.eval("return redis.call('GET', KEYS[1])", 1, "coord:t2:complete")
    with pytest.raises(redis.exceptions.ResponseError, match=r"can.t access"):
        agent.eval("return redis.call('LPUSH', 'coord:t2:complete', 'x:success')", 0)
    assert admin.lrange("coord:t2:complete", 0, -1) == ["x:success"]  # untouched
    assert admin.get("context:t1:metadata") == "{}"
    # Deleted: the password stops working and open connections are dropped.
    await users.delete("t1", "impl-1-1")
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)):
        agent.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        agent_client(server, creds).ping()
    assert all(not u.startswith("cfn:") for u in admin.acl_users())
    agent.close()
    admin.close()


async def test_python_agent_primitives_work_under_the_acl(server: RedisServer) -> None:
    """Everything the agent runtime does: completion script, heartbeat, lock, budget, signals."""
    users = acl.AgentAcl([server.url])
    creds = await users.create("t1", "val-1-1")
    assert creds is not None
    mine = RedisManager.from_url(acl.with_credentials(server.url, creds.username, creds.password))
    admin = RedisManager.from_url(server.url)
    try:
        resource = acl.lock_resource("t1", "val-1-1")
        handle = await locks.acquire_lock(mine, resource, ttl=5.0, wait=1.0)
        await locks.extend_lock(mine, resource, handle.token, 5.0)
        await hb.beat(mine, "t1", "val-1-1", 0.5, pid=os.getpid())
        # The budget is the gateway's (admin credentials): the agent reads it, cannot charge it.
        ok, _spent = await RedisLedger(admin).admit("t1", "val-1-1", Charge(0.01, 10, 5, 1), 1.0)
        assert ok
        assert (await RedisLedger(mine).totals("t1")).calls == 1
        with pytest.raises(Exception, match=r"(?i)permission|can.t access|noperm"):
            await RedisLedger(mine).admit("t1", "val-1-1", Charge(0.01, 10, 5, 1), 1.0)
        await send_stop(admin, "t1", "val-1-1", "test")
        signal = await wait_agent_signal(mine, "t1", "val-1-1", 5.0)
        assert signal.type == "stop"
        assert "val-1-1" not in await completion.reported_agents(mine, "t1")
        await completion.signal_completion(mine, "t1", "val-1-1", "success", '{"confidence": 1}')
        await locks.release_lock(mine, resource, handle.token)
        assert await completion.reported_agents(admin, "t1") == {"val-1-1"}
        # ... and for another task the same calls are refused by Redis.
        with pytest.raises(redis.exceptions.ResponseError):
            await completion.signal_completion(mine, "t2", "val-1-1", "success", "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await locks.acquire_lock(mine, acl.lock_resource("t2", "val-1-1"), ttl=5.0)
        assert await completion.reported_agents(admin, "t2") == set()
    finally:
        await mine.close()
        await admin.close()
        await users.delete("t1", "val-1-1")


async def test_bash_agent_with_its_own_user_and_no_admin_secret(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-cli --user + REDISCLI_AUTH; the admin password is in no variable or file."""
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("REDIS_PASSWORD", ADMIN_PW)
    monkeypatch.setenv("MCP_AUTH_TOKEN", "signing-secret-" + "x" * 32)
    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "README.md").write_text("hello\n")
    users = acl.AgentAcl([server.url], "on")
    creds = await users.create("t7", "impl-1-1")
    assert creds is not None
    ctx = generate_cli_context(
        "t7",
        "impl-1-1",
        settings=settings,
        redis_host="127.0.0.1",
        redis_port=server.port,
        workspace=workspace,
        heartbeat_interval=0.5,
        redis_username=creds.username,
        redis_password=creds.password,
    )
    env_file = tmp_path / "agent.env"
    spawner = ProcessSpawner(settings, redis_url=server.url)
    script = f"env -0 > {env_file} && exec bash {BASH_AGENT}"
    handle = await spawner.spawn(ctx, command=["bash", "-c", script])
    info = await handle.wait()
    assert info.ok, handle.log_path.read_text()
    admin = server.client()
    assert admin.lrange("coord:t7:complete", 0, -1) == ["impl-1-1:success"]
    env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
    assert env["REDISCLI_AUTH"] == creds.password
    assert env["REDIS_USERNAME"] == creds.username
    assert env["REDIS_URL"].startswith("redis://cfn%3At7%3Aimpl-1-1:")
    assert "MCP_AUTH_TOKEN" not in env
    assert not [k for k, v in env.items() if ADMIN_PW in v]
    for path in handle.directory.iterdir():
        assert ADMIN_PW not in path.read_text(errors="replace"), path
    context = json.loads(handle.context_path.read_text())
    assert context["cfn"]["redis"]["username"] == creds.username
    # The same agent pointed at another task is refused by Redis, not by its own script.
    agent = agent_client(server, creds)
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.lpush("coord:t8:complete", "impl-1-1:success")
    assert admin.exists("coord:t8:complete") == 0
    agent.close()
    await users.delete("t7", "impl-1-1")
    admin.close()


async def test_loop_with_real_agents_under_acl(
    tmp_path: Path, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "REDIS_URL": server.url,
        "CFN_STATE_DIR": str(tmp_path / ".cfn"),
        "CFN_AGENTS_DIR": str(tmp_path / "agents"),
        # A busy 2-core machine starts agents slowly: generous limits (this is about ACLs).
        "CFN_AGENT_HEARTBEAT_INTERVAL": "3",
        "AGENT_TIMEOUT": "240",
        "CFN_REDIS_AGENT_ACL": "on",
    }
    (tmp_path / "agents").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    admin = server.client()
    admin.acl_log_reset()
    outcome = await run_loop(Settings(), options=options(tmp_path, "t1"))
    assert outcome.status == "succeeded" and outcome.decision == "PROCEED"
    assert sorted(admin.lrange("coord:t1:complete", 0, -1)) == [
        "impl-1-1:success",
        "impl-2-1:success",
        "val-1-1:success",
        "val-2-1:success",
    ]
    # Every agent ran as its own user, none was refused anything, and all users are gone.
    agents_dir = tmp_path / ".cfn" / "tasks" / "t1" / "agents"
    for agent_id in ("impl-1-1", "impl-2-1", "val-1-1", "val-2-1"):
        text = (agents_dir / agent_id / "context.json").read_text()
        assert json.loads(text)["cfn"]["redis"]["username"] == f"cfn:t1:{agent_id}"
        assert ADMIN_PW not in text
    assert admin.acl_log() == []
    # The users go as the agents end (they may still be exiting when the loop returns).
    deadline = time.monotonic() + 20
    while [u for u in admin.acl_users() if u.startswith("cfn:")] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [u for u in admin.acl_users() if u.startswith("cfn:")] == []
    admin.close()


async def test_auto_falls_back_with_one_warning_when_acl_is_refused(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = server.client()
    admin.acl_setuser(
        "orchestrator",
        enabled=True,
        passwords=["+orch-pw"],
        keys=["*"],
        commands=["+@all", "-@admin"],
    )
    limited = f"redis://orchestrator:orch-pw@127.0.0.1:{server.port}/0"
    auto = acl.AgentAcl([limited], "auto")
    assert await auto.create("t1", "impl-1-1") is None
    assert await auto.create("t1", "impl-2-1") is None
    warnings = [r for r in caplog.records if "ACL SETUSER" in r.getMessage()]
    assert len(warnings) == 1 and not auto.enabled
    with pytest.raises(AgentSpawnError, match="CFN_REDIS_AGENT_ACL=on"):
        await acl.AgentAcl([limited], "on").create("t1", "impl-1-1")
    assert await acl.AgentAcl([server.url], "off").create("t1", "impl-1-1") is None
    with pytest.raises(ConfigError):
        acl.AgentAcl([server.url], "maybe")
    assert [u for u in admin.acl_users() if u.startswith("cfn:")] == []
    admin.close()


async def test_embedded_redis_takes_agent_users(tmp_path: Path) -> None:
    """cfn's own redis-server (requirepass, the default user): `auto` creates users there."""
    from cfn.coordination.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(Settings(cfn_state_dir=tmp_path / ".cfn"))
    url = embedded.ensure_running()
    try:
        users = acl.AgentAcl([url])
        creds = await users.create("emb-t1", "impl-1-1")
        assert creds is not None and users.enabled
        mine = redis.Redis.from_url(acl.with_credentials(url, creds.username, creds.password))
        assert mine.lpush("coord:emb-t1:complete", "impl-1-1:success") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            mine.lpush("coord:emb-t2:complete", "impl-1-1:success")
        with pytest.raises(redis.exceptions.NoPermissionError):
            mine.config_get("requirepass")
        mine.close()
        await users.delete("emb-t1", "impl-1-1")
        admin = redis.Redis.from_url(url, decode_responses=True)
        assert "cfn:emb-t1:impl-1-1" not in admin.acl_users()
        assert admin.exists("coord:emb-t2:complete") == 0
        admin.close()
    finally:
        embedded.stop()


async def test_a_delete_that_fails_is_tried_again_then_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A busy machine can time a DELUSER out; the user would keep its rights, so the
    delete is tried again (acl.DELETE_RETRIES) before one warning says it failed."""
    from tests.support.servers import free_port

    users = acl.AgentAcl([f"redis://127.0.0.1:{free_port()}/0"], "on")  # nothing listens
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cfn.coordination.acl"):
        await users.delete("t1", "impl-1-1")  # never raises
    assert time.monotonic() - began >= sum(acl.DELETE_RETRIES)
    warned = [r for r in caplog.records if "could not delete" in r.getMessage()]
    assert len(warned) == 1 and "cfn:t1:impl-1-1" in warned[0].getMessage()
