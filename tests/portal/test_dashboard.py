"""End to end in a real browser: Playwright drives Debian's chromium against the
running portal while a real CFN Loop runs (offline provider). The test starts a
task from the dashboard's form, sees agents appear and progress move, and
clicks the product owner's decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

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


async def test_dashboard_follows_a_loop_and_takes_a_decision(
    portal: RunningPortal, tmp_path: Path
) -> None:
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"),
            )
            await page.goto(f"{portal.url}/#token={portal.token(sub='alice')}")
            await expect(page.locator("#who")).to_have_text("alice (operator)")
            assert "token" not in page.url  # the token leaves the address bar at once

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
        finally:
            await browser.close()
    assert problems == []
    async with httpx.AsyncClient(base_url=portal.url, headers=portal.headers()) as http:
        status = (await http.get(f"/api/tasks/{task_id}/status")).json()
    assert status["status"] == "succeeded"
    assert status["decisions"][-1]["by"] == "human:alice"
    assert status["decisions"][-1]["reason"] == "the greeting reads well"
