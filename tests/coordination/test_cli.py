"""The ``cfn`` command run as a real subprocess, as a user or a bash agent would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import RedisServer, cfn_env

CFN = [sys.executable, "-m", "cfn"]


def run(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFN, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    return cfn_env(tmp_path, REDIS_URL=redis_server.url)


def test_context_store_get_delete(env: dict[str, str], redis_server: RedisServer) -> None:
    value = json.dumps({"files": ["x.py"]})
    r = run(
        env,
        "context",
        "store",
        "--task-id",
        "T1",
        "--key",
        "deliverables",
        "--value",
        value,
        "--ttl",
        "60",
    )
    assert r.returncode == 0, r.stderr
    assert 0 < redis_server.client().ttl("context:T1:deliverables") <= 60
    r = run(env, "context", "get", "--task-id", "T1", "--key", "deliverables")
    assert r.returncode == 0 and json.loads(r.stdout) == {"files": ["x.py"]}
    assert run(env, "context", "delete", "--task-id", "T1", "--key", "deliverables").returncode == 0
    r = run(env, "context", "get", "--task-id", "T1", "--key", "deliverables")
    assert r.returncode == 1 and r.stderr.startswith("[ERROR] no context 'deliverables'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["context", "store", "--task-id", "T*", "--key", "k", "--value", "{}"], "invalid task id"),
        (["context", "store", "--task-id", "T1", "--key", "k", "--value", "{x"], "not valid JSON"),
        (
            ["context", "store", "--task-id", "T1", "--key", "k", "--value", "1", "--ttl", "-1"],
            "ttl must be",
        ),
        (["signal", "send", "--task-id", "T1", "--channel", "a b"], "invalid channel"),
        (
            ["signal", "send", "--task-id", "T1", "--channel", "c", "--payload", "nope"],
            "not valid JSON",
        ),
        (
            ["signal", "wait", "--task-id", "T1", "--channel", "c", "--timeout", "-5"],
            "timeout must be",
        ),
        (["signal", "complete", "--task-id", "T1", "--agent-id", "a:b"], "invalid agent id"),
        (
            ["collect-results", "--task-id", "T1", "--expected", "0", "--threshold", "0.5"],
            "expected must be",
        ),
        (
            ["collect-results", "--task-id", "T1", "--expected", "2", "--threshold", "2"],
            "threshold must be",
        ),
        (["lock", "acquire", "--resource", "r", "--ttl", "0"], "lock ttl must be"),
        (["keys", "--pattern", ""], "pattern must be"),
    ],
)
def test_bad_input_one_error_exit_2_nothing_written(
    env: dict[str, str], redis_server: RedisServer, args: list[str], message: str
) -> None:
    r = run(env, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[ERROR]") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert redis_server.client().dbsize() == 0


def test_oversized_value_refused(env: dict[str, str], redis_server: RedisServer) -> None:
    env = dict(env, CFN_CONTEXT_MAX_BYTES="100")
    r = run(
        env, "context", "store", "--task-id", "T1", "--key", "k", "--value", json.dumps("x" * 200)
    )
    assert r.returncode == 2 and "over the 100-byte limit" in r.stderr
    assert redis_server.client().dbsize() == 0


def test_bad_config_is_one_clear_error(env: dict[str, str]) -> None:
    r = run(dict(env, REDIS_CONNECT_TIMEOUT="soon"), "keys")
    assert r.returncode == 2
    assert r.stderr.startswith("[ERROR] invalid configuration: REDIS_CONNECT_TIMEOUT")


def test_signal_wait_timeout_exit_1(env: dict[str, str]) -> None:
    r = run(
        env, "signal", "wait", "--task-id", "T1", "--channel", "start-loop2", "--timeout", "0.2"
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "[ERROR] no signal on coord:T1:start-loop2 within 0.2 s"


def test_signal_send_then_wait(env: dict[str, str]) -> None:
    assert (
        run(
            env,
            "signal",
            "send",
            "--task-id",
            "T1",
            "--channel",
            "agent-complete",
            "--payload",
            '{"a": 1}',
        ).returncode
        == 0
    )
    r = run(
        env, "signal", "wait", "--task-id", "T1", "--channel", "agent-complete", "--timeout", "2"
    )
    assert r.returncode == 0 and json.loads(r.stdout) == {"a": 1}


def test_collect_results_cli(env: dict[str, str]) -> None:
    for agent, conf in (("a1", 0.9), ("a2", "high")):
        r = run(
            env,
            "signal",
            "complete",
            "--task-id",
            "T1",
            "--agent-id",
            agent,
            "--payload",
            json.dumps({"confidence": conf}),
        )
        assert r.returncode == 0, r.stderr
    r = run(
        env,
        "collect-results",
        "--task-id",
        "T1",
        "--expected",
        "2",
        "--threshold",
        "0.5",
        "--timeout",
        "5",
        "--json",
    )
    assert r.returncode == 1, r.stdout  # one agent's confidence is not a number
    report = json.loads(r.stdout)
    assert report["arrived"] == 2 and report["failed"] == 1 and report["mean"] == 0.9
    r = run(
        env,
        "collect-results",
        "--task-id",
        "T1",
        "--expected",
        "1",
        "--threshold",
        "0.5",
        "--agent",
        "a1",
        "--timeout",
        "5",
    )
    assert r.returncode == 0 and "met" in r.stdout


def test_lock_cli(env: dict[str, str]) -> None:
    r = run(env, "lock", "acquire", "--resource", "repo", "--ttl", "30")
    assert r.returncode == 0
    handle = json.loads(r.stdout)
    assert handle["fence"] == 1
    busy = run(env, "lock", "acquire", "--resource", "repo")
    assert busy.returncode == 1 and "held by someone else" in busy.stderr
    bad = run(env, "lock", "release", "--resource", "repo", "--token", "wrong")
    assert bad.returncode == 1 and "not held" in bad.stderr
    ok = run(env, "lock", "release", "--resource", "repo", "--token", handle["token"])
    assert ok.returncode == 0


def test_keys_uses_pattern(env: dict[str, str], redis_server: RedisServer) -> None:
    c = redis_server.client()
    c.set("coord:T1:a", "1")
    c.set("coord:T2:b", "1")
    c.set("context:T1:x", "1")
    r = run(env, "keys", "--pattern", "coord:*")
    assert r.returncode == 0 and r.stdout.split() == ["coord:T1:a", "coord:T2:b"]


def test_ports_cli_prints_seed_numbers(env: dict[str, str]) -> None:
    r = run(env, "ports", "feature-auth")
    from cfn.worktree.ports import calculate_ports

    p = calculate_ports("feature-auth")
    assert r.stdout.split() == [str(p.redis), str(p.postgres), str(p.orchestrator)]
