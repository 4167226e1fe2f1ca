"""The seed's POST /execute, the CLI, the launcher's limits and the audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from cfn.mcp.audit import audit_path, read_audit
from tests.mcp.conftest import Stack

CFN = [sys.executable, "-m", "cfn"]


def _post(url: str, token: str, body: object) -> httpx.Response:
    return httpx.post(
        url + "/execute", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def test_execute_seed_format_through_gateway_and_direct(stack: Stack) -> None:
    token = stack.token(["browser-automation", "redis-management"])
    body = {"tool": "browser", "action": "navigate", "url": stack.web.url + "/page.html"}
    for base in (stack.url("gateway"), stack.url("playwright")):
        reply = _post(base, token, body)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        assert data["ok"] and data["result"]["title"] == "cfn test page"
    shot = _post(
        stack.url("gateway"),
        token,
        {"tool": "browser", "action": "screenshot", "url": stack.web.url + "/page.html"},
    ).json()
    assert shot["result"]["images_png_base64"][0].startswith("iVBOR")
    scan = _post(
        stack.url("gateway"),
        token,
        {"tool": "redis", "action": "scan", "pattern": "coord:task-mcp:*"},
    )
    assert scan.status_code == 200 and "keys" in scan.json()["result"]
    # Other tasks' keys are out of a token's reach: 403 naming the task's prefixes.
    scan = _post(stack.url("gateway"), token, {"tool": "redis", "action": "scan", "pattern": "*"})
    assert scan.status_code == 403 and "'coord:task-mcp:*'" in scan.json()["error"], scan.text


def test_execute_bad_input_is_4xx_with_a_reason(stack: Stack) -> None:
    token = stack.token()
    gateway = stack.url("gateway")
    cases = [
        ({"tool": "nope", "action": "x"}, 404, "no MCP server serves tool"),
        ({"tool": "redis", "action": "explode"}, 400, "unknown action"),
        ({"tool": "redis", "action": "scan"}, 400, "'pattern' is a required property"),
        ({"tool": "redis", "action": "scan", "pattern": 5}, 400, "is not of type 'string'"),
        ({"tool": "browser", "action": "navigate", "url": "http://example.invalid/"}, 403,
         "not allowed"),
        ([1, 2], 400, "must be a JSON object"),
    ]  # fmt: skip
    for body, status, reason in cases:
        reply = _post(gateway, token, body)
        assert reply.status_code == status, (body, reply.text)
        assert reason in reply.json()["error"]
    reply = httpx.post(
        gateway + "/execute", content=b"{not json", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]
    # A tool of another server, sent straight to a server: 404 naming what it serves.
    reply = _post(stack.url("redis-tools"), token, {"tool": "browser", "action": "navigate"})
    assert reply.status_code == 404 and "not served by redis-tools" in reply.json()["error"]


def test_calls_are_audited(stack: Stack) -> None:
    token = stack.token(["redis-management"], agent_id="auditor-1")
    _post(
        stack.url("gateway"),
        token,
        {"tool": "redis", "action": "scan", "pattern": "coord:task-mcp:x*"},
    )
    _post(stack.url("gateway"), token, {"tool": "browser", "action": "navigate", "url": "x"})
    path = audit_path(stack.settings)
    import time

    deadline = time.monotonic() + 5
    mine: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        mine = [e for e in read_audit(path, 10_000) if e.get("agent_id") == "auditor-1"]
        if len(mine) >= 3:
            break
        time.sleep(0.1)
    # The allowed call as the gateway saw it and as the server saw it; the refusal at the gateway.
    outcomes = {(e["via"], e["server"], e["outcome"]) for e in mine}
    assert outcomes == {
        ("gateway", "redis-tools", "ok"),
        ("direct", "redis-tools", "ok"),
        ("gateway", "playwright", "forbidden"),
    }, outcomes
    ok = next(e for e in mine if e["outcome"] == "ok" and e["via"] == "direct")
    assert ok["task_id"] == "task-mcp" and ok["tool"] == "redis_scan"
    assert isinstance(ok["duration_ms"], float)
    at_gateway = next(e for e in mine if e["outcome"] == "ok" and e["via"] == "gateway")
    assert at_gateway["tool"] == "redis/scan" and isinstance(at_gateway["duration_ms"], float)


def test_cli_token_and_status(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "PATH": "/usr/bin:/bin"}
    minted = subprocess.run(
        [*CFN, "mcp", "token", "--agent-id", "ops-1", "--task-id", "task-mcp",
         "--skills", "redis-management", "--ttl", "60"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    claims = stack.authority.verify(minted.stdout.strip())
    assert (claims.agent_id, claims.skills) == ("ops-1", ("redis-management",))
    bad = subprocess.run(
        [*CFN, "mcp", "token", "--agent-id", "a b", "--task-id", "t",
         "--skills", "redis-management"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("[ERROR] invalid agent id")
    status = subprocess.run(
        [*CFN, "mcp", "status"], capture_output=True, text=True, env=env, check=False
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 5


def test_launcher_applies_the_seeds_limits(stack: Stack) -> None:
    state = stack.launcher.read_state()
    assert set(state) == {"playwright", "redis-tools", "n8n", "security-scanner", "gateway"}
    for name, item in state.items():
        assert item.pid > 0
        if item.limits != "cgroup":
            continue  # cgroup v1 not writable here: the servers run unlimited
        limit = int(Path(item.cgroups["memory"], "memory.limit_in_bytes").read_text())
        soft = int(Path(item.cgroups["memory"], "memory.soft_limit_in_bytes").read_text())
        quota = int(Path(item.cgroups["cpu"], "cpu.cfs_quota_us").read_text())
        shares = int(Path(item.cgroups["cpu"], "cpu.shares").read_text())
        procs = Path(item.cgroups["memory"], "cgroup.procs").read_text().split()
        assert str(item.pid) in procs
        # The seed's table: memory limit / reservation (MiB), CPU limit / reservation.
        expected = {"playwright": (512, 256, 0.5, 0.25), "redis-tools": (256, 128, 0.25, 0.1),
                    "n8n": (1024, 512, 1.0, 0.5), "security-scanner": (512, 256, 0.5, 0.25),
                    "gateway": (256, 128, 0.5, 0.1)}[name]  # fmt: skip
        assert (limit, soft) == (expected[0] * 1024 * 1024, expected[1] * 1024 * 1024)
        assert quota == int(expected[2] * 100_000)
        assert shares == round(expected[3] * 1024)
    chromium = json.dumps(state["playwright"].cgroups)
    assert "mcp-playwright" in chromium or state["playwright"].limits == "none"
