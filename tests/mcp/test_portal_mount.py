"""The gateway mounted in the orchestrator's app (the portal) under /mcp: the SDK's
client lists and calls tools through it with an MCP token, bad tokens are refused
there too, and its audit goes to the portal's store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cfn.mcp.tokens import TokenAuthority
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.mcp.conftest import Stack, mcp_session, structured
from tests.mcp.test_auth import INIT, MCP_HEADERS
from tests.portal.conftest import RunningPortal


@pytest.fixture
def mounted(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningPortal]:
    # The stack's MCP settings (ports, signing secret), the portal's own state and database.
    env = {**stack.env, "CFN_STATE_DIR": str(tmp_path / ".cfn"), "CFN_PORTAL_WORKER": "false"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    portal = RunningPortal(Settings(), worker=False).start()
    try:
        yield portal
    finally:
        portal.stop()


async def test_tools_through_the_portals_mcp(stack: Stack, mounted: RunningPortal) -> None:
    token = stack.token(["redis-management"], agent_id="portal-1", task_id="task-portal")
    async with mcp_session(mounted.url + "/mcp/redis-tools", token) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "redis_scan" in names and all(n.startswith("redis_") for n in names)
        found = structured(
            await session.call_tool("redis_scan", {"pattern": "coord:task-portal:*"})
        )
        assert "keys" in found
    async with mcp_session(mounted.url + "/mcp", token) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "redis_ttl" in names and not any(n.startswith("browser_") for n in names)
        reply = await session.call_tool("redis_ttl", {"keys": ["coord:task-portal:x"]})
        assert not reply.is_error
        refused = await session.call_tool("security_scan", {"path": "project"})
        assert refused.is_error and "not available to this token" in refused.content[0].text
    async with httpx.AsyncClient(base_url=mounted.url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {token}"}
        reply = await http.post(
            "/mcp/execute",
            json={"tool": "redis", "action": "ttl", "keys": ["coord:task-portal:x"]},
            headers=headers,
        )
        assert reply.status_code == 200 and reply.json()["ok"], reply.text
        health = (await http.get("/mcp/health")).json()
        assert health["server"] == "gateway" and health["upstreams"]["redis-tools"] == "ok"
        assert (await http.get("/api/ping")).json() == {"ok": True}  # the portal's routes stay
    # The mounted gateway audits into the portal's store.
    with Store.open(mounted.settings) as store:
        deadline = time.monotonic() + 10
        while not store.mcp_audit(agent_id="portal-1") and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = {(r.via, r.tool, r.outcome) for r in store.mcp_audit(agent_id="portal-1")}
    assert ("gateway", "redis_scan", "ok") in seen, seen


def test_bad_tokens_are_refused_at_the_portals_mcp(stack: Stack, mounted: RunningPortal) -> None:
    forged = TokenAuthority(b"f" * 64).mint("impl-1-1", "task-mcp", ["redis-management"])
    portal_jwt = mounted.token("admin")  # a portal token is not an MCP token
    cases = [(None, 401, "missing token"), (forged, 401, "forged"), (portal_jwt, 401, "")]
    cases.append((stack.token(["browser-automation"]), 403, "may not use the redis-tools"))
    for path in ("/mcp/redis-tools", "/mcp"):
        for token, status, reason in cases:
            if path == "/mcp" and status == 403:
                continue  # browser-automation does reach a server through /mcp
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            reply = httpx.post(
                mounted.url + path, json=INIT, headers={**MCP_HEADERS, **headers}, timeout=30
            )
            assert reply.status_code == status, (path, reason, reply.text)
            assert reason in reply.json()["error"]
