"""End to end in a real browser: Playwright drives Debian's chromium against the
running portal while a real CFN Loop runs (offline provider). The test signs in
through a single-use login link, starts a task from the dashboard's form, sees
agents appear, their heartbeats pushed and progress move, and clicks the
product owner's decision; the page never re-reads anything on a timer, and the
used link is refused the second time."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from cfn.portal.auth import load_secret, mint_login_code
from tests.portal.conftest import RunningPortal

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian's chromium is missing: run `make test`"
)


async def _publish_step(portal: RunningPortal, task_id: str, agent_id: str, text: str) -> None:
    """One ``agent:step`` event as the loop records and publishes it (SQL, then the stream)."""
    from cfn.coordination.connection import RedisManager
    from cfn.coordination.events import publish_event
    from cfn.store.repository import Store

    payload = {"agentId": agent_id, "kind": "text", "text": text, "ts": time.time()}
    with Store.open(portal.settings) as store:
        event_id = store.append_event("agent:step", payload, task_id)
    redis = RedisManager.from_settings(portal.settings)
    try:
        await publish_event(redis, task_id, event_id, "agent:step", payload)
    finally:
        await redis.close()


async def test_dashboard_follows_a_loop_and_takes_a_decision(
    portal: RunningPortal, tmp_path: Path
) -> None:
    problems: list[str] = []
    requests: list[tuple[float, str, str]] = []
    code = mint_login_code(load_secret(portal.settings), "alice", "operator")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"),
            )
            page.on("request", lambda r: requests.append((time.monotonic(), r.method, r.url)))
            await page.goto(f"{portal.url}/#login={code}")
            await expect(page.locator("#who")).to_have_text("alice (operator)")
            assert "login" not in page.url  # the code leaves the address bar at once
            # The worker line comes from the pushed queue state: one live worker.
            await expect(page.locator("#health [data-check=workers] b")).to_have_class("ok")

            # Start a task from the form: mvp, a human decides.
            await page.click("#new-task")
            await page.fill("textarea[name=epic]", "Build a greeting module hello.py")
            await page.select_option("select[name=mode]", "mvp")
            await page.select_option("select[name=decision]", "human")
            await page.click("#new-submit")
            await expect(page.locator("#t-epic")).to_have_text("Build a greeting module hello.py")
            task_id = (await page.locator("#t-id").text_content()) or ""
            assert task_id.startswith("task-")
            await expect(page.locator("#live")).to_have_text("live", timeout=20_000)

            # Agents appear, progress moves.
            await expect(page.locator("#agents tr[data-agent]").first).to_be_visible(timeout=60_000)
            await expect(page.locator("#t-offline")).to_be_visible(timeout=30_000)
            await page.wait_for_function(
                "() => parseFloat(document.getElementById('l3-bar').style.width) > 0",
                timeout=90_000,
            )
            await expect(page.locator("tr[data-agent='impl-1-1'] .status")).to_have_text(
                "done", timeout=90_000
            )
            # Heartbeats arrive pushed (agent:heartbeat), not re-read: the agent's final
            # beat says "done" in its heartbeat cell.
            await page.wait_for_function(
                "() => Number(document.getElementById('agents').dataset.beats || 0) > 0"
            )
            await expect(page.locator("tr[data-agent='impl-1-1'] td.hb")).to_contain_text(
                "done", timeout=30_000
            )

            # The decision is awaited: the buttons show; click PROCEED.
            panel = page.locator("#await")
            await expect(panel).to_be_visible(timeout=150_000)
            await expect(page.locator("#c-text")).to_contain_text("passed")
            await page.screenshot(path=str(tmp_path / "awaiting.png"), full_page=True)
            await page.fill("#reason", "the greeting reads well")
            await page.click("#await button[data-decision=PROCEED]")
            await expect(page.locator("#t-status")).to_have_text("succeeded", timeout=60_000)
            await expect(panel).to_be_hidden()
            await expect(page.locator("#decisions")).to_contain_text("PROCEED by human:alice")
            await expect(page.locator("#events li[data-kind='task:finished']")).to_have_count(1)
            await expect(page.locator(f"#tasks li[data-task='{task_id}']")).to_be_visible()
            await page.screenshot(path=str(tmp_path / "finished.png"), full_page=True)

            # An agent's transcript: its steps (agent:step) with the file it wrote, and
            # what the LLM gateway charged it (llm:call), per agent and for the task.
            row = page.locator("tr[data-agent='impl-1-1']")
            await expect(row.locator("td").nth(7)).not_to_have_text("–")  # tokens
            await expect(page.locator("#t-meta")).to_contain_text("tokens")
            await row.click()
            dialog = page.locator("#transcript-dialog")
            await expect(dialog).to_be_visible()
            await expect(page.locator("#tr-agent")).to_have_text("impl-1-1")
            await expect(page.locator("#transcript li.tool_use")).not_to_have_count(0)
            await expect(page.locator("#transcript")).to_contain_text("write_file")
            await expect(page.locator("#tr-files")).to_contain_text("offline/note-")
            await expect(page.locator("#tr-meta")).to_contain_text("builtin")  # its backend
            await expect(page.locator("#tr-meta")).to_contain_text("tokens, $")
            # Tokens and cost per iteration too.
            await expect(page.locator("#iterations tr").first).to_contain_text("$")
            # The open transcript follows the agent live: a step published now (as the
            # loop relays one) appears without a reload.
            await _publish_step(portal, task_id, "impl-1-1", "a late note LIVE-STEP-4711")
            await expect(page.locator("#transcript")).to_contain_text("LIVE-STEP-4711")
            await page.screenshot(path=str(tmp_path / "transcript.png"), full_page=True)
            await page.click("#transcript-dialog button[type=submit]")
            await expect(dialog).to_be_hidden()

            # Nothing polls: the task list is pushed (never read over REST), and with the
            # loop over, a quiet page makes no API requests (the health probe, once a
            # minute, aside: it measures round trips when asked).
            api = [(t, m, u.split("?")[0]) for t, m, u in requests if "/api/" in u]
            assert not [u for _t, _m, u in api if u.endswith("/api/tasks")]
            quiet_from = time.monotonic()
            await page.wait_for_timeout(6_000)
            late = [
                (m, u) for t, m, u in api
                if t >= quiet_from and not u.endswith("/api/health/system")
            ]
            assert late == [], late

            # The login link works once: opened again, it is refused and asks for a token.
            second = await browser.new_page()
            await second.goto(f"{portal.url}/#login={code}")
            await expect(second.locator("#login-dialog")).to_be_visible()
            await expect(second.locator("#login-msg")).to_contain_text("used already")
            assert "login" not in second.url
        finally:
            await browser.close()
    assert problems == []
    async with httpx.AsyncClient(base_url=portal.url, headers=portal.headers()) as http:
        status = (await http.get(f"/api/tasks/{task_id}/status")).json()
    assert status["status"] == "succeeded"
    assert status["decisions"][-1]["by"] == "human:alice"
    assert status["decisions"][-1]["reason"] == "the greeting reads well"
