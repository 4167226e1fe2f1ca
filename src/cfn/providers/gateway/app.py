"""The LLM gateway's HTTP app: every agent's LLM call, through one service.

Endpoints (what Claude Code, the official SDKs and OpenAI-compatible tools call):

``POST /v1/messages``               Anthropic Messages, JSON or SSE (``stream: true``)
``POST /v1/messages/count_tokens``  Anthropic token count (an estimate)
``POST /v1/chat/completions``       OpenAI Chat Completions, JSON or SSE chunks
``GET  /v1/models``                 the routes this token may use (OpenAI list format)
``GET|HEAD /api/hello``             Claude Code's start-up probe
``GET  /healthz``                   liveness, no token

Every request but the last two carries the agent's token (``x-api-key`` or
``Authorization: Bearer``, cfn.providers.gateway.tokens). The token fixes the
task, the agent and its route, and is spent once cfn has recorded its agent done
or failed (the task's ``agents`` rows, which agents cannot write), so a token
copied out of a finished agent is worth nothing. The request's
``model`` only matters when it names ``provider:model`` of a provider the token
allows. The call then goes through ``LLMService``: admission against the task
budget, the route's fallback chain with Retry-After, the budget charged as a
stream grows (and the stream stopped when it is spent), the call recorded by the
gateway (``llm_calls``, an ``llm:call`` event, the Redis ledger), never by the
agent.
Either wire format reaches either kind of provider: both are translated to
cfn's own ``ChatRequest`` and back.

Errors are one JSON body in the caller's wire format; once a stream has
started, an error is its last event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cfn.errors import (
    AuthError,
    BudgetExceededError,
    CfnError,
    ConfigError,
    ForbiddenError,
    InvalidInputError,
    PayloadTooLargeError,
    ProviderError,
    ProviderRequestError,
)
from cfn.providers.clients.base import estimate_tokens
from cfn.providers.gateway import anthropic_wire, openai_wire
from cfn.providers.gateway.tokens import LlmClaims, LlmTokenAuthority, token_from_headers
from cfn.providers.routes import parse_route
from cfn.providers.service import LLMService
from cfn.providers.types import ChatRequest, ChatResponse, StreamEvent
from cfn.store.repository import Store

log = logging.getLogger(__name__)

#: Agent statuses (table ``agents``) that spend the agent's token.
ENDED = frozenset({"done", "failed"})
#: How long the gateway trusts its read of which agents of a task have ended.
ENDED_TTL = 1.0
#: Tasks whose reads it keeps (more are forgotten at once, then read again).
ENDED_TASKS = 1000
#: A Claude Code request with a long conversation is a few MB; this is far above it.
MAX_BODY = 32 * 1024 * 1024
SERVICE = "cfn-llm-gateway"
ROUTE_HEADER = "x-cfn-route"
DEEP = "the request body is nested too deeply"


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error, decided once for both wire formats.

    Errors the caller cannot fix by retrying are 4xx so that SDKs and Claude
    Code (which retry 429 and 5xx) do not retry them: an exhausted task budget
    is 402, a misconfigured provider 400 with the variable to set.
    """
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, BudgetExceededError):
        return 402
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, InvalidInputError | ConfigError | ProviderRequestError):
        return 400
    if isinstance(exc, ProviderError):
        return 502
    return 500


class LlmGateway:
    """The gateway over one ``LLMService`` and one token authority."""

    def __init__(
        self,
        service: LLMService,
        authority: LlmTokenAuthority,
        store: Store | None = None,
    ) -> None:
        self.service = service
        self.authority = authority
        #: The task records (``agents``): a token of an agent that cfn has recorded
        #: done or failed is spent. Not Redis's completion list, which agents can write
        #: (one could push a sibling's entry and lock it out). None: tokens end only
        #: by expiring.
        self.store = store
        self._ended: dict[str, tuple[float, frozenset[str]]] = {}
        #: Run by ``aclose`` (what ``build_gateway`` opened for it).
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.asgi = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/api/hello", self._hello, methods=["GET", "HEAD"]),
                Route("/healthz", self._health, methods=["GET"]),
            ]
        )

    async def aclose(self) -> None:
        """Close what the gateway was built on (its closers), else its service."""
        if not self.closers:
            await self.service.aclose()
        for close in self.closers:
            await close()

    # --- the common part -----------------------------------------------------------------

    async def _claims(self, request: Request) -> LlmClaims:
        token = token_from_headers(
            request.headers.get("x-api-key"), request.headers.get("authorization")
        )
        claims = self.authority.verify(token)
        if claims.agent_id in await self._ended_agents(claims.task_id):
            raise AuthError(
                f"the token of agent {claims.agent_id!r} of task {claims.task_id!r} is spent: "
                "that agent has ended (a token ends with its agent's work)"
            )
        return claims

    async def _ended_agents(self, task_id: str) -> frozenset[str]:
        """The agents of ``task_id`` cfn has recorded done or failed, read at most once a
        second per task (a spent token works for up to that second more)."""
        if self.store is None:
            return frozenset()
        now = time.monotonic()
        cached = self._ended.get(task_id)
        if cached is not None and now - cached[0] < ENDED_TTL:
            return cached[1]
        store = self.store
        try:
            rows = await asyncio.to_thread(store.list_agents, task_id)
        except CfnError as exc:  # the store away: the call's own recording will say so
            log.warning("the gateway could not read %s's agents: %s", task_id, exc)
            return cached[1] if cached is not None else frozenset()
        found = frozenset(r.agent_id for r in rows if r.status in ENDED)
        if len(self._ended) > ENDED_TASKS:
            self._ended.clear()
        self._ended[task_id] = (now, found)
        return found

    async def _body(self, request: Request) -> object:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise PayloadTooLargeError(f"request body over {MAX_BODY} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise PayloadTooLargeError(f"request body over {MAX_BODY} bytes")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidInputError(f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidInputError(DEEP) from None

    def _route(self, claims: LlmClaims, requested: str) -> tuple[str, str]:
        """The route of this call: the token's, or ``provider:model`` it allows."""
        if ":" in requested:
            try:
                route = parse_route(requested)
            except InvalidInputError:
                return claims.provider, claims.model
            if route.provider in claims.providers:
                return route.provider, route.model
            if route.provider in self.service.table.specs:
                raise ForbiddenError(
                    f"agent {claims.agent_id!r} of task {claims.task_id!r} may not use provider "
                    f"{route.provider!r}; its token allows {', '.join(claims.providers)}"
                )
        return claims.provider, claims.model

    def _call(
        self, claims: LlmClaims, chat: ChatRequest, requested: str
    ) -> tuple[Callable[[], Awaitable[ChatResponse]], Callable[[], AsyncIterator[StreamEvent]]]:
        provider, model = self._route(claims, requested)

        def complete() -> Awaitable[ChatResponse]:
            return self.service.complete(
                chat,
                agent_id=claims.agent_id,
                task_id=claims.task_id,
                provider=provider,
                model=model,
            )

        def stream() -> AsyncIterator[StreamEvent]:
            return self.service.stream(
                chat,
                agent_id=claims.agent_id,
                task_id=claims.task_id,
                provider=provider,
                model=model,
            )

        return complete, stream

    # --- Anthropic Messages ----------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        try:
            claims = await self._claims(request)
            chat, options = anthropic_wire.parse_messages(await self._body(request))
            complete, stream = self._call(claims, chat, options.model)
            message_id = f"msg_{uuid.uuid4().hex[:24]}"
            if not options.stream:
                reply = await complete()
                return JSONResponse(
                    anthropic_wire.message_json(reply, options.model, message_id),
                    headers={ROUTE_HEADER: f"{reply.provider}:{reply.model}"},
                )
            events = stream()
            first = await anext(events)
        except CfnError as exc:
            return _anthropic_error(exc)
        except RecursionError:
            return _anthropic_error(InvalidInputError(DEEP))
        body = _anthropic_sse(
            events, first, options.model, message_id, estimate_tokens(chat.text_size())
        )
        return StreamingResponse(body, media_type="text/event-stream", headers=_sse_headers())

    async def _count_tokens(self, request: Request) -> Response:
        try:
            await self._claims(request)
            chat = anthropic_wire.parse_count_tokens(await self._body(request))
        except CfnError as exc:
            return _anthropic_error(exc)
        return JSONResponse(anthropic_wire.count_tokens_json(estimate_tokens(chat.text_size())))

    # --- OpenAI Chat Completions -----------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        try:
            claims = await self._claims(request)
            chat, options = openai_wire.parse_chat(await self._body(request))
            complete, stream = self._call(claims, chat, options.model)
            completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            if not options.stream:
                reply = await complete()
                body = openai_wire.completion_json(reply, reply.model, completion_id, created)
                body["cfn"] = _accounting(reply)
                return JSONResponse(body, headers={ROUTE_HEADER: f"{reply.provider}:{reply.model}"})
            events = stream()
            first = await anext(events)
        except CfnError as exc:
            return _openai_error(exc)
        except RecursionError:
            return _openai_error(InvalidInputError(DEEP))
        chunks = _openai_sse(events, first, options.model, completion_id, created, options)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_sse_headers())

    async def _models(self, request: Request) -> Response:
        try:
            claims = await self._claims(request)
        except CfnError as exc:
            return _openai_error(exc)
        data = [
            {"id": f"{claims.provider}:{claims.model}", "object": "model", "owned_by": "cfn"},
            *(
                {"id": name, "object": "model", "owned_by": "cfn"}
                for name in claims.providers
                if name != claims.provider
            ),
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _hello(self, request: Request) -> Response:
        return JSONResponse({"service": SERVICE})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "service": SERVICE})


def _sse_headers() -> dict[str, str]:
    return {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _accounting(reply: ChatResponse) -> dict[str, Any]:
    """cfn's extension to a reply: what the gateway charged and how it got there."""
    return {
        "provider": reply.provider,
        "model": reply.model,
        "offline": reply.offline,
        "cost_usd": reply.cost_usd,
        "latency_ms": round(reply.latency_ms, 3),
        "hops": [h.describe() for h in reply.hops],
    }


def _anthropic_error(exc: CfnError) -> Response:
    status = status_of(exc)
    kind = anthropic_wire.error_kind(status)
    return JSONResponse(anthropic_wire.error_json(kind, str(exc)), status_code=status)


def _openai_error(exc: CfnError) -> Response:
    status = status_of(exc)
    return JSONResponse(openai_wire.error_json(status, str(exc)), status_code=status)


async def _anthropic_sse(
    events: AsyncIterator[StreamEvent],
    first: StreamEvent,
    model: str,
    message_id: str,
    input_estimate: int,
) -> AsyncIterator[bytes]:
    stream = anthropic_wire.MessageStream()
    yield stream.start(model, message_id, max(1, input_estimate))
    event: StreamEvent | None = first
    try:
        while event is not None:
            if event.kind == "done" and event.response is not None:
                yield stream.finish(event.response)
                return
            yield stream.event(event)
            event = await anext(events, None)
    except CfnError as exc:
        status = status_of(exc)
        yield stream.error(anthropic_wire.error_kind(status), str(exc))
    finally:
        await _close(events)


async def _openai_sse(
    events: AsyncIterator[StreamEvent],
    first: StreamEvent,
    model: str,
    completion_id: str,
    created: int,
    options: openai_wire.ChatOptions,
) -> AsyncIterator[bytes]:
    stream = openai_wire.ChunkStream()
    yield stream.start(model, completion_id, created)
    event: StreamEvent | None = first
    try:
        while event is not None:
            if event.kind == "done" and event.response is not None:
                yield stream.finish(event.response, options.include_usage)
                return
            yield stream.event(event)
            event = await anext(events, None)
    except CfnError as exc:
        kind = openai_wire.error_json(status_of(exc), str(exc))["error"]["type"]
        yield stream.error(kind, str(exc))
    finally:
        await _close(events)


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
