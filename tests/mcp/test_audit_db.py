"""Every MCP call, allowed or refused, through the gateway or straight to a server,
becomes a row of the SQL store's mcp_audit table (written off the request path)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cfn.mcp.audit import AuditLog
from cfn.mcp.tokens import TokenAuthority
from cfn.settings import Settings
from cfn.store.records import McpAuditRecord
from cfn.store.repository import Store
from tests.mcp.conftest import Stack, mcp_session

AGENT = "dbaudit-1"


async def _rows(stack: Stack, want: int, since: datetime) -> list[McpAuditRecord]:
    """The rows of this test (agent AGENT, or refused without identity since ``since``)."""
    with Store.open(stack.settings) as store:
        rows: list[McpAuditRecord] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = [
                r for r in store.mcp_audit(limit=100_000)
                if r.agent_id == AGENT or (r.agent_id is None and r.created_at >= since)
            ]  # fmt: skip
            if len(rows) >= want:
                break
            await asyncio.sleep(0.1)  # the writer batches every 50 ms, in another process
        return rows


async def test_allowed_and_refused_calls_become_rows(stack: Stack) -> None:
    since = datetime.now(UTC).replace(tzinfo=None)
    redis_only = stack.token(["redis-management"], agent_id=AGENT, task_id="task-audit")
    # Through the gateway: one allowed MCP call, one refused (another server's tool).
    async with mcp_session(stack.url("gateway") + "/mcp", redis_only) as session:
        scanned = await session.call_tool("redis_scan", {"pattern": "coord:task-audit:*"})
        assert not scanned.is_error
        refused = await session.call_tool("browser_navigate", {"url": stack.web.url})
        assert refused.is_error
    # Straight to the server: one allowed MCP call.
    async with mcp_session(stack.url("redis-tools") + "/mcp", redis_only) as session:
        assert not (await session.call_tool("redis_ttl", {"keys": ["coord:task-audit:x"]})).is_error
    async with httpx.AsyncClient(timeout=30) as http:
        # Straight to a server the token's skills do not reach: 403.
        reply = await http.post(
            stack.url("security-scanner") + "/execute",
            json={"tool": "security", "action": "scan", "path": "project"},
            headers={"Authorization": f"Bearer {redis_only}"},
        )
        assert reply.status_code == 403
        # A forged token, straight to the server: 401, recorded without an identity.
        forged = TokenAuthority(b"f" * 64).mint(AGENT, "task-audit", ["redis-management"])
        reply = await http.post(
            stack.url("redis-tools") + "/mcp",
            json={},
            headers={"Authorization": f"Bearer {forged}"},
        )
        assert reply.status_code == 401

    rows = await _rows(stack, 6, since)
    seen = {(r.via, r.server, r.tool, r.outcome) for r in rows}
    # The gateway's view and the server's own (the gateway's upstream call is checked
    # and audited again by the server).
    assert ("gateway", "redis-tools", "redis_scan", "ok") in seen, seen
    assert ("direct", "redis-tools", "redis_scan", "ok") in seen, seen
    # (named after its server once the gateway has listed that server's tools, else "gateway")
    assert {
        ("gateway", s, "browser_navigate", "forbidden") for s in ("playwright", "gateway")
    } & seen
    assert ("direct", "redis-tools", "redis_ttl", "ok") in seen, seen
    assert ("direct", "security-scanner", "/execute", "forbidden") in seen, seen
    assert ("direct", "redis-tools", "/mcp", "unauthorized") in seen, seen
    ok = next(r for r in rows if r.tool == "redis_scan" and r.via == "gateway")
    assert (ok.agent_id, ok.task_id) == (AGENT, "task-audit")
    assert ok.duration_ms > 0 and ok.reason is None
    refused_row = next(r for r in rows if r.outcome == "forbidden" and r.via == "gateway")
    assert refused_row.reason and "not available to this token" in refused_row.reason
    forged_row = next(r for r in rows if r.outcome == "unauthorized")
    assert forged_row.agent_id is None and forged_row.reason
    assert "forged" in forged_row.reason


async def test_audit_log_batches_into_the_store_and_survives_a_broken_one(
    tmp_path: Path,
) -> None:
    claims = TokenAuthority(b"k" * 64).verify(
        TokenAuthority(b"k" * 64).mint(AGENT, "task-unit", ["redis-management"])
    )
    with Store.open(Settings(cfn_state_dir=tmp_path / ".cfn")) as store:
        audit = AuditLog(tmp_path / "audit.jsonl", via="gateway", store=store)
        for n in range(3):
            audit.record(server="redis-tools", tool=f"t{n}", claims=claims, outcome="ok",
                         duration=0.001)  # fmt: skip
            await asyncio.sleep(0.03)  # some land while a batch is being written
        audit.record(server="gateway", tool="/mcp", claims=None, outcome="unauthorized",
                     duration=0.0, reason="forged token")  # fmt: skip
        await audit.aclose()
        rows = store.mcp_audit()
        assert [r.tool for r in rows] == ["t0", "t1", "t2", "/mcp"]
        assert rows[0].task_id == "task-unit" and rows[0].duration_ms == 1.0
        assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 4

    def broken() -> Store:
        raise OSError("no database here")

    audit = AuditLog(tmp_path / "only-file.jsonl", open_store=broken)
    audit.record(server="redis-tools", tool="t", claims=claims, outcome="ok", duration=0.0)
    await audit.aclose()
    assert audit.failures == 1
    assert len((tmp_path / "only-file.jsonl").read_text().splitlines()) == 1
