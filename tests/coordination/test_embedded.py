"""The embedded redis-server: started on first use, reused, managed, moved off taken ports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.servers import cfn_env, free_port

CFN = [sys.executable, "-m", "cfn"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFN, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = cfn_env(tmp_path, CFN_REDIS_PORT=str(free_port()))
    yield e
    run(e, "redis", "stop")


def instance(tmp_path: Path) -> dict[str, object]:
    data = json.loads((tmp_path / ".cfn" / "redis" / "instance.json").read_text())
    assert isinstance(data, dict)
    return data


def test_started_on_first_use_and_reused(env: dict[str, str], tmp_path: Path) -> None:
    port = int(env["CFN_REDIS_PORT"])
    assert run(env, "redis", "status").returncode == 1
    r = run(env, "context", "store", "--task-id", "T1", "--key", "k", "--value", "42")
    assert r.returncode == 0, r.stderr
    first = instance(tmp_path)
    assert first["port"] == port
    assert (tmp_path / ".cfn" / "redis" / "instance.json").stat().st_mode & 0o077 == 0
    # A second command reuses the same server (same run id), and sees the data.
    r = run(env, "context", "get", "--task-id", "T1", "--key", "k")
    assert r.stdout.strip() == "42"
    assert instance(tmp_path)["run_id"] == first["run_id"]
    client = redis.Redis(port=port, password=str(first["password"]), decode_responses=True)
    cfg = client.config_get("appendonly") | client.config_get("notify-keyspace-events")
    assert cfg["appendonly"] == "yes"
    assert set("Klgx") <= set(cfg["notify-keyspace-events"])
    assert client.config_get("dir")["dir"] == str(tmp_path / ".cfn" / "redis")
    # Without the password it refuses: loopback-only and authenticated.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    status = run(env, "redis", "status")
    assert status.returncode == 0 and "yes" in status.stdout and "***" in status.stdout
    assert str(first["password"]) not in status.stdout


def test_stop_keeps_data_with_aof(env: dict[str, str], tmp_path: Path) -> None:
    assert (
        run(
            env,
            "context",
            "store",
            "--task-id",
            "T1",
            "--key",
            "k",
            "--value",
            '"kept"',
            "--ttl",
            "600",
        ).returncode
        == 0
    )
    r = run(env, "redis", "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert run(env, "redis", "status").returncode == 1
    r = run(env, "context", "get", "--task-id", "T1", "--key", "k")
    assert r.returncode == 0 and r.stdout.strip() == '"kept"'


def test_taken_port_moves_and_is_recorded(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["CFN_REDIS_PORT"])))
        squatter.listen()
        r = run(env, "redis", "start")
        assert r.returncode == 0, r.stderr
        assert "is in use by another program" in r.stderr
        moved = instance(tmp_path)["port"]
        assert moved != int(env["CFN_REDIS_PORT"])
        ports = json.loads((tmp_path / ".cfn" / "ports.json").read_text())
        assert ports["redis"]["port"] == moved
    # Later commands agree on the recorded port.
    assert (
        run(env, "context", "store", "--task-id", "T1", "--key", "k", "--value", "1").returncode
        == 0
    )
    assert instance(tmp_path)["port"] == moved


def test_missing_redis_server_binary(tmp_path: Path) -> None:
    env = cfn_env(tmp_path, CFN_REDIS_PORT=str(free_port()), CFN_REDIS_SERVER_BIN="no-such-redis")
    r = run(env, "keys")
    assert r.returncode == 1
    assert r.stderr.startswith("[ERROR] 'no-such-redis' was not found on PATH")
    assert "apt-get install redis-server" in r.stderr
