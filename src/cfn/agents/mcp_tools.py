"""An agent's MCP tools, through the authenticating gateway.

At spawn the orchestrator mints the agent a signed token whose skills decide
which MCP servers it may reach (``skill_to_mcp_mapping``). The runtime opens
one MCP session (streamable HTTP, the official SDK client) to the gateway
with that token, offers the tools the gateway lists for it next to the
built-in ones, and routes the model's calls of those tools to the gateway.
"""

from __future__ import annotations

import contextlib
import json
from types import TracebackType
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cfn.mcp.routing import mcp_endpoint
from cfn.providers.types import ToolSpec

MAX_RESULT = 16 * 1024


class GatewayTools:
    """``async with GatewayTools(url, token) as tools: tools.specs; await tools.call(...)``."""

    def __init__(self, gateway_url: str, token: str, timeout: float = 60.0) -> None:
        self.url = mcp_endpoint(gateway_url)
        self.token = token
        self.timeout = timeout
        self.specs: tuple[ToolSpec, ...] = ()
        self._session: ClientSession | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> GatewayTools:
        try:
            http = await self._stack.enter_async_context(
                httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=httpx2.Timeout(self.timeout),
                )
            )
            read, write, *_ = await self._stack.enter_async_context(
                streamable_http_client(self.url, http_client=http)
            )
            session = await self._stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            listed = await session.list_tools()
        except BaseException:
            await self._stack.aclose()
            raise
        self._session = session
        self.specs = tuple(
            ToolSpec(t.name, t.description or "", dict(t.input_schema or {"type": "object"}))
            for t in listed.tools
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session = None
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    @property
    def names(self) -> set[str]:
        return {spec.name for spec in self.specs}

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The tool's result as text for the model (``error: ...`` when refused or failed)."""
        if self._session is None:
            return "error: the MCP gateway session is closed"
        result = await self._session.call_tool(name, arguments)
        if result.structured_content is not None:
            text = json.dumps(result.structured_content, default=str)
        else:
            text = "\n".join(
                getattr(block, "text", "") for block in result.content if hasattr(block, "text")
            )
        if len(text) > MAX_RESULT:
            text = text[:MAX_RESULT] + "\n… [truncated]"
        return f"error: {text}" if result.is_error else text
