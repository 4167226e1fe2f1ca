"""What every cfn MCP server shares: tools, token checks, /health, /mcp and /execute.

A server is a set of ``Tool`` objects (name, JSON schema, handler). The same
handlers answer MCP ``tools/call`` (streamable HTTP at ``/mcp``, on the
official SDK's low-level ``Server``) and the seed's ``POST /execute`` with
``{"tool": ..., "action": ..., ...}``. Every request to either is
authenticated here, by the server itself, so reaching a server directly on
its port is as protected as reaching it through the gateway: a missing,
malformed, forged or expired token gets 401, a token whose skills do not map
to this server gets 403, each with the reason in JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cfn.errors import CfnError, McpAuthError, McpForbiddenError, McpToolError
from cfn.mcp.audit import AuditLog
from cfn.mcp.routing import SERVERS, require_server
from cfn.mcp.tokens import Claims, TokenAuthority, bearer

log = logging.getLogger(__name__)

CLAIMS_SCOPE_KEY = "cfn.claims"
SESSION_HEADER = "mcp-session-id"
MAX_EXECUTE_BODY = 1024 * 1024


@dataclass(frozen=True)
class Call:
    """Who calls a tool, and in which session (MCP session id or /execute's ``session``)."""

    claims: Claims
    session: str | None = None


@dataclass
class ToolOutput:
    data: dict[str, Any]
    images: list[bytes] = field(default_factory=list)


Handler = Callable[[Call, dict[str, Any]], Awaitable[ToolOutput]]


@dataclass(frozen=True)
class Tool:
    name: str
    action: str
    description: str
    schema: dict[str, Any]
    handler: Handler
    write: bool = False

    def spec(self) -> types.Tool:
        return types.Tool(name=self.name, description=self.description, input_schema=self.schema)


def schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed JSON object schema (unknown arguments are refused, not ignored)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="cfn-mcp"'} if status == 401 else None
    return JSONResponse({"ok": False, "error": message, **extra}, status, headers=headers)


@dataclass(frozen=True)
class Common:
    """What every server gets from its runner: the token authority, the skill mapping, audit."""

    authority: TokenAuthority
    mapping: Mapping[str, tuple[str, ...]]
    audit: AuditLog | None = None


class ToolServer:
    """One MCP server: its tools, its token checks, its HTTP app."""

    def __init__(
        self,
        name: str,
        tools: list[Tool],
        *,
        authority: TokenAuthority,
        mapping: Mapping[str, tuple[str, ...]],
        audit: AuditLog | None = None,
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        end_session: Callable[[str], Awaitable[None]] | None = None,
        health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        if name not in SERVERS:
            raise ValueError(f"unknown MCP server {name!r}")
        self.name = name
        self.spec = SERVERS[name]
        self.tools = {tool.name: tool for tool in tools}
        self._validators = {
            tool.name: jsonschema.validators.validator_for(tool.schema)(tool.schema)
            for tool in tools
        }
        for tool in tools:
            type(self._validators[tool.name]).check_schema(tool.schema)  # once, at build
        self.actions = {tool.action: tool for tool in tools}
        self.authority = authority
        self.mapping = mapping
        self.audit = audit
        self._startup = startup
        self._shutdown = shutdown
        self._end_session = end_session
        self._health = health

    # --- authentication ---------------------------------------------------------------

    def authenticate(self, authorization: str | None, what: str = "request") -> Claims:
        """Verify the bearer token and its skills; a refusal is audited, then raised."""
        claims: Claims | None = None
        try:
            claims = self.authority.verify(bearer(authorization))
            require_server(claims, self.name, self.mapping)
        except (McpAuthError, McpForbiddenError) as exc:
            if self.audit is not None:
                outcome = "forbidden" if isinstance(exc, McpForbiddenError) else "unauthorized"
                self.audit.record(
                    server=self.name,
                    tool=what,
                    claims=claims,
                    outcome=outcome,
                    duration=0.0,
                    reason=str(exc),
                )
            raise
        return claims

    # --- calling a tool ----------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any] | None, call: Call) -> ToolOutput:
        """Validate and run one tool call; errors are CfnError subclasses with a reason."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            tool = self.tools.get(name)
            if tool is None:
                raise McpToolError(
                    f"unknown tool {name!r} on {self.name}; tools: {', '.join(self.tools)}"
                )
            args = dict(arguments or {})
            # What jsonschema.validate reports, without re-checking the schema on every call
            # (that check alone was ~4 ms of a 5 ms redis_ttl on a loaded machine).
            problem = jsonschema.exceptions.best_match(self._validators[name].iter_errors(args))
            if problem is not None:
                where = ".".join(str(p) for p in problem.absolute_path) or "arguments"
                raise McpToolError(f"{name}: {where}: {problem.message}")
            if tool.write and not call.claims.can_write:
                raise McpForbiddenError(
                    f"{name} changes data: the token's scope is read-only (mint one with "
                    "--scope write)"
                )
            return await tool.handler(call, args)
        except McpForbiddenError:
            outcome = "forbidden"
            raise
        except CfnError:
            outcome = "error"
            raise
        except Exception as exc:
            outcome = "error"
            log.exception("%s: tool %s failed", self.name, name)
            raise McpToolError(f"{name} failed: {type(exc).__name__}: {exc}") from None
        finally:
            if self.audit is not None:
                self.audit.record(
                    server=self.name,
                    tool=name,
                    claims=call.claims,
                    outcome=outcome,
                    duration=time.perf_counter() - started,
                )

    # --- MCP (low-level SDK server) --------------------------------------------------

    def mcp_server(self) -> Server[Any]:
        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=[tool.spec() for tool in self.tools.values()])

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            request = ctx.request
            claims = request.scope.get(CLAIMS_SCOPE_KEY) if isinstance(request, Request) else None
            if not isinstance(claims, Claims):
                return error_result("refused: no verified token on this request")
            session = request.headers.get(SESSION_HEADER) if isinstance(request, Request) else None
            try:
                output = await self.call(params.name, params.arguments, Call(claims, session))
            except CfnError as exc:
                return error_result(str(exc))
            return to_result(output)

        return Server(self.name, version="1", on_list_tools=list_tools, on_call_tool=call_tool)

    # --- /execute ------------------------------------------------------------------------

    async def execute(self, request: Request) -> Response:
        try:
            claims = self.authenticate(request.headers.get("authorization"), "/execute")
        except (McpAuthError, McpForbiddenError) as exc:
            return _json_error(getattr(exc, "status", 401), str(exc))
        body = await read_json_body(request)
        if isinstance(body, Response):
            return body
        tool_name = body.pop("tool", None)
        action = body.pop("action", None)
        session = body.pop("session", None)
        if tool_name not in self.spec.execute_tools:
            return _json_error(
                404,
                f"tool {tool_name!r} is not served by {self.name}; use one of "
                f"{', '.join(self.spec.execute_tools)}",
            )
        tool = self.actions.get(action) if isinstance(action, str) else None
        if tool is None:
            actions = ", ".join(self.actions)
            return _json_error(
                400, f"unknown action {action!r} for {tool_name}; actions: {actions}"
            )
        if session is not None and not isinstance(session, str):
            return _json_error(400, "session must be a string")
        try:
            output = await self.call(tool.name, body, Call(claims, session))
        except CfnError as exc:
            return _json_error(getattr(exc, "status", 400), str(exc))
        result = dict(output.data)
        if output.images:
            result["images_png_base64"] = [base64.b64encode(i).decode() for i in output.images]
        return JSONResponse({"ok": True, "tool": tool_name, "action": action, "result": result})

    # --- the app ----------------------------------------------------------------------------

    def app(self, *, host: str = "127.0.0.1") -> Starlette:
        manager = StreamableHTTPSessionManager(
            app=self.mcp_server(),
            security_settings=transport_security(host),
            # A tool call's answer as one JSON body, not an SSE stream: the tools send no
            # notifications mid-call, and SSE framing costs ~1 ms a call each way.
            json_response=True,
        )
        mcp_app = AuthenticatedMcp(StreamableHTTPASGIApp(manager), self)

        async def health(request: Request) -> Response:
            extra = await self._health() if self._health is not None else {}
            return JSONResponse(
                {
                    "status": "ok",
                    "server": self.name,
                    # whose answer this is: `cfn mcp up` checks it is its own process's
                    "pid": os.getpid(),
                    "tools": list(self.tools),
                    **extra,
                }
            )

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            if self._startup is not None:
                await self._startup()
            try:
                async with manager.run():
                    yield
            finally:
                if self._shutdown is not None:
                    await self._shutdown()
                if self.audit is not None:
                    await self.audit.aclose()

        return Starlette(
            routes=[
                Route("/health", health, methods=["GET"]),
                Route("/execute", self.execute, methods=["POST"]),
                Route("/mcp", mcp_app),
            ],
            lifespan=lifespan,
        )

    async def session_ended(self, session_id: str) -> None:
        if self._end_session is not None:
            await self._end_session(session_id)


class AuthenticatedMcp:
    """The SDK's streamable HTTP endpoint behind cfn's token check."""

    def __init__(self, inner: ASGIApp, server: ToolServer) -> None:
        self.inner = inner
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        request = Request(scope)
        try:
            claims = self.server.authenticate(request.headers.get("authorization"), "/mcp")
        except (McpAuthError, McpForbiddenError) as exc:
            await _json_error(getattr(exc, "status", 401), str(exc))(scope, receive, send)
            return
        scope[CLAIMS_SCOPE_KEY] = claims
        await self.inner(scope, receive, send)
        session = request.headers.get(SESSION_HEADER)
        if scope["method"] == "DELETE" and session:
            await self.server.session_ended(session)


def transport_security(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection on loopback (as the SDK does); off on other binds."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


async def read_json_body(request: Request) -> dict[str, Any] | Response:
    raw = await request.body()
    if len(raw) > MAX_EXECUTE_BODY:
        return _json_error(413, f"request body over {MAX_EXECUTE_BODY} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        return _json_error(400, f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _json_error(400, 'body must be a JSON object {"tool": ..., "action": ..., ...}')
    return body


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"error: {message}")], is_error=True
    )


def to_result(output: ToolOutput) -> types.CallToolResult:
    content: list[types.ContentBlock] = [
        types.TextContent(type="text", text=json.dumps(output.data, default=str))
    ]
    for image in output.images:
        content.append(
            types.ImageContent(
                type="image", data=base64.b64encode(image).decode(), mime_type="image/png"
            )
        )
    return types.CallToolResult(content=content, structured_content=output.data, is_error=False)


# --- argument helpers -----------------------------------------------------------------------


async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
