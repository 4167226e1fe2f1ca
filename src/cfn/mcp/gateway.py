"""The MCP gateway: one authenticating entry in front of the four servers.

- ``/mcp``: one MCP endpoint (streamable HTTP) whose tool list is the union
  of the tools of the servers the token's skills map to; the other servers'
  tools are absent, and calling one is refused. Each client session gets one
  upstream MCP session per server it uses (opened with the client's own
  token, so the server checks it again), re-created when the upstream drops.
- ``/mcp/{server}``: the same, restricted to one server (403 if the token's
  skills do not reach it).
- ``POST /execute``: the seed's ``{"tool", "action", ...}``, routed by
  ``tool`` to its server.
- ``GET /health``: the gateway and each upstream's /health.

The gateway app can run on its own (``cfn mcp up`` starts it on
MCP_GATEWAY_PORT) or be mounted in another ASGI app: ``app(mounted=True)``
serves ``/``, ``/{server}``, ``/execute`` and ``/health`` for a mount at
``/mcp`` (the portal's), and :meth:`Gateway.lifespan` is the lifespan the host
app must run itself (Starlette never runs a mounted app's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cfn.errors import McpAuthError, McpForbiddenError
from cfn.mcp.base import (
    CLAIMS_SCOPE_KEY,
    SESSION_HEADER,
    Common,
    _json_error,
    error_result,
    read_json_body,
    transport_security,
)
from cfn.mcp.routing import SERVERS, require_server, server_for_execute_tool, servers_for
from cfn.mcp.tokens import Claims, bearer
from cfn.settings import Settings

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 300.0
CONNECT_TIMEOUT = 10.0
TOKEN_SCOPE_KEY = "cfn.token"  # noqa: S105 (an ASGI scope key)


class UpstreamSession:
    """One MCP client session to one server, held open by a task of its own."""

    def __init__(self, server: str, url: str, token: str) -> None:
        self.server = server
        self.url = url
        self.token = token
        self.session: ClientSession | None = None
        self.tools: list[types.Tool] | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> ClientSession:
        self._task = asyncio.create_task(self._hold(), name=f"mcp-upstream-{self.server}")
        try:
            await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise ConnectionError(
                f"{self.server} did not answer within {CONNECT_TIMEOUT:g} s"
            ) from None
        if self.session is None:
            raise ConnectionError(f"cannot reach {self.server} at {self.url}: {self._error}")
        return self.session

    async def _hold(self) -> None:
        try:
            async with (
                httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=httpx2.Timeout(30.0, read=UPSTREAM_TIMEOUT),
                ) as http,
                streamable_http_client(self.url, http_client=http) as streams,
                ClientSession(streams[0], streams[1]) as session,
            ):
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._closing.wait()
        except BaseException as exc:  # the session is gone; callers see it through .alive
            self._error = exc
        finally:
            self.session = None
            self._ready.set()

    @property
    def alive(self) -> bool:
        return self.session is not None and self._task is not None and not self._task.done()

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5.0)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        common: Common,
        upstreams: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.common = common
        host = settings.mcp_host if settings.mcp_host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        self.upstreams = upstreams or {
            name: f"http://{host}:{spec.port(settings)}" for name, spec in SERVERS.items()
        }
        # (client session key, server) -> upstream session
        self._sessions: dict[tuple[str, str], UpstreamSession] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tool_owner: dict[str, str] = {}
        self._http: httpx.AsyncClient | None = None
        #: Set by :meth:`app`: the all-servers MCP endpoint and the app's lifespan.
        self.endpoint: _GatewayMcp | None = None
        self.lifespan: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None

    # --- auth ------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, server: str | None, what: str) -> Claims:
        claims: Claims | None = None
        try:
            claims = self.common.authority.verify(bearer(authorization))
            if server is not None:
                require_server(claims, server, self.common.mapping)
            elif not servers_for(claims.skills, self.common.mapping):
                raise McpForbiddenError(
                    f"token of agent {claims.agent_id} has no skill mapped to an MCP server "
                    f"(skills: {', '.join(claims.skills)})"
                )
        except (McpAuthError, McpForbiddenError) as exc:
            if self.common.audit is not None:
                self.common.audit.record(
                    server=server or "gateway",
                    tool=what,
                    claims=claims,
                    outcome="forbidden" if isinstance(exc, McpForbiddenError) else "unauthorized",
                    duration=0.0,
                    reason=str(exc),
                )
            raise
        return claims

    # --- upstream sessions ------------------------------------------------------------------

    async def upstream(self, key: str, server: str, token: str) -> UpstreamSession:
        slot = (key, server)
        lock = self._locks.setdefault(slot, asyncio.Lock())
        async with lock:
            current = self._sessions.get(slot)
            if current is not None and current.alive:
                return current
            if current is not None:
                await current.close()
            fresh = UpstreamSession(server, self.upstreams[server] + "/mcp", token)
            await fresh.start()
            self._sessions[slot] = fresh
            return fresh

    async def end_session(self, key: str) -> None:
        for slot in [s for s in self._sessions if s[0] == key]:
            session = self._sessions.pop(slot)
            self._locks.pop(slot, None)
            await session.close()

    async def _tools_of(self, key: str, server: str, token: str) -> list[types.Tool]:
        upstream = await self.upstream(key, server, token)
        if upstream.tools is None:
            assert upstream.session is not None
            result = await upstream.session.list_tools()
            upstream.tools = list(result.tools)
            for tool in upstream.tools:
                self._tool_owner[tool.name] = server
        return upstream.tools

    async def _call(
        self, key: str, server: str, token: str, name: str, arguments: dict[str, Any] | None
    ) -> types.CallToolResult:
        for attempt in (1, 2):
            upstream = await self.upstream(key, server, token)
            session = upstream.session
            try:
                if session is None:
                    raise ConnectionError(f"{server} session closed")
                result = await session.call_tool(name, arguments)
            except (ConnectionError, httpx2.HTTPError, OSError, anyio_closed()) as exc:
                # The upstream dropped the session (restart, idle timeout): open a new one once.
                log.warning("upstream %s session lost (%s); re-creating", server, exc)
                await upstream.close()
                if attempt == 2:
                    raise
                continue
            if isinstance(result, types.CallToolResult):
                return result
            return error_result(f"{server} asked for input the gateway cannot relay")
        raise AssertionError("unreachable")

    # --- the MCP server facing clients ----------------------------------------------------

    def mcp_server(self, only: str | None) -> Server[Any]:
        def who(ctx: ServerRequestContext[Any]) -> tuple[Claims, str, str]:
            request = ctx.request
            if not isinstance(request, Request):
                raise McpAuthError("no HTTP request")
            claims = request.scope.get(CLAIMS_SCOPE_KEY)
            token = request.scope.get(TOKEN_SCOPE_KEY)
            if not isinstance(claims, Claims) or not isinstance(token, str):
                raise McpAuthError("no verified token on this request")
            key = request.headers.get(SESSION_HEADER) or f"token:{claims.token_id}"
            return claims, token, key

        def reachable(claims: Claims) -> list[str]:
            servers = servers_for(claims.skills, self.common.mapping)
            return [s for s in servers if only is None or s == only]

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            claims, token, key = who(ctx)
            servers = reachable(claims)
            lists = await asyncio.gather(
                *(self._tools_of(key, s, token) for s in servers), return_exceptions=True
            )
            tools: list[types.Tool] = []
            for server, item in zip(servers, lists, strict=True):
                if isinstance(item, BaseException):
                    log.warning("gateway: cannot list tools of %s: %s", server, item)
                    continue
                tools.extend(item)
            return types.ListToolsResult(tools=tools)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            started = time.perf_counter()
            claims, token, key = who(ctx)
            servers = reachable(claims)
            owner = self._tool_owner.get(params.name)
            if owner is None:
                # Not seen yet (a client that calls without listing): ask the reachable servers.
                for server in servers:
                    with contextlib.suppress(Exception):
                        await self._tools_of(key, server, token)
                owner = self._tool_owner.get(params.name)
            if owner is None or owner not in servers:
                reason = (
                    f"refused: tool {params.name!r} is not available to this token "
                    f"(skills: {', '.join(claims.skills)})"
                )
                if self.common.audit is not None:
                    self.common.audit.record(
                        server=owner or "gateway", tool=params.name, claims=claims,
                        outcome="forbidden", duration=time.perf_counter() - started,
                        reason=reason,
                    )  # fmt: skip
                return error_result(reason)
            try:
                result = await self._call(key, owner, token, params.name, params.arguments)
            except Exception as exc:
                result = error_result(f"{owner} is unreachable: {exc}")
            if self.common.audit is not None:
                self.common.audit.record(
                    server=owner, tool=params.name, claims=claims,
                    outcome="error" if result.is_error else "ok",
                    duration=time.perf_counter() - started,
                )  # fmt: skip
            return result

        return Server(
            "cfn-gateway" if only is None else f"cfn-gateway/{only}",
            version="1",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )

    # --- /execute ---------------------------------------------------------------------------

    async def execute(self, request: Request) -> Response:
        try:
            claims = self.authenticate(request.headers.get("authorization"), None, "/execute")
        except (McpAuthError, McpForbiddenError) as exc:
            return _json_error(getattr(exc, "status", 401), str(exc))
        body = await read_json_body(request)
        if isinstance(body, Response):
            return body
        tool = body.get("tool")
        server = server_for_execute_tool(tool) if isinstance(tool, str) else None
        if server is None:
            return _json_error(404, f"no MCP server serves tool {tool!r}")
        try:
            require_server(claims, server, self.common.mapping)
        except McpForbiddenError as exc:
            if self.common.audit is not None:
                self.common.audit.record(
                    server=server, tool=f"{tool}/{body.get('action')}", claims=claims,
                    outcome="forbidden", duration=0.0, reason=str(exc),
                )  # fmt: skip
            return _json_error(403, str(exc))
        assert self._http is not None
        try:
            upstream = await self._http.post(
                self.upstreams[server] + "/execute",
                json=body,
                headers={"Authorization": request.headers["authorization"]},
            )
        except httpx.HTTPError as exc:
            return _json_error(502, f"{server} is unreachable: {exc}")
        return Response(
            upstream.content,
            upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )

    # --- health -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        assert self._http is not None
        http = self._http

        async def one(name: str, url: str) -> tuple[str, str]:
            try:
                reply = await http.get(url + "/health", timeout=2.0)
            except httpx.HTTPError as exc:
                return name, f"down ({type(exc).__name__})"
            return name, "ok" if reply.status_code == 200 else f"http {reply.status_code}"

        states = dict(await asyncio.gather(*(one(n, u) for n, u in self.upstreams.items())))
        return JSONResponse({"status": "ok", "server": "gateway", "upstreams": states})

    # --- the app ----------------------------------------------------------------------------

    def app(self, *, host: str = "127.0.0.1", mounted: bool = False) -> Starlette:
        """The gateway's ASGI app.

        On its own port: ``/mcp``, ``/mcp/{server}``, ``/execute``, ``/health``.
        ``mounted``: the same under a mount at ``/mcp`` (``/mcp/``,
        ``/mcp/{server}``, ``/mcp/execute``, ``/mcp/health``); the host app
        routes the bare ``/mcp`` to :attr:`endpoint` and runs :meth:`lifespan`.
        """
        managers: dict[str | None, StreamableHTTPSessionManager] = {
            only: StreamableHTTPSessionManager(
                app=self.mcp_server(only),
                security_settings=transport_security(host),
                json_response=True,  # as the servers: one JSON body per call, no SSE
            )
            for only in (None, *SERVERS)
        }
        self.endpoint = _GatewayMcp(self, managers[None], None)
        mcp = "" if mounted else "/mcp"
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/execute", self.execute, methods=["POST"]),
            Route(mcp or "/", self.endpoint),
        ]
        routes += [
            Route(f"{mcp}/{name}", _GatewayMcp(self, managers[name], name)) for name in SERVERS
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with contextlib.AsyncExitStack() as stack:
                self._http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=UPSTREAM_TIMEOUT))
                )
                for manager in managers.values():
                    await stack.enter_async_context(manager.run())
                try:
                    yield
                finally:
                    for key in {slot[0] for slot in self._sessions}:
                        await self.end_session(key)
                    if self.common.audit is not None:
                        await self.common.audit.aclose()

        app = Starlette(routes=routes, lifespan=lifespan)
        self.lifespan = lambda: lifespan(app)
        return app


class _GatewayMcp:
    def __init__(
        self, gateway: Gateway, manager: StreamableHTTPSessionManager, only: str | None
    ) -> None:
        self.gateway = gateway
        self.inner = StreamableHTTPASGIApp(manager)
        self.only = only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        authorization = request.headers.get("authorization")
        try:
            claims = self.gateway.authenticate(authorization, self.only, "/mcp")
        except (McpAuthError, McpForbiddenError) as exc:
            await _json_error(getattr(exc, "status", 401), str(exc))(scope, receive, send)
            return
        scope[CLAIMS_SCOPE_KEY] = claims
        scope[TOKEN_SCOPE_KEY] = bearer(authorization)
        await self.inner(scope, receive, send)
        session = request.headers.get(SESSION_HEADER)
        if scope["method"] == "DELETE" and session:
            await self.gateway.end_session(session)


def anyio_closed() -> type[BaseException]:
    import anyio

    return anyio.ClosedResourceError
