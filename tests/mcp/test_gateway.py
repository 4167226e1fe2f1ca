"""The gateway's MCP pass-through: its sessions, its answers to bad requests, and an
upstream session re-opened when its server restarts."""

from __future__ import annotations

from typing import Any

import httpx

from tests.mcp.conftest import Stack, mcp_session, structured
from tests.mcp.test_auth import INIT, MCP_HEADERS

#: A key of the tokens' task ("task-mcp"): Redis Tools reach no other.
KEY = "coord:task-mcp:x"


def _open(url: str, token: str) -> tuple[dict[str, str], httpx.Response]:
    """initialize on the gateway: the headers to use on the session, and the reply."""
    auth = {"Authorization": f"Bearer {token}", **MCP_HEADERS}
    reply = httpx.post(url, json=INIT, headers=auth)
    assert reply.status_code == 200, reply.text
    return {**auth, "mcp-session-id": reply.headers["mcp-session-id"]}, reply


def _rpc(method: str, params: dict[str, Any] | None = None, id_: int = 7) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return message


def test_gateway_sessions_and_bad_requests(stack: Stack) -> None:
    url = stack.url("gateway") + "/mcp/redis-tools"
    token = stack.token(["redis-management"], agent_id="gw-1")
    headers, reply = _open(url, token)
    result = reply.json()["result"]
    assert result["serverInfo"]["name"] == "cfn-gateway/redis-tools"
    assert result["protocolVersion"] == INIT["params"]["protocolVersion"]  # type: ignore[index]

    ok = httpx.post(url, json=_rpc("ping"), headers=headers)
    assert ok.status_code == 200 and ok.json() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    assert ok.headers["mcp-session-id"] == headers["mcp-session-id"]
    listed = httpx.post(url, json=_rpc("tools/list"), headers=headers).json()["result"]["tools"]
    assert {t["name"] for t in listed} >= {"redis_scan", "redis_ttl"}
    called = httpx.post(
        url,
        json=_rpc("tools/call", {"name": "redis_ttl", "arguments": {"keys": [KEY]}}),
        headers=headers,
    ).json()  # fmt: skip
    assert called["id"] == 7 and called["result"]["structuredContent"]["ttls"] == {KEY: -2}

    def refused(status: int, code: int, text: str, **kwargs: Any) -> None:
        reply = httpx.post(url, **{"headers": headers, **kwargs})
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert error["code"] == code and text in error["message"], error

    no_session = {k: v for k, v in headers.items() if k != "mcp-session-id"}
    refused(400, -32600, "Missing session ID", json=_rpc("tools/list"), headers=no_session)
    refused(404, -32600, "Session not found", json=_rpc("tools/list"),
            headers={**headers, "mcp-session-id": "f" * 32})  # fmt: skip
    # Another agent's token cannot use this session, even with the same skills.
    other = stack.token(["redis-management"], agent_id="gw-2")
    refused(404, -32600, "Session not found", json=_rpc("tools/list"),
            headers={**headers, "Authorization": f"Bearer {other}"})  # fmt: skip
    refused(400, -32700, "Parse error", content=b"{not json",
            headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    refused(400, -32700, "Parse error", content=b"[" * 100_000 + b"]" * 100_000,
            headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    refused(400, -32600, "batches are not supported", json=[_rpc("ping"), _rpc("ping", id_=8)])
    refused(415, -32600, "Content-Type", content=b"{}",
            headers={**headers, "Content-Type": "text/plain"})  # fmt: skip
    refused(413, -32600, "request body over", json={"jsonrpc": "2.0", "x": "a" * 4_200_000})
    refused(200, -32601, "Method not found: resources/list", json=_rpc("resources/list"))
    refused(200, -32602, "params.name", json=_rpc("tools/call", {"arguments": {}}))
    refused(400, -32602, "protocolVersion", json=_rpc("initialize", {}))
    # DNS rebinding protection on a loopback bind: foreign Host or Origin.
    refused(
        421, -32600, "Invalid Host", json=_rpc("ping"), headers={**headers, "Host": "evil.test"}
    )
    refused(403, -32600, "Invalid Origin", json=_rpc("ping"),
            headers={**headers, "Origin": "http://evil.test"})  # fmt: skip
    # No server-initiated messages, so no GET stream: 405, as the spec allows.
    get = httpx.get(url, headers=headers)
    assert get.status_code == 405 and "POST" in get.headers["allow"]
    # A tool of a server the token cannot reach: a tool error, not a call.
    denied = httpx.post(
        url, json=_rpc("tools/call", {"name": "browser_navigate", "arguments": {"url": "x"}}),
        headers=headers,
    ).json()["result"]  # fmt: skip
    assert denied["isError"] and "not available to this token" in denied["content"][0]["text"]

    # DELETE ends the session; it is gone afterwards.
    assert httpx.delete(url, headers=headers).status_code == 200
    refused(404, -32600, "Session not found", json=_rpc("tools/list"))
    assert httpx.delete(url, headers=headers).status_code == 404
    # A session of /mcp/redis-tools is not a session of /mcp.
    headers, _ = _open(url, token)
    wrong = httpx.post(stack.url("gateway") + "/mcp", json=_rpc("ping"), headers=headers)
    assert wrong.status_code == 404


async def test_upstream_session_reopened_when_its_server_restarts(stack: Stack) -> None:
    url = stack.url("gateway") + "/mcp"
    async with mcp_session(url, stack.token(["redis-management"], agent_id="gw-3")) as session:
        before = structured(await session.call_tool("redis_ttl", {"keys": ["coord:task-mcp:r"]}))
        assert before["ttls"] == {"coord:task-mcp:r": -2}
        stack.launcher.down(["redis-tools"])
        try:
            # Server down: the call is a tool error naming it, the client session lives on.
            down = await session.call_tool("redis_ttl", {"keys": ["coord:task-mcp:r"]})
            assert down.is_error and "redis-tools is unreachable" in down.content[0].text
        finally:
            stack.launcher.up(["redis-tools"], env=stack.env)
        # A new server process knows nothing of the old session: the gateway opens a
        # new one with the client's token and sends the call again.
        after = structured(await session.call_tool("redis_ttl", {"keys": ["coord:task-mcp:r"]}))
        assert after["ttls"] == {"coord:task-mcp:r": -2}
        listed = await session.list_tools()
        assert "redis_ttl" in {tool.name for tool in listed.tools}
