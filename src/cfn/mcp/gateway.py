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

The MCP endpoints are a JSON-RPC-aware pass-through, not an MCP server and
client of their own: the gateway parses each request's JSON-RPC envelope
(method, tool name) to authorise and route it, answers ``initialize`` and
``ping`` itself, builds ``tools/list`` from the servers' lists filtered by the
token, and forwards ``tools/call`` as the client's own bytes over a kept-alive
connection (:mod:`cfn.mcp.upstream`) on the client session's upstream session
for the tool's server, whose reply goes back as received. The audit row is
written after the reply has been sent.

The gateway app can run on its own (``cfn mcp up`` starts it on
MCP_GATEWAY_PORT) or be mounted in another ASGI app: ``app(mounted=True)``
serves ``/``, ``/{server}``, ``/execute`` and ``/health`` for a mount at
``/mcp`` (the portal's), and :meth:`Gateway.lifespan` is the lifespan the host
app must run itself (Starlette never runs a mounted app's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cfn.errors import McpAuthError, McpForbiddenError
from cfn.mcp.base import Common, _json_error, read_json_body, transport_security
from cfn.mcp.routing import SERVERS, require_server, server_for_execute_tool, servers_for
from cfn.mcp.tokens import Claims, bearer
from cfn.mcp.upstream import Header, HttpPool, Reply, UpstreamError
from cfn.settings import Settings

log = logging.getLogger(__name__)

#: Largest JSON-RPC request accepted on /mcp (the SDK's limit).
MAX_MCP_BODY = 4 * 1024 * 1024
#: A client session unused this long is ended (its upstream sessions too).
SESSION_IDLE_TIMEOUT = 3600.0
MAX_SESSIONS = 4096
#: Upstream DELETEs when a session ends (and at shutdown) wait at most this long.
CLOSE_TIMEOUT = 5.0

JSON = b"application/json"
ACCEPT_BOTH = b"application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


# --- small helpers ---------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _rpc_result(request_id: Any, result: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def _rpc_error(request_id: Any, code: int, message: str) -> bytes:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def _tool_error(request_id: Any, message: str) -> bytes:
    """A ``tools/call`` result that is a tool error (what the servers return for a refusal)."""
    return _rpc_result(
        request_id,
        {"content": [{"type": "text", "text": f"error: {message}"}], "isError": True},
    )


async def _send(
    send: Send, status: int, body: bytes, *, session: str | None = None,
    content_type: bytes = JSON, extra: Iterable[Header] = (),
) -> None:  # fmt: skip
    headers: list[Header] = [(b"content-type", content_type),
                             (b"content-length", str(len(body)).encode())]  # fmt: skip
    if session is not None:
        headers.append((b"mcp-session-id", session.encode()))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _fail(
    send: Send, status: int, code: int, message: str, request_id: Any = None,
    session: str | None = None,
) -> None:  # fmt: skip
    await _send(send, status, _rpc_error(request_id, code, message), session=session)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _message_of(reply: Reply) -> dict[str, Any] | None:
    """The JSON-RPC message of an upstream reply (a JSON body or the last SSE ``data:``)."""
    body = reply.body
    try:
        if reply.content_type.startswith("text/event-stream"):
            data = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
            body = data[-1] if data else b""
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _upstream_failure(server: str, reply: Reply) -> UpstreamError:
    message = _message_of(reply)
    error = message.get("error") if message else None
    detail = (
        error.get("message")
        if isinstance(error, dict)
        else reply.body[:200].decode("utf-8", "replace")
    )
    return UpstreamError(f"{server} answered HTTP {reply.status}: {detail}")


class HostCheck:
    """DNS-rebinding protection as the SDK's transport does it (Host and Origin headers)."""

    def __init__(self, host: str) -> None:
        settings = transport_security(host)
        self.enabled = settings is not None and settings.enable_dns_rebinding_protection
        hosts = settings.allowed_hosts if settings is not None else []
        origins = settings.allowed_origins if settings is not None else []
        self.hosts = ({h for h in hosts if not h.endswith(":*")},
                      tuple(h[:-1] for h in hosts if h.endswith(":*")))  # fmt: skip
        self.origins = ({o for o in origins if not o.endswith(":*")},
                        tuple(o[:-1] for o in origins if o.endswith(":*")))  # fmt: skip

    def problem(self, host: str | None, origin: str | None) -> tuple[int, str] | None:
        if not self.enabled:
            return None
        exact, prefixes = self.hosts
        if not host or not (host in exact or host.startswith(prefixes)):
            return 421, "Invalid Host header"
        exact, prefixes = self.origins
        if origin and not (origin in exact or origin.startswith(prefixes)):
            return 403, "Invalid Origin header"
        return None


# --- sessions --------------------------------------------------------------------------------


@dataclass
class Upstream:
    """A client session's MCP session on one server."""

    session_id: str | None = None
    version: str = LATEST_HANDSHAKE_VERSION
    tools: list[dict[str, Any]] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class ClientSession:
    """One client's MCP session with the gateway (bound to the agent and task that opened it)."""

    id: str
    agent_id: str
    task_id: str
    only: str | None
    protocol_version: str
    #: The client's ``initialize`` params, replayed to open each upstream session.
    init_params: dict[str, Any]
    authorization: bytes
    last_used: float = field(default_factory=time.monotonic)
    upstreams: dict[str, Upstream] = field(default_factory=dict)


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
        self._pools = {name: HttpPool(url) for name, url in self.upstreams.items()}
        self._sessions: dict[str, ClientSession] = {}
        self._tool_owner: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._host_check = HostCheck("127.0.0.1")
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
            self._audit(
                server=server or "gateway", tool=what, claims=claims,
                outcome="forbidden" if isinstance(exc, McpForbiddenError) else "unauthorized",
                duration=0.0, reason=str(exc),
            )  # fmt: skip
            raise
        assert claims is not None
        return claims

    def _audit(
        self, *, server: str, tool: str, claims: Claims | None, outcome: str,
        duration: float, reason: str = "",
    ) -> None:  # fmt: skip
        if self.common.audit is not None:
            self.common.audit.record(server=server, tool=tool, claims=claims, outcome=outcome,
                                     duration=duration, reason=reason)  # fmt: skip

    def reachable(self, claims: Claims, only: str | None) -> list[str]:
        servers = servers_for(claims.skills, self.common.mapping)
        return [s for s in servers if only is None or s == only]

    # --- upstream sessions -----------------------------------------------------------------

    async def _post(
        self, server: str, body: bytes, authorization: bytes,
        session_id: str | None, version: str | None,
    ) -> Reply:  # fmt: skip
        headers: list[Header] = [
            (b"authorization", authorization),
            (b"content-type", JSON),
            (b"accept", ACCEPT_BOTH),
        ]
        if session_id is not None:
            headers.append((b"mcp-session-id", session_id.encode()))
        if version is not None:
            headers.append((b"mcp-protocol-version", version.encode()))
        return await self._pools[server].request(b"POST", b"/mcp", headers, body)

    async def _open_upstream(self, session: ClientSession, server: str, up: Upstream) -> None:
        """The MCP handshake with ``server`` for ``session`` (the client's own params)."""
        auth = session.authorization
        request = {"jsonrpc": "2.0", "id": "cfn-gateway-initialize", "method": "initialize",
                   "params": session.init_params}  # fmt: skip
        reply = await self._post(server, _dumps(request), auth, None, None)
        upstream_id = reply.headers.get(SESSION_HEADER)
        message = _message_of(reply)
        if reply.status != 200 or not upstream_id or message is None or "result" not in message:
            raise _upstream_failure(server, reply)
        result = message["result"]
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        up.version = version if isinstance(version, str) else session.protocol_version
        notify = _dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        reply = await self._post(server, notify, auth, upstream_id, up.version)
        if reply.status >= 300:
            raise _upstream_failure(server, reply)
        up.session_id = upstream_id
        up.tools = None

    async def _upstream(
        self, session: ClientSession, server: str, stale: str | None = None
    ) -> Upstream:
        up = session.upstreams.get(server)
        if up is None:
            up = session.upstreams[server] = Upstream()
        if up.session_id is not None and up.session_id != stale:
            return up
        async with up.lock:
            if up.session_id is None or up.session_id == stale:
                up.session_id = None
                await self._open_upstream(session, server, up)
        return up

    async def _forward(self, session: ClientSession, server: str, body: bytes) -> Reply:
        """Send a JSON-RPC request on the session's upstream session for ``server``.

        A 404 means the server no longer knows that session (it restarted, or ended
        it): the session is opened again and the request sent once more (a server
        does nothing with a request for a session it does not know).
        """
        up = await self._upstream(session, server)
        sent_on = up.session_id
        reply = await self._post(server, body, session.authorization, sent_on, up.version)
        if reply.status == 404:
            log.warning("gateway: %s lost its session for %s; opening a new one",
                        server, session.agent_id)  # fmt: skip
            up = await self._upstream(session, server, stale=sent_on)
            reply = await self._post(server, body, session.authorization, up.session_id,
                                     up.version)  # fmt: skip
        return reply

    async def _tools_of(self, session: ClientSession, server: str) -> list[dict[str, Any]]:
        up = session.upstreams.get(server)
        if up is not None and up.tools is not None:
            return up.tools
        request = {"jsonrpc": "2.0", "id": "cfn-gateway-tools", "method": "tools/list"}
        reply = await self._forward(session, server, _dumps(request))
        message = _message_of(reply)
        result = message.get("result") if message else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if reply.status != 200 or not isinstance(tools, list):
            raise _upstream_failure(server, reply)
        listed = [tool for tool in tools if isinstance(tool, dict)]
        for tool in listed:
            name = tool.get("name")
            if isinstance(name, str):
                self._tool_owner[name] = server
        session.upstreams[server].tools = listed
        return listed

    async def _end(self, session: ClientSession) -> None:
        """End the session's upstream sessions (HTTP DELETE, as the client did)."""

        async def one(server: str, up: Upstream) -> None:
            if up.session_id is None:
                return
            headers: list[Header] = [
                (b"authorization", session.authorization),
                (b"mcp-session-id", up.session_id.encode()),
                (b"mcp-protocol-version", up.version.encode()),
            ]
            try:
                await self._pools[server].request(b"DELETE", b"/mcp", headers,
                                                  timeout=CLOSE_TIMEOUT)  # fmt: skip
            except (UpstreamError, ValueError) as exc:
                log.info("gateway: ending %s's session on %s: %s", session.agent_id, server, exc)

        await asyncio.gather(*(one(s, up) for s, up in list(session.upstreams.items())))
        session.upstreams.clear()

    def _sweep(self) -> None:
        """End sessions idle for SESSION_IDLE_TIMEOUT (clients that never sent DELETE)."""
        cutoff = time.monotonic() - SESSION_IDLE_TIMEOUT
        for key in [k for k, s in self._sessions.items() if s.last_used < cutoff]:
            task = asyncio.get_running_loop().create_task(self._end(self._sessions.pop(key)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- the MCP endpoint --------------------------------------------------------------------

    async def handle_mcp(
        self, scope: Scope, receive: Receive, send: Send, only: str | None
    ) -> None:
        authorization = session_id = host = origin = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"mcp-session-id":
                session_id = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        problem = self._host_check.problem(host, origin)
        if problem is not None:
            await _fail(send, problem[0], INVALID_REQUEST, problem[1])
            return
        auth_text = authorization.decode("latin-1") if authorization is not None else None
        try:
            claims = self.authenticate(auth_text, only, "/mcp")
        except (McpAuthError, McpForbiddenError) as exc:
            await _json_error(getattr(exc, "status", 401), str(exc))(scope, receive, send)
            return
        assert authorization is not None
        method = scope["method"]
        if method == "POST":
            await self._post_mcp(scope, receive, send, only, claims, authorization, session_id)
        elif method == "DELETE":
            session = self._session(session_id, claims, only)
            if session is None:
                missing = "Session not found" if session_id else "Bad Request: Missing session ID"
                await _fail(send, 404 if session_id else 400, INVALID_REQUEST, missing)
                return
            self._sessions.pop(session.id, None)
            session.authorization = authorization
            await self._end(session)
            await _send(send, 200, b"", session=session.id)
        else:
            # No server-initiated messages: no GET stream (the spec's answer is 405).
            await _send(send, 405, _rpc_error(None, INVALID_REQUEST, "Method Not Allowed"),
                        extra=[(b"allow", b"POST, DELETE")])  # fmt: skip

    def _session(
        self, session_id: str | None, claims: Claims, only: str | None
    ) -> ClientSession | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is None or session.only != only:
            return None
        if (session.agent_id, session.task_id) != (claims.agent_id, claims.task_id):
            log.warning("gateway: session %s used by another agent's token (%s); refused",
                        session.id, claims.agent_id)  # fmt: skip
            return None  # as if it did not exist
        return session

    async def _post_mcp(
        self, scope: Scope, receive: Receive, send: Send, only: str | None,
        claims: Claims, authorization: bytes, session_id: str | None,
    ) -> None:  # fmt: skip
        content_type = accept = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
        if not content_type.lower().startswith(JSON):
            await _fail(send, 415, INVALID_REQUEST, "Content-Type must be application/json")
            return
        if accept and JSON not in accept and b"*/*" not in accept:
            await _fail(send, 406, INVALID_REQUEST, "Not Acceptable: accept application/json")
            return
        body = await _read_body(receive, MAX_MCP_BODY)
        if body is None:
            await _fail(send, 413, INVALID_REQUEST, f"request body over {MAX_MCP_BODY} bytes")
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            await _fail(send, 400, PARSE_ERROR, f"Parse error: {exc}")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            reason = ("batches are not supported" if isinstance(message, list)
                      else "not a JSON-RPC 2.0 message")  # fmt: skip
            await _fail(send, 400, INVALID_REQUEST, f"Invalid Request: {reason}")
            return
        rpc_method = message.get("method")
        request_id = message.get("id")
        is_request = "id" in message and isinstance(rpc_method, str)
        if rpc_method == "initialize" and is_request:
            await self._initialize(send, message, only, claims, authorization)
            return
        if rpc_method == "server/discover" and is_request and session_id is None:
            # Sessionless (2026) discovery: the gateway speaks the handshake; clients fall back.
            await _fail(
                send, 200, METHOD_NOT_FOUND, "Method not found: server/discover", request_id
            )
            return
        if session_id is None:
            await _fail(send, 400, INVALID_REQUEST, "Bad Request: Missing session ID", request_id)
            return
        session = self._session(session_id, claims, only)
        if session is None:
            await _fail(send, 404, INVALID_REQUEST, "Session not found", request_id)
            return
        session.last_used = time.monotonic()
        session.authorization = authorization  # the latest token (agents may get a fresh one)
        if not is_request:
            # Notifications and replies: no server sends requests or acts on notifications.
            await _send(send, 202, b"", session=session.id)
            return
        if rpc_method == "tools/call":
            await self._call(send, session, claims, message, body)
        elif rpc_method == "tools/list":
            await self._list(send, session, claims, request_id)
        elif rpc_method == "ping":
            await _send(send, 200, _rpc_result(request_id, {}), session=session.id)
        else:
            unknown = f"Method not found: {rpc_method}"
            await _fail(send, 200, METHOD_NOT_FOUND, unknown, request_id, session.id)

    async def _initialize(
        self, send: Send, message: dict[str, Any], only: str | None,
        claims: Claims, authorization: bytes,
    ) -> None:  # fmt: skip
        params = message.get("params")
        request_id = message.get("id")
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersion"), str):
            reason = "initialize needs params.protocolVersion"
            await _fail(send, 400, INVALID_PARAMS, reason, request_id)
            return
        self._sweep()
        if len(self._sessions) >= MAX_SESSIONS:
            await _fail(send, 503, INVALID_REQUEST, "Too many open sessions", request_id)
            return
        asked = params["protocolVersion"]
        version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        session = ClientSession(
            id=uuid.uuid4().hex, agent_id=claims.agent_id, task_id=claims.task_id, only=only,
            protocol_version=version, init_params={**params, "protocolVersion": version},
            authorization=authorization,
        )  # fmt: skip
        self._sessions[session.id] = session
        result = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "cfn-gateway" if only is None else f"cfn-gateway/{only}",
                           "version": "1"},
            "instructions": "Tools of the cfn MCP servers this token's skills reach.",
        }  # fmt: skip
        await _send(send, 200, _rpc_result(request_id, result), session=session.id)

    async def _list(
        self, send: Send, session: ClientSession, claims: Claims, request_id: Any
    ) -> None:
        servers = self.reachable(claims, session.only)
        lists = await asyncio.gather(
            *(self._tools_of(session, s) for s in servers), return_exceptions=True
        )
        tools: list[dict[str, Any]] = []
        for server, item in zip(servers, lists, strict=True):
            if isinstance(item, BaseException):
                log.warning("gateway: cannot list tools of %s: %s", server, item)
                continue
            tools.extend(item)
        await _send(send, 200, _rpc_result(request_id, {"tools": tools}), session=session.id)

    async def _call(
        self, send: Send, session: ClientSession, claims: Claims,
        message: dict[str, Any], body: bytes,
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        request_id = message.get("id")
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            reason = "tools/call needs params.name"
            await _fail(send, 200, INVALID_PARAMS, reason, request_id, session.id)
            return
        servers = self.reachable(claims, session.only)
        owner = self._tool_owner.get(name)
        if owner is None:
            # Not seen yet (a client that calls without listing): ask the reachable servers.
            for server in servers:
                with contextlib.suppress(Exception):
                    await self._tools_of(session, server)
            owner = self._tool_owner.get(name)
        if owner is None or owner not in servers:
            reason = (f"refused: tool {name!r} is not available to this token "
                      f"(skills: {', '.join(claims.skills)})")  # fmt: skip
            await _send(send, 200, _tool_error(request_id, reason), session=session.id)
            self._audit(server=owner or "gateway", tool=name, claims=claims, outcome="forbidden",
                        duration=time.perf_counter() - started, reason=reason)  # fmt: skip
            return
        try:
            reply = await self._forward(session, owner, body)
        except (UpstreamError, ValueError) as exc:
            await _send(send, 200, _tool_error(request_id, f"{owner} is unreachable: {exc}"),
                        session=session.id)  # fmt: skip
            self._audit(server=owner, tool=name, claims=claims, outcome="error",
                        duration=time.perf_counter() - started, reason=str(exc))  # fmt: skip
            return
        duration = time.perf_counter() - started
        await _send(send, reply.status, reply.body, session=session.id,
                    content_type=reply.content_type.encode("latin-1") or JSON)  # fmt: skip
        # The transport sends the reply when this task yields (cfn.mcp.corked): yield
        # first, then read whether the tool failed, for the audit row.
        await asyncio.sleep(0)
        outcome = "error"
        if reply.status == 200:
            result = (_message_of(reply) or {}).get("result")
            if isinstance(result, dict) and not result.get("isError"):
                outcome = "ok"
        self._audit(server=owner, tool=name, claims=claims, outcome=outcome, duration=duration)

    # --- /execute ---------------------------------------------------------------------------

    async def execute(self, request: Request) -> Response:
        started = time.perf_counter()
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
        what = f"{tool}/{body.get('action')}"
        try:
            require_server(claims, server, self.common.mapping)
        except McpForbiddenError as exc:
            self._audit(server=server, tool=what, claims=claims, outcome="forbidden",
                        duration=0.0, reason=str(exc))  # fmt: skip
            return _json_error(403, str(exc))
        headers: list[Header] = [
            (b"authorization", request.headers["authorization"].encode("latin-1")),
            (b"content-type", JSON),
        ]
        try:
            upstream = await self._pools[server].request(
                b"POST", b"/execute", headers, await request.body()
            )
        except UpstreamError as exc:
            self._audit(server=server, tool=what, claims=claims, outcome="error",
                        duration=time.perf_counter() - started, reason=str(exc))  # fmt: skip
            return _json_error(502, f"{server} is unreachable: {exc}")
        outcome = ("ok" if upstream.status < 300 else
                   "forbidden" if upstream.status == 403 else "error")  # fmt: skip
        self._audit(server=server, tool=what, claims=claims, outcome=outcome,
                    duration=time.perf_counter() - started)  # fmt: skip
        return Response(upstream.body, upstream.status,
                        media_type=upstream.content_type or "application/json")  # fmt: skip

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
        return JSONResponse(
            {"status": "ok", "server": "gateway", "pid": os.getpid(), "upstreams": states}
        )

    # --- the app ----------------------------------------------------------------------------

    def app(self, *, host: str = "127.0.0.1", mounted: bool = False) -> ASGIApp:
        """The gateway's ASGI app.

        On its own port: ``/mcp``, ``/mcp/{server}``, ``/execute``, ``/health``;
        requests for the MCP endpoints skip Starlette's middleware and routing.
        ``mounted``: the same under a mount at ``/mcp`` (``/mcp/``,
        ``/mcp/{server}``, ``/mcp/execute``, ``/mcp/health``) as a Starlette
        app; the host app routes the bare ``/mcp`` to :attr:`endpoint` and runs
        :meth:`lifespan`.
        """
        self._host_check = HostCheck(host)
        self.endpoint = _GatewayMcp(self, None)
        mcp = "" if mounted else "/mcp"
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/execute", self.execute, methods=["POST"]),
            Route(mcp or "/", self.endpoint),
        ]
        routes += [Route(f"{mcp}/{name}", _GatewayMcp(self, name)) for name in SERVERS]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
                self._http = http
                try:
                    yield
                finally:
                    sessions, self._sessions = list(self._sessions.values()), {}
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(CLOSE_TIMEOUT * 2):
                            await asyncio.gather(*(self._end(s) for s in sessions))
                    for pool in self._pools.values():
                        await pool.aclose()
                    if self.common.audit is not None:
                        await self.common.audit.aclose()

        app = Starlette(routes=routes, lifespan=lifespan)
        self.lifespan = lambda: lifespan(app)
        if mounted:
            return app
        return _Direct(self, app, {"/mcp": None, **{f"/mcp/{name}": name for name in SERVERS}})


class _Direct:
    """The standalone app: MCP requests straight to the gateway, the rest to Starlette."""

    def __init__(self, gateway: Gateway, app: ASGIApp, paths: dict[str, str | None]) -> None:
        self.gateway = gateway
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            try:
                await self.gateway.handle_mcp(scope, receive, send, self.paths[scope["path"]])
            except Exception:
                # What Starlette's error middleware would do: log, and a 500 if nothing was sent.
                log.exception("gateway: %s %s failed", scope["method"], scope["path"])
                with contextlib.suppress(Exception):
                    await _send(send, 500, _rpc_error(None, -32603, "Internal error"))
            return
        await self.app(scope, receive, send)


class _GatewayMcp:
    """The ASGI endpoint of ``/mcp`` (``only`` None) or ``/mcp/{only}``."""

    def __init__(self, gateway: Gateway, only: str | None) -> None:
        self.gateway = gateway
        self.only = only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.handle_mcp(scope, receive, send, self.only)
