"""Playwright (seed port 8081): browser automation on Debian's chromium.

Playwright drives ``/usr/bin/chromium`` (MCP_CHROMIUM_PATH; never a browser
of Playwright's own download). The browser starts on first use; every MCP
session gets its own browser context (cookies, storage, one page), closed
when the session ends (DELETE from the client, or MCP_BROWSER_IDLE_TIMEOUT
without a call). ``/execute`` calls share a context when they pass the same
``session``, else each gets a fresh one for the call alone.

Every request the page makes, not only the navigation, is checked against
the URL allow-list (MCP_PLAYWRIGHT_ALLOWED_URLS, fnmatch patterns; default:
loopback only), so a page cannot pull in or redirect to anything else:

- an allowed HTTP request is fetched here without following redirects
  (``route.fetch(max_redirects=0)``); a redirect whose target is not allowed is
  blocked, and an allowed one is handed to the browser, whose next request is
  checked again;
- a WebSocket (``ws:``/``wss:``, checked as ``http:``/``https:``) reaches its server
  only when allowed (``route_web_socket``), from any page, ``data:`` and ``blob:``
  pages included; otherwise it is closed before it connects;
- service workers are blocked (their requests would bypass the routes), and
  WebRTC may not use UDP outside a proxy (no STUN to outside hosts);
- URLs with user info, backslashes, whitespace or control characters are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Route,
    WebSocketRoute,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from cfn.errors import McpForbiddenError, McpServerError, McpToolError
from cfn.mcp.base import Call, Common, Tool, ToolOutput, ToolServer, schema
from cfn.settings import Settings

log = logging.getLogger(__name__)

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # WebRTC would reach STUN/TURN servers over UDP, outside any request route.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
)
ACTION_TIMEOUT_MS = 30_000
ERROR_PAGE_WAIT_MS = 3_000
MAX_TEXT = 100_000
ALWAYS_ALLOWED = ("about:blank", "data:*")


def url_allowed(url: str, patterns: Sequence[str]) -> bool:
    """Whether ``url`` matches the allow-list (fnmatch patterns over the whole URL).

    A pattern such as ``http://127.0.0.1:*`` also matches
    ``http://127.0.0.1:80@outside.example/``, whose host is ``outside.example``
    (``127.0.0.1:80`` is its user info); URLs with user info, a backslash, whitespace
    or control characters are therefore refused before any pattern is tried."""
    if not isinstance(url, str) or not url.isprintable() or any(c in url for c in " \\"):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if "@" in parts.netloc:
        return False
    return any(fnmatch.fnmatchcase(url, p) for p in (*ALWAYS_ALLOWED, *patterns))


@dataclass
class BrowserSession:
    context: BrowserContext
    page: Page
    last_used: float


class Browsers:
    """One chromium, many contexts (one per session)."""

    def __init__(self, settings: Settings) -> None:
        self.executable = settings.mcp_chromium_path
        self.allowed = list(settings.mcp_playwright_allowed_urls)
        self.idle_timeout = settings.mcp_browser_idle_timeout
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._start_lock = asyncio.Lock()
        self.sessions: dict[str, BrowserSession] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def browser(self) -> Browser:
        async with self._start_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._pw is None:
                self._pw = await async_playwright().start()
            try:
                self._browser = await self._pw.chromium.launch(
                    executable_path=self.executable, headless=True, args=list(CHROMIUM_ARGS)
                )
            except PlaywrightError as exc:
                raise McpServerError(
                    f"cannot start chromium at {self.executable}: {exc.message.splitlines()[0]} "
                    "(install Debian's chromium: scripts/bootstrap.sh)"
                ) from None
            if self._reaper is None:
                self._reaper = asyncio.create_task(self._reap())
            return self._browser

    async def _guard(self, route: Route) -> None:
        url = route.request.url
        if not url_allowed(url, self.allowed):
            log.warning("blocked %s (not in MCP_PLAYWRIGHT_ALLOWED_URLS)", url)
            await route.abort("blockedbyclient")
            return
        if urlsplit(url).scheme not in ("http", "https"):
            await route.continue_()  # about:blank, data: (no network)
            return
        try:
            # Not followed here: the browser follows an allowed redirect itself, and
            # that request comes back through this route.
            response = await route.fetch(max_redirects=0)
        except PlaywrightError as exc:
            log.info("request to %s failed: %s", url, exc.message.splitlines()[0])
            await route.abort("failed")
            return
        location = response.headers.get("location")
        if 300 <= response.status < 400 and location:
            target = urljoin(url, location)
            if not url_allowed(target, self.allowed):
                log.warning("blocked a redirect from %s to %s", url, target)
                await route.abort("blockedbyclient")
                return
            headers = {**response.headers, "location": target}
            await route.fulfill(status=response.status, headers=headers, body=b"")
            return
        await route.fulfill(response=response)

    async def _guard_socket(self, socket: WebSocketRoute) -> None:
        url = socket.url
        parts = urlsplit(url)
        as_http = {"ws": "http", "wss": "https"}.get(parts.scheme)
        if as_http is not None and url_allowed(
            parts._replace(scheme=as_http).geturl(), self.allowed
        ):
            socket.connect_to_server()
            return
        log.warning("blocked a WebSocket to %s (not in MCP_PLAYWRIGHT_ALLOWED_URLS)", url)
        await socket.close(code=1008, reason="not allowed")

    async def open(self) -> BrowserSession:
        browser = await self.browser()
        # Service workers' requests would not pass through the routes below.
        context = await browser.new_context(service_workers="block")
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        await context.route("**/*", self._guard)
        await context.route_web_socket("**/*", self._guard_socket)
        page = await context.new_page()
        return BrowserSession(context, page, time.monotonic())

    async def session(self, key: str) -> BrowserSession:
        current = self.sessions.get(key)
        if current is None:
            current = self.sessions[key] = await self.open()
        current.last_used = time.monotonic()
        return current

    async def close_session(self, key: str) -> bool:
        current = self.sessions.pop(key, None)
        if current is None:
            return False
        with contextlib.suppress(PlaywrightError):
            await current.context.close()
        return True

    async def close_matching(self, suffix: str) -> None:
        for key in [k for k in self.sessions if k.endswith(f"/{suffix}")]:
            await self.close_session(key)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.idle_timeout / 2))
            now = time.monotonic()
            for key, item in list(self.sessions.items()):
                if now - item.last_used > self.idle_timeout:
                    log.info("closing idle browser session %s", key)
                    await self.close_session(key)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for key in list(self.sessions):
            await self.close_session(key)
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):
                await self._browser.close()
        if self._pw is not None:
            await self._pw.stop()


def build(settings: Settings, common: Common) -> ToolServer:
    browsers = Browsers(settings)

    def key_of(call: Call) -> str | None:
        if call.session is None:
            return None
        # Scoped to the token's agent and task: nobody else can reach a session by its id.
        return f"{call.claims.agent_id}/{call.claims.task_id}/{call.session}"

    async def with_page(call: Call, action: Any) -> ToolOutput:
        key = key_of(call)
        if key is None:
            session = await browsers.open()
            try:
                result: ToolOutput = await action(session.page)
                return result
            finally:
                with contextlib.suppress(PlaywrightError):
                    await session.context.close()
        session = await browsers.session(key)
        try:
            result = await action(session.page)
            return result
        finally:
            session.last_used = time.monotonic()

    def fail(exc: PlaywrightError) -> McpToolError:
        return McpToolError(exc.message.splitlines()[0] if exc.message else str(exc))

    async def navigate(call: Call, args: dict[str, Any]) -> ToolOutput:
        url = args["url"]
        if not url_allowed(url, browsers.allowed):
            raise McpForbiddenError(
                f"URL {url!r} is not allowed (MCP_PLAYWRIGHT_ALLOWED_URLS: "
                f"{', '.join(browsers.allowed)})"
            )

        async def go(page: Page) -> ToolOutput:
            try:
                reply = await page.goto(url, wait_until=args.get("wait_until", "load"))
            except PlaywrightError as exc:
                if "net::ERR_" in exc.message:
                    # Chromium commits its error page late: left pending, it would
                    # interrupt this session's next navigation.
                    with contextlib.suppress(PlaywrightError):
                        await page.wait_for_url(
                            "chrome-error://**", wait_until="commit", timeout=ERROR_PAGE_WAIT_MS
                        )
                raise fail(exc) from None
            return ToolOutput(
                {"url": page.url, "title": await page.title(),
                 "status": reply.status if reply else None}
            )  # fmt: skip

        return await with_page(call, go)

    async def text(call: Call, args: dict[str, Any]) -> ToolOutput:
        selector = args.get("selector", "body")

        async def read(page: Page) -> ToolOutput:
            if "url" in args:
                await navigate_inline(page, args["url"])
            try:
                value = await page.inner_text(selector)
            except PlaywrightError as exc:
                raise fail(exc) from None
            return ToolOutput(
                {"url": page.url, "selector": selector, "text": value[:MAX_TEXT],
                 "truncated": len(value) > MAX_TEXT}
            )  # fmt: skip

        return await with_page(call, read)

    async def navigate_inline(page: Page, url: str) -> None:
        if not url_allowed(url, browsers.allowed):
            raise McpForbiddenError(f"URL {url!r} is not allowed (MCP_PLAYWRIGHT_ALLOWED_URLS)")
        try:
            await page.goto(url)
        except PlaywrightError as exc:
            raise fail(exc) from None

    async def click(call: Call, args: dict[str, Any]) -> ToolOutput:
        async def do(page: Page) -> ToolOutput:
            try:
                await page.click(args["selector"])
            except PlaywrightError as exc:
                raise fail(exc) from None
            return ToolOutput({"url": page.url, "clicked": args["selector"]})

        return await with_page(call, do)

    async def fill(call: Call, args: dict[str, Any]) -> ToolOutput:
        async def do(page: Page) -> ToolOutput:
            try:
                await page.fill(args["selector"], args["value"])
            except PlaywrightError as exc:
                raise fail(exc) from None
            return ToolOutput({"url": page.url, "filled": args["selector"]})

        return await with_page(call, do)

    async def screenshot(call: Call, args: dict[str, Any]) -> ToolOutput:
        async def do(page: Page) -> ToolOutput:
            if "url" in args:
                await navigate_inline(page, args["url"])
            try:
                png = await page.screenshot(full_page=bool(args.get("full_page")), type="png")
            except PlaywrightError as exc:
                raise fail(exc) from None
            return ToolOutput({"url": page.url, "bytes": len(png), "format": "png"}, [png])

        return await with_page(call, do)

    async def close(call: Call, args: dict[str, Any]) -> ToolOutput:
        key = key_of(call)
        return ToolOutput({"closed": bool(key and await browsers.close_session(key))})

    selector = {"type": "string", "minLength": 1, "maxLength": 2000}
    url = {"type": "string", "minLength": 1, "maxLength": 8192}
    tools = [
        Tool("browser_navigate", "navigate", "Open a URL (allow-listed) in this session's page.",
             schema({"url": url, "wait_until": {"enum": ["load", "domcontentloaded",
                                                           "networkidle", "commit"]}},
                    ("url",)), navigate),
        Tool("browser_text", "text",
             "Visible text of an element (default body); with url, navigate first.",
             schema({"selector": selector, "url": url}), text),
        Tool("browser_click", "click", "Click the element matching a selector.",
             schema({"selector": selector}, ("selector",)), click),
        Tool("browser_fill", "fill", "Fill an input matching a selector with a value.",
             schema({"selector": selector, "value": {"type": "string", "maxLength": 100_000}},
                    ("selector", "value")), fill),
        Tool("browser_screenshot", "screenshot", "PNG screenshot of the page (image content).",
             schema({"full_page": {"type": "boolean"}, "url": url}), screenshot),
        Tool("browser_close", "close", "Close this session's browser context now.",
             schema({}), close),
    ]  # fmt: skip

    async def health() -> dict[str, Any]:
        return {
            "chromium": browsers.executable,
            "sessions": len(browsers.sessions),
            "allowed_urls": browsers.allowed,
        }

    return ToolServer(
        "playwright", tools, authority=common.authority, mapping=common.mapping,
        audit=common.audit, shutdown=browsers.close, end_session=browsers.close_matching,
        health=health,
    )  # fmt: skip
