"""Every server checks tokens itself, and so does the gateway."""

from __future__ import annotations

import httpx
import pytest

from cfn.mcp.routing import SERVERS
from cfn.mcp.tokens import TokenAuthority
from tests.mcp.conftest import Stack, mcp_session

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def _bad_tokens(stack: Stack) -> list[tuple[str | None, int, str]]:
    forged = TokenAuthority(b"f" * 64).mint("impl-1-1", "task-mcp", ["redis-management"])
    expired = stack.token(ttl=5, now=1_000_000)
    return [
        (None, 401, "missing token"),
        ("agent-impl-1-1-task-mcp-1700000000", 401, "malformed"),
        (forged, 401, "forged"),
        (expired, 401, "expired"),
    ]


@pytest.mark.parametrize("server", [*SERVERS, "gateway"])
def test_bad_tokens_refused_on_mcp_and_execute(stack: Stack, server: str) -> None:
    base = stack.url(server)
    for token, status, reason in _bad_tokens(stack):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = httpx.post(base + "/mcp", json=INIT, headers={**MCP_HEADERS, **headers})
        assert reply.status_code == status, (server, reason, reply.text)
        assert reason in reply.json()["error"]
        assert reply.headers["www-authenticate"].startswith("Bearer")
        reply = httpx.post(
            base + "/execute", json={"tool": "redis", "action": "scan"}, headers=headers
        )
        assert reply.status_code == status and reason in reply.json()["error"]


@pytest.mark.parametrize("server", list(SERVERS))
def test_wrong_skill_is_403_directly_and_through_the_gateway(stack: Stack, server: str) -> None:
    spec = SERVERS[server]
    other = next(s for s, servers in stack_mapping().items() if server not in servers)
    token = stack.token([other])
    headers = {"Authorization": f"Bearer {token}"}
    for url in (stack.url(server) + "/mcp", stack.url("gateway") + f"/mcp/{server}"):
        reply = httpx.post(url, json=INIT, headers={**MCP_HEADERS, **headers})
        assert reply.status_code == 403, reply.text
        assert f"may not use the {server} server" in reply.json()["error"]
    body = {"tool": spec.execute_tools[0], "action": "x"}
    for url in (stack.url(server), stack.url("gateway")):
        reply = httpx.post(url + "/execute", json=body, headers=headers)
        assert reply.status_code == 403, reply.text


def stack_mapping() -> dict[str, tuple[str, ...]]:
    from cfn.mcp.routing import DEFAULT_SKILL_MAPPING

    return DEFAULT_SKILL_MAPPING


async def test_gateway_lists_only_the_tokens_servers_tools(stack: Stack) -> None:
    gateway = stack.url("gateway") + "/mcp"
    async with mcp_session(gateway, stack.token(["redis-management"])) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert names and all(name.startswith("redis_") for name in names)
        refused = await session.call_tool("browser_navigate", {"url": stack.web.url})
        assert refused.is_error and "not available to this token" in refused.content[0].text
        refused = await session.call_tool("security_scan", {"path": "project"})
        assert refused.is_error
    async with mcp_session(gateway, stack.token()) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        prefixes = {name.split("_", 1)[0] for name in names}
        assert prefixes == {"browser", "redis", "n8n", "security"}


def test_health_needs_no_token(stack: Stack) -> None:
    for name in [*SERVERS, "gateway"]:
        reply = httpx.get(stack.url(name) + "/health")
        assert reply.status_code == 200 and reply.json()["status"] == "ok"
    upstreams = httpx.get(stack.url("gateway") + "/health").json()["upstreams"]
    assert upstreams == {name: "ok" for name in SERVERS}
