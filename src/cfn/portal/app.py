"""The portal: REST API (FastAPI), live events (Socket.IO ``/cfn-loop``), dashboard.

One ASGI app: ``socketio.ASGIApp`` serves ``/socket.io/`` and hands every
other request to FastAPI. :class:`Portal` owns the shared parts (settings,
SQL store, Redis manager, signing key, metrics, the optional in-process
worker); :func:`cfn.portal.server.serve` runs it under uvicorn.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import socketio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from cfn import keys
from cfn._version import __version__
from cfn.coordination.connection import RedisManager, mask_url
from cfn.errors import (
    AuthError,
    CfnError,
    ConflictError,
    DatabaseError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    RedisUnavailableError,
)
from cfn.loop.state import MAX_EPIC, TaskOptions
from cfn.loop.worker import Worker, queue_info, submit_task
from cfn.loop.workspace import is_build_task
from cfn.portal import views
from cfn.portal.auth import LEEWAY, Principal, Verifier, load_secret, mint_token, read_login_code
from cfn.portal.feed import task_events
from cfn.portal.live import HeartbeatWatch, TaskListWatch
from cfn.portal.live import stop as stop_watch
from cfn.portal.metrics import PortalMetrics
from cfn.providers.gateway.server import build_gateway
from cfn.settings import Settings
from cfn.store.repository import Store
from cfn.store.status import StatusReader

if TYPE_CHECKING:
    from cfn.mcp.gateway import Gateway

log = logging.getLogger(__name__)

NAMESPACE = "/cfn-loop"
#: The dashboard's task list, queue and workers (auth ``{token}``): ``tasks:update``.
TASKS_NAMESPACE = "/cfn-tasks"
TASKS_ROOM = "people"
STATIC = Path(str(resources.files("cfn.portal") / "static"))
ERROR_CODES: list[tuple[type[BaseException], int, str]] = [
    (AuthError, 401, "unauthorized"),
    (ForbiddenError, 403, "forbidden"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (InvalidInputError, 400, "invalid_input"),
    (RedisUnavailableError, 503, "redis_unavailable"),
    (DatabaseError, 503, "database_unavailable"),
]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def classify(exc: BaseException) -> tuple[int, str]:
    for kind, status, code in ERROR_CODES:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


# --- request bodies -----------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TaskCreate(_Body):
    """POST /api/tasks/create: a CFN Loop run (the seed's orchestrate.sh flags)."""

    epic: str = Field(min_length=1, max_length=MAX_EPIC, description="What the team should do.")
    mode: Literal["mvp", "standard", "enterprise"] = "standard"
    complexity: Literal["low", "medium", "high"] | None = None
    cost_sensitive: StrictBool = False
    decision: Literal["policy", "agent", "human"] = "policy"
    task_id: str | None = Field(default=None, description="Default: generated.")
    implementers: StrictInt | None = Field(default=None, ge=1, le=50)
    validators: StrictInt | None = Field(default=None, ge=1, le=50)
    max_iterations: StrictInt | None = Field(default=None, ge=1, le=100)
    provider: str | None = Field(default=None, description="Force every agent onto it.")


class DecisionBody(_Body):
    decision: Literal["PROCEED", "ITERATE", "ABORT"]
    reason: str = Field(default="", max_length=2000)


class SpawnBody(_Body):
    """POST /api/agents/spawn: one more agent on a task (the seed's spawn-agent.sh)."""

    agentId: str = Field(min_length=1, max_length=128)
    taskId: str = Field(min_length=1, max_length=128)
    role: Literal["implementer", "validator"] = "implementer"
    provider: str | None = None


class LoginBody(_Body):
    code: str = Field(min_length=1, max_length=1000, description="From the printed link.")


class TokenBody(_Body):
    sub: str = Field(min_length=1, max_length=128)
    role: Literal["agent", "operator", "admin"] = "agent"
    task_id: str | None = None
    ttl: StrictInt | None = Field(default=None, ge=1, le=30 * 24 * 3600)


# --- the portal -----------------------------------------------------------------------


class _OneLine(logging.Filter):
    """Engine.IO logs a client's bad packet as an exception with its traceback; here it
    becomes one line naming the exception, at most one a second (with a count)."""

    def __init__(self) -> None:
        super().__init__()
        self._reported_at = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        self._held += 1
        now = time.monotonic()
        if now - self._reported_at < 1.0:
            return False
        error = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {type(error).__name__} (x{self._held})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        self._reported_at, self._held = now, 0
        return True


#: Engine.IO's log: its exceptions (a client's malformed packets) as short lines.
_ENGINEIO_LOG = logging.getLogger("cfn.portal.engineio")
_ENGINEIO_LOG.setLevel(logging.ERROR)  # what engineio_logger=False gives its own logger
_ENGINEIO_LOG.addFilter(_OneLine())

#: What a client may send: CONNECT, DISCONNECT, EVENT, ACK and their binary kinds
#: (python-socketio raises, and Engine.IO logs a traceback, for anything else).
_CLIENT_PACKETS = frozenset({0, 1, 2, 3, 5, 6})


class _SocketServer(socketio.AsyncServer):  # type: ignore[misc]  # socketio has no types
    """The Socket.IO server, dropping packets that do not decode.

    python-socketio decodes a packet inside Engine.IO's message handler, which logs a
    failure as a full traceback: a client sending ``40/cfn-loop,{bad`` a hundred times
    wrote half a megabyte of them. Here such a packet reaches no handler and costs at
    most one short warning a second, however many arrive. (Closing the sender's session
    from inside this handler stalls Engine.IO's polling transport, so it is not done.)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropped = 0
        self._unreported = 0
        self._reported_at = 0.0

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, str) and eio_sid not in self._binary_packet:
            try:
                pkt = self.packet_class(encoded_packet=data)
                if pkt.packet_type not in _CLIENT_PACKETS:
                    raise ValueError(f"packet type {pkt.packet_type!r}")
                if pkt.packet_type in (2, 5) and not (  # an event: [name, *args]
                    isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
                ):
                    raise ValueError("an event without a name")
            except (ValueError, TypeError, IndexError, RecursionError) as exc:
                self._drop(len(data), type(exc).__name__)
                return
        await super()._handle_eio_message(eio_sid, data)

    def _drop(self, size: int, why: str) -> None:
        self.dropped += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at >= 1.0:
            log.warning(
                "dropped %d malformed Socket.IO packet(s) (the last: %d bytes, %s)",
                self._unreported,
                size,
                why,
            )
            self._unreported = 0
            self._reported_at = now


class Portal:
    """The portal's shared state and its ASGI app."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: RedisManager | None = None,
        store: Store | None = None,
        worker: bool | None = None,
    ) -> None:
        self.settings = settings
        self.secret = load_secret(settings)
        self.verify = Verifier(self.secret)
        self.redis = redis or RedisManager.from_settings(settings)
        self.store = store or Store.open(settings)
        self.metrics = PortalMetrics(self.store)
        self.status_reader = StatusReader(self.store)
        self.started = time.time()
        self.with_worker = settings.cfn_portal_worker if worker is None else worker
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._feeds: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Pushed heartbeats: one watch per task with clients, shared through a room.
        self._beats: dict[str, tuple[HeartbeatWatch, asyncio.Task[None]]] = {}
        self._beat_clients: dict[str, str] = {}  # sid -> task id
        # Pushed task list: one watch while any dashboard is connected.
        self._list_watch: tuple[TaskListWatch, asyncio.Task[None]] | None = None
        self._list_clients: dict[str, Principal] = {}
        self._list_expiry: dict[str, asyncio.TimerHandle] = {}
        self.sio = _SocketServer(async_mode="asgi", logger=False, engineio_logger=_ENGINEIO_LOG)
        self.gateway: Gateway | None = None
        self.gateway_app: ASGIApp | None = None
        self._gateway_stack: contextlib.AsyncExitStack | None = None
        if self._mount_mcp():
            self.gateway, self.gateway_app = self._build_gateway()
        # The LLM gateway, mounted at /llm (ANTHROPIC_BASE_URL=http://HOST:PORT/llm).
        self.llm = build_gateway(settings, redis=self.redis, store=self.store)
        self.api = self._build_api()
        self._register_socket()
        self.asgi = socketio.ASGIApp(self.sio, other_asgi_app=self.api)

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        gateway = self.gateway
        if gateway is not None and gateway.lifespan is not None and self._gateway_stack is None:
            # Starlette never runs a mounted app's lifespan: the gateway's (its HTTP
            # client, the MCP session managers, the audit writer) runs here, with ours.
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(gateway.lifespan())
            self._gateway_stack = stack
        if self.with_worker and self.worker is None:
            self.worker = Worker(self.settings, self.redis, self.store)
            self._worker_task = asyncio.create_task(self.worker.run())

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for task in [*self._feeds.values(), *self._background]:
            task.cancel()
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        for task in [*self._feeds.values(), *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _watch, task in list(self._beats.values()):
            await stop_watch(task)
        self._beats.clear()
        if self._list_watch is not None:
            await stop_watch(self._list_watch[1])
            self._list_watch = None
        await self.llm.aclose()
        if self._gateway_stack is not None:
            stack, self._gateway_stack = self._gateway_stack, None
            try:
                await stack.aclose()  # ends upstream sessions, flushes the audit into the store
            except Exception:
                log.exception("closing the MCP gateway failed")
        await self.redis.close()
        self.status_reader.close()
        self.store.close()

    def _spawn_background(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- auth ---------------------------------------------------------------------------

    def principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("no token: send 'Authorization: Bearer <token>' (mint one: cfn token)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return self.verify(token)

    # --- REST -----------------------------------------------------------------------------

    def _build_api(self) -> FastAPI:
        api = FastAPI(
            title="cfn portal",
            version=__version__,
            description="The CFN Loop's orchestrator service: agents, tasks, decisions, "
            "metrics. Every /api endpoint needs 'Authorization: Bearer <JWT>' "
            "(mint one with `cfn token`). Live events: Socket.IO namespace /cfn-loop.",
        )
        portal = self

        async def who(request: Request) -> Principal:
            return portal.principal(request.headers.get("authorization"))

        Who = Annotated[Principal, Depends(who)]

        @api.exception_handler(CfnError)
        async def cfn_error(_request: Request, exc: CfnError) -> JSONResponse:
            status, code = classify(exc)
            if status in (401, 403):
                portal.metrics.auth_failures.labels(str(status)).inc()
            if status >= 500:
                log.warning("portal: %s", exc)
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse(error_body(code, str(exc)), status_code=status, headers=headers)

        @api.exception_handler(RequestValidationError)
        async def bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
            problems = [
                f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: "
                f"{err.get('msg')}"
                for err in exc.errors()
            ]
            return JSONResponse(
                error_body("invalid_body", "; ".join(problems) or "invalid request body"),
                status_code=422,
            )

        @api.exception_handler(StarletteHTTPException)
        async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            return JSONResponse(
                error_body(code, str(exc.detail)),
                status_code=exc.status_code,
                headers=getattr(exc, "headers", None),
            )

        @api.middleware("http")
        async def measure(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            began = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            name = getattr(route, "path", "unmatched")
            portal.metrics.latency.labels(name).observe(time.perf_counter() - began)
            portal.metrics.requests.labels(name, request.method, str(response.status_code)).inc()
            return response

        # --- dashboard ---

        @api.get("/", include_in_schema=False)
        async def dashboard() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

        api.mount("/static", StaticFiles(directory=STATIC), name="static")

        @api.get("/api/ping", tags=["monitoring"], summary="Liveness, no auth (bare endpoint)")
        async def ping() -> dict[str, bool]:
            return {"ok": True}

        # --- agents ---

        @api.post("/api/agents/spawn", status_code=202, tags=["agents"])
        async def spawn(body: SpawnBody, me: Who) -> dict[str, Any]:
            """Start one more agent on a task (operator, admin)."""
            me.require("operator", "admin")
            return await portal.spawn_agent(body, me)

        @api.get("/api/agents/{taskId}", tags=["agents"])
        async def task_agents(taskId: str, me: Who) -> dict[str, Any]:
            """A task's agents: status, provider, confidence, heartbeat."""
            keys.validate_id(taskId, "task id")
            me.require_task(taskId)
            if not await views.task_exists(portal.store, portal.redis, taskId):
                raise NotFoundError(f"no task {taskId!r}")
            return {
                "taskId": taskId,
                "agents": await views.agents(portal.store, portal.redis, taskId),
            }

        @api.delete("/api/agents/{agentId}", status_code=202, tags=["agents"])
        async def stop_agent(
            agentId: str,
            me: Who,
            taskId: Annotated[str | None, Query()] = None,
        ) -> dict[str, Any]:
            """Stop an agent (operator, admin); ?taskId= when the id is in several tasks."""
            me.require("operator", "admin")
            return await portal.stop_agent(agentId, taskId, me)

        # --- tasks ---

        @api.get("/api/tasks", tags=["tasks"])
        async def tasks(me: Who, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
            """Newest tasks first (an agent token sees its own task only)."""
            found = await views.list_tasks(portal.store, limit)
            if me.role == "agent":
                found = [t for t in found if t["taskId"] == me.task_id]
            return {"tasks": found}

        @api.post("/api/tasks/create", status_code=202, tags=["tasks"])
        async def create_task(body: TaskCreate, me: Who) -> dict[str, Any]:
            """Queue a CFN Loop run for the orchestrator workers (operator, admin)."""
            me.require("operator", "admin")
            return await portal.create_task(body)

        @api.get(
            "/api/tasks/{taskId}/status",
            tags=["tasks"],
            response_class=JSONResponse,
            openapi_extra={
                "parameters": [
                    {"name": "taskId", "in": "path", "required": True, "schema": {"type": "string"}}
                ]
            },
        )
        async def task_status(request: Request) -> JSONResponse:
            """Everything about one task: iterations, gate, consensus, agents, decisions."""
            # The token check of `Who` and the path parameter, read directly: this is the
            # endpoint scripts and dashboards call most, and FastAPI's parameter and
            # dependency solving cost per request more than the check itself (profiled).
            me = portal.principal(request.headers.get("authorization"))
            taskId = keys.validate_id(request.path_params.get("taskId"), "task id")
            me.require_task(taskId)
            # Plain JSON values already: straight to json.dumps, not FastAPI's encoder.
            return JSONResponse(await views.task_status(portal.status_reader, portal.redis, taskId))

        @api.post("/api/tasks/{taskId}/decision", status_code=202, tags=["tasks"])
        async def decide(taskId: str, body: DecisionBody, me: Who) -> dict[str, Any]:
            """The product owner's PROCEED / ITERATE / ABORT for a task awaiting one."""
            me.require("operator", "admin")
            return await portal.decide(taskId, body, me)

        # --- monitoring ---

        @api.get("/api/metrics/agents", tags=["monitoring"])
        async def metrics_agents(me: Who) -> dict[str, Any]:
            me.require("operator", "admin")
            return await views.agent_metrics(portal.store)

        @api.get("/api/metrics/tasks", tags=["monitoring"])
        async def metrics_tasks(me: Who) -> dict[str, Any]:
            me.require("operator", "admin")
            data = await views.task_metrics(portal.store)
            info = await queue_info(portal.redis)
            data["queue"] = {
                "length": info.length,
                "running": info.pending,
                "waiting": info.lag,
                "workers": info.workers,
            }
            return data

        @api.get("/api/health/system", tags=["monitoring"])
        async def health(me: Who) -> JSONResponse:
            """Redis, the database and the workers (200 when all answer, else 503)."""
            return await portal.health(me)

        @api.get("/metrics", tags=["monitoring"], summary="Prometheus metrics (operator, admin)")
        async def prometheus(me: Who) -> Response:
            me.require("operator", "admin")
            text = generate_latest(portal.metrics.registry)
            return Response(text, media_type=CONTENT_TYPE_LATEST)

        @api.post("/api/login", tags=["auth"], response_class=JSONResponse)
        async def login(body: LoginBody) -> JSONResponse:
            """Exchange a dashboard link's login code (single use, short-lived) for a token."""
            found = await portal.login(body.code)
            return JSONResponse(found, headers={"Cache-Control": "no-store"})

        @api.post("/api/tokens", status_code=201, tags=["auth"])
        async def tokens(body: TokenBody, me: Who) -> dict[str, Any]:
            """Mint a token (admin): the seed's generate_agent_token."""
            me.require("admin")
            ttl = body.ttl or portal.settings.cfn_portal_token_ttl
            token = mint_token(portal.secret, body.sub, body.role, body.task_id, ttl)
            return {"token": token, "expiresIn": ttl}

        # --- the MCP gateway (its own tokens, checked by the gateway) ---

        gateway, gateway_app = portal.gateway, portal.gateway_app
        if gateway is not None and gateway.endpoint is not None and gateway_app is not None:
            api.router.routes.append(Route("/mcp", gateway.endpoint))
            api.mount("/mcp", gateway_app, name="mcp")

        # --- the LLM gateway (agents' tokens, checked by the gateway) ---

        api.mount("/llm", portal.llm.asgi, name="llm")

        return api

    # --- the MCP gateway ------------------------------------------------------------------

    def _mount_mcp(self) -> bool:
        mode = self.settings.cfn_portal_mcp
        if mode != "auto":
            return mode == "on"
        # "Configured": a signing secret in the environment, or `cfn mcp up` has run here.
        return (
            self.settings.mcp_auth_token is not None
            or (self.settings.state_dir / "mcp" / "servers.json").exists()
        )

    def _build_gateway(self) -> "tuple[Gateway, ASGIApp]":
        """The MCP gateway and its app for the mount at /mcp, auditing into our store."""
        from cfn.mcp.audit import AuditLog, audit_path
        from cfn.mcp.base import Common
        from cfn.mcp.gateway import Gateway
        from cfn.mcp.routing import skill_mapping
        from cfn.mcp.tokens import TokenAuthority

        settings = self.settings
        common = Common(
            authority=TokenAuthority.from_settings(settings),
            mapping=skill_mapping(settings),
            audit=AuditLog(audit_path(settings), via="gateway", store=self.store),
        )
        gateway = Gateway(settings, common)
        return gateway, gateway.app(host=settings.cfn_portal_host, mounted=True)

    # --- actions ----------------------------------------------------------------------

    async def create_task(self, body: TaskCreate) -> dict[str, Any]:
        from cfn.loop.app import check_provider, default_workspace, new_task_id

        check_provider(self.settings, body.provider)

        # An empty task_id is a bad id, not "generate one" (omit it for that).
        task_id = new_task_id() if body.task_id is None else body.task_id
        keys.validate_id(task_id, "task id")
        options = TaskOptions(
            task_id=task_id,
            epic=body.epic,
            mode=body.mode,
            complexity=body.complexity,
            cost_sensitive=body.cost_sensitive,
            decision=body.decision,
            implementers=body.implementers,
            validators=body.validators,
            max_iterations=body.max_iterations,
            provider=body.provider,
            workspace=str(default_workspace(self.settings, task_id)),
            build=is_build_task(body.epic),
        )
        await submit_task(self.redis, self.store, options)
        self.metrics.tasks_submitted.inc()
        return {
            "taskId": task_id,
            "status": "queued",
            "statusUrl": f"/api/tasks/{task_id}/status",
            "dashboard": f"/#task={task_id}",
        }

    async def login(self, code: str) -> dict[str, Any]:
        """A session token for a login code, once: the code's nonce is then marked used."""
        found = read_login_code(self.secret, code)
        key = keys.login_code_used(found.nonce)
        keep_ms = max(1, round((found.exp + LEEWAY - time.time()) * 1000))
        fresh = await self.redis.run(lambda r: r.set(key, "1", nx=True, px=keep_ms))
        if not fresh:
            raise AuthError(
                "this login link was used already (each works once): print a new one with "
                "`cfn portal link`, or paste a token from `cfn token`"
            )
        ttl = found.session_ttl
        token = mint_token(self.secret, found.sub, found.role, None, ttl)
        return {"token": token, "expiresIn": ttl, "sub": found.sub, "role": found.role}

    async def decide(self, task_id: str, body: DecisionBody, me: Principal) -> dict[str, Any]:
        from cfn.loop.app import submit_decision

        keys.validate_id(task_id, "task id")
        status = await views.task_status(self.status_reader, self.redis, task_id)  # 404 first
        if not status["awaitingDecision"]:
            raise ConflictError(
                f"task {task_id!r} is not waiting for a decision (status {status['status']}"
                + (f", phase {status['phase']}" if status.get("phase") else "")
                + "); only a task run with decision=human waits for one"
            )
        try:
            iteration = await submit_decision(
                self.redis, task_id, body.decision, f"human:{me.sub}", body.reason
            )
        except InvalidInputError:
            raise
        except CfnError as exc:  # raced with another decision
            raise ConflictError(str(exc)) from None
        return {"taskId": task_id, "decision": body.decision, "iteration": iteration}

    async def spawn_agent(self, body: SpawnBody, me: Principal) -> dict[str, Any]:
        from cfn.loop.app import check_provider, join_agent

        task_id = keys.validate_id(body.taskId, "task id")
        agent_id = keys.validate_id(body.agentId, "agent id")
        if body.provider is not None:
            keys.validate_id(body.provider, "provider")
        check_provider(self.settings, body.provider)
        team, row, handle = await join_agent(
            self.settings,
            self.redis,
            self.store,
            task_id,
            agent_id,
            body.role,
            provider=body.provider,
            by=me.sub,
        )
        self._spawn_background(team.follow(row, handle))
        return {
            "agentId": agent_id,
            "taskId": task_id,
            "status": "running",
            "pid": handle.pid,
            "provider": handle.provider,
            "model": handle.model,
            "name": f"cfn-agent-{agent_id}-{task_id}",
        }

    async def stop_agent(self, agent_id: str, task_id: str | None, me: Principal) -> dict[str, Any]:
        from cfn.loop.app import stopper_for, team_for

        keys.validate_id(agent_id, "agent id")
        if task_id is not None:
            keys.validate_id(task_id, "task id")
        rows = await views.find_agent_tasks(self.store, agent_id)
        if task_id is not None:
            rows = [r for r in rows if r.task_id == task_id]
        if not rows:
            where = f" in task {task_id!r}" if task_id else ""
            raise NotFoundError(f"no agent {agent_id!r}{where}")
        if len(rows) > 1:
            raise ConflictError(
                f"agent id {agent_id!r} is used by {len(rows)} tasks "
                f"({', '.join(r.task_id for r in rows)}); add ?taskId= to say which"
            )
        row = rows[0]
        reason = f"stopped through the portal by {me.sub}"
        if row.status not in ("running", "pending"):
            return {
                "agentId": agent_id,
                "taskId": row.task_id,
                "stopped": False,
                "status": row.status,
                "message": f"agent already {row.status}",
            }
        team = team_for(self.redis, self.store)
        _killed, process = await team.stop(row, reason, stopper_for(self.settings))
        return {
            "agentId": agent_id,
            "taskId": row.task_id,
            "stopped": True,
            "status": "killed",
            "process": process,
        }

    async def health(self, me: Principal) -> JSONResponse:
        """This portal's view (its Redis server, its database, the workers) and the whole
        system's (``cfn health``), with one ping each: the system report's."""
        from cfn.health import Check, check_system

        serving = Check("portal", "ok", "answering this request")
        system = await check_system(self.settings, portal=serving)
        checks: dict[str, Any] = {}
        redis = system.check("redis")
        fallback = self.settings.redis_fallback_1
        if self.redis.has_fallback and fallback and self.redis.active_label == mask_url(fallback):
            # This portal works on the fallback: its server is not the one the report pinged.
            began = time.perf_counter()
            try:
                await self.redis.run(lambda r: r.ping())
                checks["redis"] = {"ok": True, "ms": round((time.perf_counter() - began) * 1000, 2)}
            except CfnError as exc:
                checks["redis"] = {"ok": False, "error": str(exc)}
        elif redis.status == "error":
            checks["redis"] = {"ok": False, "error": redis.detail}
        else:
            checks["redis"] = {"ok": True, "ms": redis.latency_ms}
        if checks["redis"]["ok"]:
            checks["redis"]["server"] = self.redis.active_label
        database = system.check("database")
        if database.status == "error":
            checks["database"] = {"ok": False, "error": database.detail}
        else:
            checks["database"] = {
                "ok": True,
                "database": self.store.label,
                "ms": database.latency_ms,
            }
        healthy = checks["redis"]["ok"] and checks["database"]["ok"]
        if checks["redis"]["ok"]:
            try:
                info = await queue_info(self.redis)
                checks["workers"] = {
                    "ok": True,
                    "count": len(info.workers),
                    "inProcess": self.worker is not None,
                    "running": info.pending,
                    "waiting": info.lag,
                }
            except CfnError as exc:
                checks["workers"] = {"ok": False, "error": str(exc)}
        body = {
            "status": "ok" if healthy else "degraded",
            "version": __version__,
            "uptimeSeconds": round(time.time() - self.started, 1),
            "socketClients": len(self._feeds),
            "checks": checks,
            # cfn.health's report (`cfn health --json`): every part, not just this process's.
            "system": system.to_dict(),
            "you": {"sub": me.sub, "role": me.role, "taskId": me.task_id},
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    # --- Socket.IO ------------------------------------------------------------------------

    def _register_socket(self) -> None:
        portal = self

        async def connect(sid: str, _environ: dict[str, Any], auth: Any) -> None:
            if not isinstance(auth, dict):
                raise socketio.exceptions.ConnectionRefusedError(
                    "auth must be {taskId, token}", {"error": "unauthorized"}
                )
            try:
                me = portal.verify(auth.get("token"))
                task_id = keys.validate_id(auth.get("taskId"), "task id")
                me.require_task(task_id)
                if not await views.task_exists(portal.store, portal.redis, task_id):
                    raise NotFoundError(f"no task {task_id!r}")
            except CfnError as exc:
                status, code = classify(exc)
                if status in (401, 403):
                    portal.metrics.auth_failures.labels(str(status)).inc()
                raise socketio.exceptions.ConnectionRefusedError(
                    str(exc), {"error": code, "status": status}
                ) from None
            await portal.sio.save_session(sid, {"taskId": task_id, "sub": me.sub}, NAMESPACE)
            portal.metrics.socket_clients.inc()
            portal._feeds[sid] = asyncio.create_task(portal._pump(sid, task_id, me.exp))
            await portal._join_beats(sid, task_id)

        async def disconnect(sid: str, *_args: Any) -> None:
            task = portal._feeds.pop(sid, None)
            if task is not None:
                portal.metrics.socket_clients.dec()
                task.cancel()
            await portal._leave_beats(sid)

        async def tasks_connect(sid: str, _environ: dict[str, Any], auth: Any) -> None:
            try:
                me = portal.verify(auth.get("token") if isinstance(auth, dict) else None)
            except CfnError as exc:
                status, code = classify(exc)
                portal.metrics.auth_failures.labels(str(status)).inc()
                raise socketio.exceptions.ConnectionRefusedError(
                    str(exc), {"error": code, "status": status}
                ) from None
            portal.metrics.socket_clients.inc()
            await portal._join_list(sid, me)

        async def tasks_disconnect(sid: str, *_args: Any) -> None:
            if sid in portal._list_clients:
                portal.metrics.socket_clients.dec()
            await portal._leave_list(sid)

        self.sio.on("connect", connect, namespace=NAMESPACE)
        self.sio.on("disconnect", disconnect, namespace=NAMESPACE)
        self.sio.on("connect", tasks_connect, namespace=TASKS_NAMESPACE)
        self.sio.on("disconnect", tasks_disconnect, namespace=TASKS_NAMESPACE)

    # --- pushed heartbeats and task list ------------------------------------------------

    async def _join_beats(self, sid: str, task_id: str) -> None:
        """Put a /cfn-loop client in its task's heartbeat room; start the task's watch."""
        room = f"beats:{task_id}"
        self._beat_clients[sid] = task_id
        await self.sio.enter_room(sid, room, namespace=NAMESPACE)
        entry = self._beats.get(task_id)
        if entry is None:

            async def send(data: dict[str, Any]) -> None:
                await self.sio.emit("agent:heartbeat", data, room=room, namespace=NAMESPACE)
                self.metrics.events_sent.labels("agent:heartbeat", "false").inc()

            watch = HeartbeatWatch(self.redis, task_id, send)
            self._beats[task_id] = (watch, asyncio.create_task(watch.run()))
        elif entry[0].read_once:
            # The watch runs already: this client gets the whole current set now.
            await self.sio.emit("agent:heartbeat", entry[0].full(), to=sid, namespace=NAMESPACE)

    async def _leave_beats(self, sid: str) -> None:
        task_id = self._beat_clients.pop(sid, None)
        if task_id is None or task_id in self._beat_clients.values():
            return
        entry = self._beats.pop(task_id, None)
        if entry is not None:
            await stop_watch(entry[1])

    def _visible(self, data: dict[str, Any], me: Principal) -> dict[str, Any]:
        """The task list as ``me`` may see it: an agent token sees its own task only."""
        if me.is_person:
            return data
        return {
            "tasks": [t for t in data["tasks"] if t["taskId"] == me.task_id],
            "queue": None,
        }

    async def _send_list(self, data: dict[str, Any]) -> None:
        await self.sio.emit("tasks:update", data, room=TASKS_ROOM, namespace=TASKS_NAMESPACE)
        for sid, me in list(self._list_clients.items()):
            if not me.is_person:
                await self.sio.emit(
                    "tasks:update", self._visible(data, me), to=sid, namespace=TASKS_NAMESPACE
                )
        self.metrics.events_sent.labels("tasks:update", "false").inc()

    async def _join_list(self, sid: str, me: Principal) -> None:
        self._list_clients[sid] = me
        if me.is_person:
            await self.sio.enter_room(sid, TASKS_ROOM, namespace=TASKS_NAMESPACE)
        if self._list_watch is None:
            watch = TaskListWatch(self.redis, self.store, self._send_list)
            self._list_watch = (watch, asyncio.create_task(watch.run()))
        elif self._list_watch[0].last is not None:
            data = self._visible(self._list_watch[0].last, me)
            await self.sio.emit("tasks:update", data, to=sid, namespace=TASKS_NAMESPACE)
        # Like /cfn-loop: the connection closes when its token expires.
        self._list_expiry[sid] = asyncio.get_running_loop().call_later(
            max(0.0, me.exp + LEEWAY - time.time()),
            lambda: self._spawn_background(self.sio.disconnect(sid, namespace=TASKS_NAMESPACE)),
        )

    async def _leave_list(self, sid: str) -> None:
        self._list_clients.pop(sid, None)
        expiry = self._list_expiry.pop(sid, None)
        if expiry is not None:
            expiry.cancel()
        if not self._list_clients and self._list_watch is not None:
            watch, self._list_watch = self._list_watch, None
            await stop_watch(watch[1])

    async def _pump(self, sid: str, task_id: str, expires: int) -> None:
        """Past events, then live ones, to one client; disconnect when its token expires."""
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            max(0.0, expires - time.time()),
            lambda: self._spawn_background(self.sio.disconnect(sid, namespace=NAMESPACE)),
        )
        try:
            async for event in task_events(self.redis, self.store, task_id):
                await self.sio.emit(event.kind, event.payload(task_id), to=sid, namespace=NAMESPACE)
                self.metrics.events_sent.labels(event.kind, str(event.replay).lower()).inc()
                ts = event.data.get("ts")
                if not event.replay and isinstance(ts, int | float):
                    self.metrics.event_delay.observe(max(0.0, time.time() - ts))
        except asyncio.CancelledError:
            raise
        except CfnError as exc:
            log.warning("event feed of %s for %s stopped: %s", task_id, sid, exc)
            await self.sio.emit(
                "feed:error", error_body("feed_error", str(exc)), to=sid, namespace=NAMESPACE
            )
        finally:
            expiry.cancel()
