"""The bad-input corpus against MCP: the redis-tools server and the gateway as real
processes (started by the real launcher), reached over HTTP and with the MCP SDK.

Bad tokens get 401/403 from the server and the gateway on /mcp and /execute;
bad /execute bodies get a 4xx JSON error; tools called with bad arguments or
for another task return an error result; nothing is written to Redis.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from cfn.mcp.launcher import Launcher
from cfn.mcp.tokens import TokenAuthority
from cfn.settings import Settings
from tests.mcp.conftest import mcp_session
from tests.security.corpus import BAD_IDS, deep_json, redis_snapshot
from tests.support.servers import RedisServer, free_port

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "corpus", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
TASK = "sec-mcp"


def _tokens(authority: TokenAuthority, secret: bytes) -> dict[str, tuple[str | None, int]]:
    """Bad tokens and the status each must get."""
    now = int(time.time())
    claims = {
        "iss": "cfn", "sub": "impl-1-1", "task": TASK, "skills": ["redis-management"],
        "scope": ["read"], "iat": now, "exp": now + 600,
    }  # fmt: skip
    aud = {"aud": "cfn-mcp"}
    real = authority.mint("impl-1-1", TASK, ["redis-management"])
    real_aud = jwt.decode(real, options={"verify_signature": False})["aud"]
    aud = {"aud": real_aud}

    def signed(extra: dict[str, Any], key: bytes = secret, alg: str = "HS256") -> str:
        return jwt.encode({**claims, **aud, **extra}, key, alg)

    return {
        "missing": (None, 401),
        "not-jwt": ("agent-impl-1-1-task-1700000000", 401),
        "forged": (TokenAuthority(b"f" * 64).mint("impl-1-1", TASK, ["redis-management"]), 401),
        "expired": (authority.mint("impl-1-1", TASK, ["redis-management"], ttl=5,
                                   now=1_000_000), 401),
        "audience": (signed({"aud": "cfn-agents"}), 401),
        "alg-none": (jwt.encode({**claims, **aud}, None, "none"), 401),
        "hs512": (signed({}, secret + b"x" * 64, "HS512"), 401),
        "sub-glob": (signed({"sub": "impl-*"}), 401),
        "sub-traversal": (signed({"sub": "../x"}), 401),
        "task-newline": (signed({"task": "a\nb"}), 401),
        "no-task": (signed({"task": None}), 401),
        "skills-empty": (signed({"skills": []}), 401),
        "skills-int": (signed({"skills": 5}), 401),
        "scope-admin": (signed({"scope": ["admin"]}), 401),
        "no-exp": (jwt.encode({k: v for k, v in {**claims, **aud}.items() if k != "exp"},
                              secret, "HS256"), 401),
        "huge": ("a." + "b" * 20_000 + ".c", 401),
        "wrong-skill": (authority.mint("impl-1-1", TASK, ["security-scanning"]), 403),
    }  # fmt: skip


@pytest.fixture(scope="module")
def mcp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("mcp-corpus")
    redis = RedisServer(root / "redis").start()
    secret = secrets.token_hex(32)
    env = {
        "CFN_STATE_DIR": str(root / ".cfn"),
        "REDIS_URL": redis.url,
        "MCP_AUTH_TOKEN": secret,
        "MCP_PLAYWRIGHT_PORT": str(free_port()),
        "MCP_REDIS_TOOLS_PORT": str(free_port()),
        "MCP_N8N_PORT": str(free_port()),
        "MCP_SECURITY_SCANNER_PORT": str(free_port()),
        "MCP_GATEWAY_PORT": str(free_port()),
        "MCP_WORKSPACE": str(root / "ws"),
        # No cgroup limits: a limited server starts too slowly on a loaded 2-core machine,
        # and limits are not what this corpus tests.
        "MCP_CGROUPS": "off",
    }
    (root / "ws").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        settings = Settings()
    launcher = Launcher(settings)
    client = redis.client()
    client.set(f"context:{TASK}:metadata", "{}")
    client.set("context:other-task:secret", '"theirs"')
    try:
        launcher.up(["redis-tools", "gateway"], env=env)
        yield {
            "launcher": launcher,
            "authority": TokenAuthority(secret.encode()),
            "secret": secret.encode(),
            "redis": client,
        }
    finally:
        client.close()
        launcher.down()
        redis.stop()


TOKEN_KINDS = [
    "missing", "not-jwt", "forged", "expired", "audience", "alg-none", "hs512", "sub-glob",
    "sub-traversal", "task-newline", "no-task", "skills-empty", "skills-int", "scope-admin",
    "no-exp", "huge", "wrong-skill",
]  # fmt: skip


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_bad_token_refused_by_server_and_gateway(mcp_stack: dict[str, Any], kind: str) -> None:
    launcher: Launcher = mcp_stack["launcher"]
    token, status = _tokens(mcp_stack["authority"], mcp_stack["secret"])[kind]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    before = redis_snapshot(mcp_stack["redis"])
    for base in (
        launcher.url("redis-tools") + "/mcp",
        launcher.url("gateway") + "/mcp/redis-tools",
    ):
        reply = httpx.post(base, json=INIT, headers={**MCP_HEADERS, **headers}, timeout=30)
        assert reply.status_code == status, (kind, base, reply.text[:300])
        assert reply.json()["error"]
    for base in (launcher.url("redis-tools"), launcher.url("gateway")):
        reply = httpx.post(
            base + "/execute",
            json={"tool": "redis", "action": "scan", "pattern": "*"},
            headers=headers,
            timeout=30,
        )
        assert reply.status_code == status, (kind, base, reply.text[:300])
        assert reply.json()["error"]
    assert redis_snapshot(mcp_stack["redis"]) == before


BAD_BODIES: list[tuple[str, bytes]] = [
    ("not-json", b"{tool: redis"),
    ("array", b"[1, 2]"),
    ("null", b"null"),
    ("deep", deep_json(100_000).encode()),
    ("huge", json.dumps({"tool": "redis", "action": "scan", "x": "y" * 2_000_000}).encode()),
    ("no-tool", b'{"action": "scan", "pattern": "*"}'),
    ("tool-int", b'{"tool": 5, "action": "scan"}'),
    ("unknown-action", b'{"tool": "redis", "action": "flushall"}'),
    ("action-list", b'{"tool": "redis", "action": ["scan"]}'),
    ("session-int", b'{"tool": "redis", "action": "scan", "pattern": "*", "session": 5}'),
    ("pattern-int", b'{"tool": "redis", "action": "scan", "pattern": 5}'),
    (
        "pattern-huge",
        json.dumps({"tool": "redis", "action": "scan", "pattern": "*" * 300}).encode(),
    ),
    ("limit-neg", b'{"tool": "redis", "action": "scan", "pattern": "*", "limit": -1}'),
    ("limit-str", b'{"tool": "redis", "action": "scan", "pattern": "*", "limit": "9"}'),
    ("extra-arg", b'{"tool": "redis", "action": "scan", "pattern": "*", "evil": 1}'),
    ("delete-read-scope", b'{"tool": "redis", "action": "delete", "keys": ["x"], "confirm": true}'),
    ("delete-no-confirm", b'{"tool": "redis", "action": "delete", "keys": ["x"]}'),
    ("summary-other-task", b'{"tool": "redis", "action": "task_summary", "task_id": "other-task"}'),
    ("summary-glob", b'{"tool": "redis", "action": "task_summary", "task_id": "sec-*"}'),
    ("nan", b'{"tool": "redis", "action": "scan", "pattern": "*", "limit": NaN}'),
]


@pytest.mark.parametrize(("name", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_execute_body_is_a_4xx(mcp_stack: dict[str, Any], name: str, body: bytes) -> None:
    launcher: Launcher = mcp_stack["launcher"]
    token = mcp_stack["authority"].mint("impl-1-1", TASK, ["redis-management"])
    before = redis_snapshot(mcp_stack["redis"])
    for base in (launcher.url("redis-tools"), launcher.url("gateway")):
        reply = httpx.post(
            base + "/execute",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert 400 <= reply.status_code < 500, (name, base, reply.status_code, reply.text[:300])
        assert reply.json()["error"]
    assert redis_snapshot(mcp_stack["redis"]) == before


BAD_TOOL_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("summary-other-task", "redis_task_summary", {"task_id": "other-task"}),
    ("unknown-tool", "redis_flushall", {}),
    ("other-server-tool", "browser_navigate", {"url": "http://127.0.0.1:1/"}),
    ("get-no-key", "redis_get", {}),
    ("get-key-int", "redis_get", {"key": 5}),
    ("ttl-empty", "redis_ttl", {"keys": []}),
    ("ttl-not-list", "redis_ttl", {"keys": "coord:x"}),
    ("scan-limit-huge", "redis_scan", {"pattern": "*", "limit": 10**12}),
    ("delete-read-only", "redis_delete", {"keys": ["context:other-task:secret"], "confirm": True}),
    *[
        (f"summary-bad-id-{n}", "redis_task_summary", {"task_id": bad})
        for n, bad in enumerate(BAD_IDS[:10])
        if bad
    ],
]


def test_bad_tool_calls_are_error_results(mcp_stack: dict[str, Any]) -> None:
    launcher: Launcher = mcp_stack["launcher"]
    token = mcp_stack["authority"].mint("impl-1-1", TASK, ["redis-management"])
    before = redis_snapshot(mcp_stack["redis"])

    async def run() -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with mcp_session(launcher.url("gateway") + "/mcp", token) as session:
            for name, tool, args in BAD_TOOL_CALLS:
                results[name] = await session.call_tool(tool, args)
            results["own-task"] = await session.call_tool("redis_task_summary", {})
        return results

    results = asyncio.run(run())
    for name, _tool, _args in BAD_TOOL_CALLS:
        result = results[name]
        assert result.is_error, (name, result.content)
        assert result.content[0].text.startswith("error: "), (name, result.content)
    assert "this token is for task" in results["summary-other-task"].content[0].text
    assert not results["own-task"].is_error  # the token's own task is fine
    assert redis_snapshot(mcp_stack["redis"]) == before
    assert len(TOKEN_KINDS) * 4 + len(BAD_BODIES) * 2 + len(BAD_TOOL_CALLS) >= 100
