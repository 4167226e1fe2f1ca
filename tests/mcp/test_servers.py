"""Each server's tools for real, through the gateway with the SDK's client."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading

import httpx
import pytest
import redis

from cfn.system.sandbox import usable as sandbox_usable
from tests.mcp.conftest import Stack, mcp_session, structured


@pytest.fixture
def gateway(stack: Stack) -> str:
    return stack.url("gateway") + "/mcp"


async def test_redis_tools(stack: Stack, gateway: str) -> None:
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    task = "task-mcp"
    # The stack is shared by the whole session: start from this test's own keys only.
    for key in r.scan_iter(f"*{task}*"):
        r.delete(key)
    r.lpush(f"coord:{task}:complete", "impl-1-1:success", "impl-2-1:failed")
    r.lpush(f"coord:{task}:payload:impl-1-1", json.dumps({"confidence": 0.9}))
    r.set(f"coord:{task}:decision", '{"decision": "PROCEED"}')
    r.set(f"context:{task}:deliverables", "[]", ex=300)
    r.hset(f"context:{task}:hash", mapping={"a": "1", "b": "2"})
    r.zadd(f"context:{task}:zset", {"x": 1.5})
    r.xadd(f"context:{task}:stream", {"k": "v"})
    r.set("coord:task-other:decision", '{"decision": "ABORT"}')
    async with mcp_session(gateway, stack.token(["redis-management"])) as session:
        found = structured(await session.call_tool("redis_scan", {"pattern": f"coord:{task}:*"}))
        assert f"coord:{task}:decision" in found["keys"] and found["count"] == 3
        got = structured(await session.call_tool("redis_get", {"key": f"context:{task}:hash"}))
        assert got["type"] == "hash" and got["value"] == {"a": "1", "b": "2"}
        got = structured(await session.call_tool("redis_get", {"key": f"context:{task}:zset"}))
        assert got["type"] == "zset" and got["value"] == [["x", 1.5]]
        got = structured(await session.call_tool("redis_get", {"key": f"context:{task}:stream"}))
        assert got["type"] == "stream" and got["value"][0]["fields"] == {"k": "v"}
        got = structured(await session.call_tool("redis_get", {"key": f"coord:{task}:complete"}))
        assert got["type"] == "list" and got["size"] == 2
        ttl = structured(
            await session.call_tool(
                "redis_ttl",
                {
                    "keys": [
                        f"context:{task}:deliverables",
                        f"context:{task}:hash",
                        f"swarm:{task}:x",
                    ]
                },
            )
        )["ttls"]
        assert 0 < ttl[f"context:{task}:deliverables"] <= 300
        assert (ttl[f"context:{task}:hash"], ttl[f"swarm:{task}:x"]) == (-1, -2)
        summary = structured(await session.call_tool("redis_task_summary", {}))
        assert summary["results"][0] == {
            "agent_id": "impl-1-1",
            "result": "success",
            "confidence": 0.9,
        }
        assert summary["results"][1]["result"] == "failed"
        assert f"coord:{task}:decision" in summary["signals"]
        assert f"context:{task}:deliverables" in summary["context"]
        # Delete: refused without confirm, and with a read-only token.
        refused = await session.call_tool("redis_delete", {"keys": [f"context:{task}:hash"]})
        assert refused.is_error and "read-only" in refused.content[0].text
        # Another task's keys are out of reach, by name or by pattern.
        for tool, args in (
            ("redis_get", {"key": "coord:task-other:decision"}),
            ("redis_ttl", {"keys": [f"coord:{task}:decision", "coord:task-other:decision"]}),
            ("redis_scan", {"pattern": "coord:task-*"}),
            ("redis_scan", {"pattern": "*"}),
        ):
            refused = await session.call_tool(tool, args)
            assert refused.is_error and f"task {task!r}" in refused.content[0].text, (tool, args)
        bad = await session.call_tool("redis_scan", {"pattern": ""})
        assert bad.is_error and "pattern" in bad.content[0].text
        bad = await session.call_tool("redis_get", {"key": "k", "extra": 1})
        assert bad.is_error and "Additional properties" in bad.content[0].text
    writer = stack.token(["redis-management"], scope=("read", "write"))
    async with mcp_session(gateway, writer) as session:
        refused = await session.call_tool("redis_delete", {"keys": [f"context:{task}:hash"]})
        assert refused.is_error and "confirm: true" in refused.content[0].text
        refused = await session.call_tool(
            "redis_delete", {"keys": ["coord:task-other:decision"], "confirm": True}
        )
        assert refused.is_error and r.exists("coord:task-other:decision")
        # The task's own records stay, even for a write-scope token.
        r.hset(f"usage:{task}", mapping={"cost_usd": "0.5"})
        for record in (f"usage:{task}", f"coord:{task}:complete"):
            refused = await session.call_tool("redis_delete", {"keys": [record], "confirm": True})
            assert refused.is_error and "records" in refused.content[0].text, record
            assert r.exists(record)
        done = structured(
            await session.call_tool(
                "redis_delete", {"keys": [f"context:{task}:hash"], "confirm": True}
            )
        )
        assert done["deleted"] == 1 and not r.exists(f"context:{task}:hash")


async def test_security_scanner_finds_secret_and_injection(stack: Stack, gateway: str) -> None:
    async with mcp_session(gateway, stack.token(["security-scanning"])) as session:
        report = structured(await session.call_tool("security_scan", {"path": "project"}))
        findings = report["findings"]
        secret = [f for f in findings if f["tool"] == "detect-secrets"]
        assert secret and secret[0]["file"] == "project/deploy.py" and secret[0]["line"] == 8
        assert "AKIA" not in json.dumps(report)  # only a hash of the secret goes out
        shell = [f for f in findings if f["rule"].startswith("B602")]
        assert shell and shell[0]["severity"] == "HIGH" and shell[0]["line"] == 5
        assert shell[0]["file"] == "project/deploy.py"
        assert report["counts"]["HIGH"] >= 2
        clean = structured(await session.call_tool("security_scan", {"path": "project/clean.py"}))
        assert clean["total"] == 0
        for outside in ("../outside", str(stack.workspace.parent / "outside"), "/etc"):
            refused = await session.call_tool("security_scan", {"path": outside})
            assert refused.is_error and "outside the allowed workspace" in refused.content[0].text
        missing = await session.call_tool("security_scan", {"path": "nope"})
        assert missing.is_error and "does not exist" in missing.content[0].text
        # The scanners run in a sandbox holding only the workspace: a symlink out of it
        # dangles there, so the file it names is not scanned.
        if sandbox_usable("auto"):
            linked = structured(await session.call_tool("security_scan", {"path": "linked"}))
            assert linked["total"] == 0, linked
    reply = httpx.post(
        stack.url("security-scanner") + "/execute",
        json={"tool": "security", "action": "scan", "path": "../outside"},
        headers={"Authorization": f"Bearer {stack.token(['security-scanning'])}"},
    )
    assert reply.status_code == 403 and "outside" in reply.json()["error"]


async def test_playwright_reads_and_drives_a_local_page(stack: Stack, gateway: str) -> None:
    page = stack.web.url + "/page.html"
    health = stack.url("playwright") + "/health"
    async with mcp_session(gateway, stack.token(["browser-automation"])) as session:
        nav = structured(await session.call_tool("browser_navigate", {"url": page}))
        assert nav["title"] == "cfn test page" and nav["status"] == 200
        text = structured(await session.call_tool("browser_text", {"selector": "#headline"}))
        assert text["text"] == "Hello from the test server"
        structured(await session.call_tool("browser_fill", {"selector": "#name", "value": "cfn"}))
        structured(await session.call_tool("browser_click", {"selector": "#go"}))
        text = structured(await session.call_tool("browser_text", {"selector": "#status"}))
        assert text["text"] == "hello cfn"  # same context and page across calls
        shot = await session.call_tool("browser_screenshot", {})
        image = next(c for c in shot.content if c.type == "image")
        assert base64.b64decode(image.data).startswith(b"\x89PNG")
        assert httpx.get(health).json()["sessions"] == 1
        blocked = await session.call_tool("browser_navigate", {"url": "http://example.invalid/"})
        assert blocked.is_error and "not allowed" in blocked.content[0].text
        missing = await session.call_tool("browser_click", {"selector": "#nope"})
        assert missing.is_error
    # The client ended its session: the gateway ended its upstream session, and the
    # server closed that session's browser context.
    assert httpx.get(health).json()["sessions"] == 0


class Outside:
    """A host that is not on the allow-list: it counts every connection made to it."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.seen: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.seen.append(conn.recv(200))
                except OSError:
                    self.seen.append(b"")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


async def test_playwright_pages_cannot_leave_the_allow_list(stack: Stack, gateway: str) -> None:
    """A page that tries every way out (fetch, image, redirects, WebSockets from itself and
    from data: and blob: frames), a navigation that redirects out and one with user info:
    the outside host sees no connection at all, while an allowed redirect still works."""
    outside = Outside()
    out = f"127.0.0.1:{outside.port}"
    web = stack.web.url
    try:
        async with mcp_session(gateway, stack.token(["browser-automation"])) as session:
            nav = structured(
                await session.call_tool(
                    "browser_navigate", {"url": f"{web}/hostile.html?out={out}"}
                )
            )
            assert nav["status"] == 200
            await asyncio.sleep(3)  # the page's scripts and frames have their go
            status = structured(await session.call_tool("browser_text", {"selector": "#status"}))
            assert status["text"] == "tried"
            away = await session.call_tool(
                "browser_navigate", {"url": f"{web}/redirect?to=http://{out}/navigated"}
            )
            assert away.is_error, away
            userinfo = await session.call_tool(
                "browser_navigate", {"url": f"http://127.0.0.1:{stack.web.port}@{out}/"}
            )
            assert userinfo.is_error and "not allowed" in userinfo.content[0].text
            assert outside.seen == [], outside.seen
            home = structured(
                await session.call_tool(
                    "browser_navigate", {"url": f"{web}/redirect?to=/page.html"}
                )
            )
            assert home["title"] == "cfn test page"
    finally:
        outside.close()
    assert outside.seen == [], outside.seen


async def test_n8n_triggers_webhooks_and_reads_executions(stack: Stack, gateway: str) -> None:
    async with mcp_session(gateway, stack.token(["workflow-automation"])) as session:
        fired = structured(
            await session.call_tool(
                "n8n_trigger_workflow", {"webhook_path": "deploy", "payload": {"branch": "main"}}
            )
        )
        assert fired["status"] == 200 and fired["response"]["message"] == "Workflow was started"
        call = stack.web.n8n.webhook_calls[-1]
        assert call["body"] == {"branch": "main"} and call["agent"] == "impl-1-1"
        listed = structured(await session.call_tool("n8n_list_executions", {"workflow_id": "wf1"}))
        execution_id = fired["response"]["executionId"]
        assert execution_id in [e["id"] for e in listed["executions"]]
        one = structured(
            await session.call_tool("n8n_get_execution", {"id": execution_id, "include_data": True})
        )
        run = one["execution"]["data"]["resultData"]["runData"]["Webhook"][0]["json"]
        assert run == {"branch": "main"}
        flows = structured(await session.call_tool("n8n_list_workflows", {"active": True}))
        assert [w["name"] for w in flows["workflows"]] == ["Deploy preview"]
        missing = await session.call_tool("n8n_trigger_workflow", {"webhook_path": "nope"})
        assert missing.is_error and "no active webhook" in missing.content[0].text
        bad = await session.call_tool("n8n_trigger_workflow", {"webhook_path": "../api/v1/x"})
        assert bad.is_error and "invalid webhook path" in bad.content[0].text
        gone = await session.call_tool("n8n_get_execution", {"id": "99999"})
        assert gone.is_error and "not found" in gone.content[0].text
