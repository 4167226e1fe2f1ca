"""`cfn llm-gateway` as a user runs it: in the foreground, --detach (started, then
reused), status, stop; what a caller without a token gets."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CFN
from tests.support.servers import RedisServer, cfn_env, free_port


def _cfn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFN, *args], env=env, capture_output=True, text=True, timeout=90)


def test_detach_reuse_status_a_call_and_stop(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url, CFN_LLM_GATEWAY_PORT=str(port))
    stopped = False
    try:
        first = _cfn(env, "llm-gateway", "--detach")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"LLM gateway: http://127.0.0.1:{port}"
        again = _cfn(env, "llm-gateway", "--detach")
        assert again.stdout == first.stdout  # reused, not a second one
        status = _cfn(env, "llm-gateway", "status")
        assert status.returncode == 0, status.stderr
        found = json.loads(status.stdout)
        assert found["url"] == f"http://127.0.0.1:{port}" and found["pid"] > 0
        url = found["url"]
        assert httpx.get(f"{url}/healthz", timeout=10).json()["ok"] is True
        refused = httpx.post(
            f"{url}/v1/messages",
            json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        done = _cfn(env, "llm-gateway", "stop")
        stopped = True
        assert done.returncode == 0 and "LLM gateway stopped" in done.stderr
        with pytest.raises(httpx.TransportError):  # the reused one was the only one
            httpx.get(f"{url}/healthz", timeout=5)
        gone = _cfn(env, "llm-gateway", "status")
        assert gone.returncode == 1 and "no LLM gateway" in gone.stderr
        # Another gateway configured: --detach says so, starts nothing.
        other = _cfn(
            {**env, "CFN_LLM_GATEWAY_URL": "http://127.0.0.1:9/"}, "llm-gateway", "--detach"
        )
        assert other.returncode != 0 and "CFN_LLM_GATEWAY_URL names another gateway" in (
            other.stderr
        )
        assert "Traceback" not in other.stderr
    finally:
        if not stopped:
            _cfn(env, "llm-gateway", "stop")


def test_foreground_serves_until_interrupted(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    proc = subprocess.Popen(
        [*CFN, "llm-gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            except httpx.HTTPError:
                healthy = False
            if healthy:
                break
            time.sleep(0.1)
        assert healthy, proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert f"LLM gateway listening on http://127.0.0.1:{port}" in err
        assert "Traceback" not in err
        assert proc.returncode in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
