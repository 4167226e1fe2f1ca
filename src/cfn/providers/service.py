"""``LLMService``: the one way agents call an LLM.

Per call: route (the seed's selectProvider), admit against the task budget,
try the route's chain (retrying transient failures with backoff, honouring
Retry-After, then moving to the next provider), count tokens and cost, record
the call. Every attempt is a ``Hop`` on the response and in the call record.

A stream is retried or moved to the next provider only until its first event
has arrived: after that, text has reached the caller and a silent restart
would duplicate it, so a dropped stream is an error (with its hops).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from cfn.errors import (
    BudgetExceededError,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailableError,
)
from cfn.keys import validate_id
from cfn.profiles import AgentProfile, ProfileSet, load_profiles
from cfn.providers.clients.base import (
    ClientEvent,
    ClientResult,
    ProviderClient,
    Transient,
    estimate_tokens,
)
from cfn.providers.clients.factory import make_client
from cfn.providers.pricing import Price
from cfn.providers.router import Decision, select_provider
from cfn.providers.routes import Route, RouteTable, load_route_table
from cfn.providers.types import (
    ChatRequest,
    ChatResponse,
    Hop,
    Message,
    StreamEvent,
    TaskTraits,
    ToolCall,
    Usage,
)
from cfn.providers.usage import (
    BudgetLedger,
    CallRecord,
    Charge,
    MemoryLedger,
    UsageSink,
    record_everywhere,
)
from cfn.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Call:
    """The bookkeeping of one call while it runs."""

    task_id: str
    agent_id: str
    decision: Decision
    request: ChatRequest
    started: float
    precharged: float
    hops: list[Hop]


class LLMService:
    def __init__(
        self,
        settings: Settings,
        *,
        table: RouteTable | None = None,
        profiles: ProfileSet | None = None,
        ledger: BudgetLedger | None = None,
        sinks: Sequence[UsageSink] = (),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.table = table if table is not None else load_route_table(settings)
        self.profiles = profiles if profiles is not None else load_profiles(settings)
        self.ledger: BudgetLedger = ledger if ledger is not None else MemoryLedger()
        self.sinks: list[UsageSink] = list(sinks)
        if isinstance(self.ledger, UsageSink) and self.ledger not in self.sinks:
            self.sinks.insert(0, self.ledger)
        self.budget_usd = settings.cfn_task_budget_usd
        self._sleep = sleep
        self._clients: dict[str, ProviderClient] = {}

    # --- routing ---------------------------------------------------------------------

    def route(
        self,
        agent_id: str,
        task: TaskTraits | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
    ) -> Decision:
        return select_provider(
            agent_id,
            task or TaskTraits(),
            settings=self.settings,
            table=self.table,
            profiles=self.profiles,
            provider=provider,
            model=model,
        )

    def _client(self, provider: str) -> ProviderClient:
        client = self._clients.get(provider)
        if client is None:
            from cfn.providers.clients.wire import proxies_of

            client = make_client(
                self.table.spec(provider),
                self.settings.cfn_provider_timeout,
                proxies_of(self.settings),
            )
            self._clients[provider] = client
        return client

    def _price(self, route: Route) -> Price:
        spec = self.table.spec(route.provider)
        return self.table.prices.price(route.provider, route.model, paid=spec.paid)

    # --- the call ----------------------------------------------------------------------

    async def _begin(
        self,
        request: ChatRequest,
        agent_id: str,
        task_id: str,
        task: TaskTraits | None,
        provider: str | None,
        model: str | None,
    ) -> _Call:
        validate_id(agent_id, "agent id")
        validate_id(task_id, "task id")
        decision = self.route(agent_id, task, provider=provider, model=model)
        decision.require_callable()
        for route in decision.chain:
            self._price(route)  # an unpriced paid model fails before anything is spent
        request = apply_profile(request, decision.profile)
        if self.budget_usd is None:
            # Nothing to admit against: the call is charged once, when it is settled
            # (one ledger round trip per call instead of two).
            return _Call(task_id, agent_id, decision, request, time.perf_counter(), 0.0, [])
        estimate = self._price(decision.route).cost(Usage(estimate_tokens(request.text_size()), 0))
        admitted, spent = await self.ledger.admit(
            task_id, agent_id, Charge(cost_usd=estimate), self.budget_usd
        )
        if not admitted:
            raise BudgetExceededError(budget_message(task_id, spent, self.budget_usd))
        return _Call(task_id, agent_id, decision, request, time.perf_counter(), estimate, [])

    async def _run_chain(
        self, call: _Call, attempt: Callable[[Route, ProviderClient], Awaitable[T]]
    ) -> tuple[Route, T]:
        retries = self.settings.cfn_provider_max_retries
        for route in call.decision.chain:
            spec = self.table.spec(route.provider)
            if not spec.has_credentials:
                call.hops.append(
                    Hop(
                        route.provider,
                        route.model,
                        0,
                        "skipped_no_credentials",
                        None,
                        f"{spec.key_hint} not set",
                    )
                )
                continue
            client = self._client(route.provider)
            for number in range(1, retries + 2):
                t0 = time.perf_counter()
                try:
                    result = await attempt(route, client)
                except Transient as exc:
                    elapsed = (time.perf_counter() - t0) * 1000
                    delay = self._delay(exc, number) if number <= retries else None
                    call.hops.append(
                        Hop(
                            route.provider,
                            route.model,
                            number,
                            exc.kind,
                            exc.status_code,
                            exc.detail,
                            delay or 0.0,
                            elapsed,
                        )
                    )
                    log.warning(
                        "%s failed (%s); %s",
                        route,
                        exc.kind,
                        f"retrying in {delay:.2f}s" if delay is not None else "moving on",
                    )
                    if delay is None:
                        break
                    await self._sleep(delay)
                    continue
                except ProviderRequestError as exc:
                    elapsed = (time.perf_counter() - t0) * 1000
                    call.hops.append(
                        Hop(
                            route.provider,
                            route.model,
                            number,
                            "request_error",
                            None,
                            str(exc),
                            0.0,
                            elapsed,
                        )
                    )
                    raise
                call.hops.append(
                    Hop(
                        route.provider,
                        route.model,
                        number,
                        "ok",
                        None,
                        "",
                        0.0,
                        (time.perf_counter() - t0) * 1000,
                    )
                )
                return route, result
        raise ProviderUnavailableError(
            f"no provider could serve agent {call.agent_id!r} "
            f"(chain {' -> '.join(map(str, call.decision.chain))}): "
            + "; ".join(h.describe() for h in call.hops)
        )

    def _delay(self, exc: Transient, attempt: int) -> float | None:
        """Seconds to wait before the next attempt; None: go to the next provider now."""
        s = self.settings
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= s.cfn_retry_after_max else None
        base: float = min(s.cfn_provider_backoff_max, s.cfn_provider_backoff * 2.0 ** (attempt - 1))
        return base * (1 + random.random() * 0.1)  # jitter, so agents do not retry in step

    async def _finish(
        self,
        call: _Call,
        route: Route,
        usage: Usage,
        charged: float,
        *,
        status: str,
        streamed: bool,
        error: str | None = None,
    ) -> tuple[float, float]:
        """Settle the ledger to the exact cost, record the call; (cost, task total)."""
        cost = self._price(route).cost(usage)
        total = await self.ledger.add(
            call.task_id,
            call.agent_id,
            Charge(
                cost - charged,
                usage.input_tokens,
                usage.output_tokens,
                1 if usage.total_tokens or status == "ok" else 0,
            ),
        )
        record = CallRecord(
            task_id=call.task_id,
            agent_id=call.agent_id,
            provider=route.provider,
            model=route.model,
            offline=self.table.spec(route.provider).is_offline,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            status=status,
            streamed=streamed,
            error=error,
            hops=tuple(call.hops),
        )
        await record_everywhere(self.sinks, record)
        log.info(
            "llm call task=%s agent=%s %s status=%s tokens=%d/%d cost=$%.6f",
            call.task_id,
            call.agent_id,
            route,
            status,
            usage.input_tokens,
            usage.output_tokens,
            cost,
        )
        return cost, total

    async def _fail(self, call: _Call, exc: BaseException, streamed: bool) -> None:
        """A call that produced nothing: refund the estimate, record the failure."""
        await self._finish(
            call,
            call.decision.route,
            Usage(),
            call.precharged,
            status="error",
            streamed=streamed,
            error=str(exc)[:500],
        )

    def _response(
        self, call: _Call, route: Route, result: ClientResult, cost: float
    ) -> ChatResponse:
        return ChatResponse(
            text=result.text,
            provider=route.provider,
            model=route.model,
            usage=result.usage,
            cost_usd=cost,
            tool_calls=result.tool_calls,
            finish_reason=result.finish_reason,
            offline=self.table.spec(route.provider).is_offline,
            hops=tuple(call.hops),
            latency_ms=(time.perf_counter() - call.started) * 1000,
        )

    async def complete(
        self,
        request: ChatRequest,
        *,
        agent_id: str,
        task_id: str,
        task: TaskTraits | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> ChatResponse:
        """One whole reply. A reply that crosses the budget is kept; the next call is refused."""
        call = await self._begin(request, agent_id, task_id, task, provider, model)
        try:
            route, result = await self._run_chain(
                call, lambda r, client: client.complete(call.request, r.model)
            )
        except ProviderError as exc:
            await self._fail(call, exc, streamed=False)
            raise
        cost, _ = await self._finish(
            call, route, result.usage, call.precharged, status="ok", streamed=False
        )
        return self._response(call, route, result, cost)

    async def stream(
        self,
        request: ChatRequest,
        *,
        agent_id: str,
        task_id: str,
        task: TaskTraits | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Text and tool calls as they arrive, then ``done`` with the full response.

        With a budget set, the cost so far is charged to the task as the reply
        grows; when the task's total reaches the budget the stream is closed
        and ``BudgetExceededError`` raised, whatever other process spent it.
        """
        call = await self._begin(request, agent_id, task_id, task, provider, model)

        async def first_event(
            route: Route, client: ProviderClient
        ) -> tuple[AsyncIterator[ClientEvent], ClientEvent | None]:
            events = client.stream(call.request, route.model)
            try:
                return events, await anext(events)
            except StopAsyncIteration:
                return events, None

        try:
            route, (events, first) = await self._run_chain(call, first_event)
        except ProviderError as exc:
            await self._fail(call, exc, streamed=True)
            raise

        price = self._price(route)
        est_in = estimate_tokens(call.request.text_size())
        known: Usage | None = None
        out_chars = 0
        texts: list[str] = []
        calls: list[ToolCall] = []
        finish: str | None = None
        charged = call.precharged

        def usage_now() -> Usage:
            inp = known.input_tokens if known is not None and known.input_tokens else est_in
            out = max(known.output_tokens if known is not None else 0, estimate_tokens(out_chars))
            return Usage(inp, out)

        pending = [first] if first is not None else []
        try:
            while True:
                if pending:
                    event: ClientEvent | None = pending.pop()
                else:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    except Transient as exc:
                        call.hops.append(
                            Hop(
                                route.provider,
                                route.model,
                                0,
                                "stream_dropped",
                                exc.status_code,
                                exc.detail,
                            )
                        )
                        raise ProviderUnavailableError(
                            f"{route} dropped the stream after {out_chars} characters "
                            f"({exc.kind}: {exc.detail}); the partial reply was not retried"
                        ) from exc
                assert event is not None
                if event.kind == "text":
                    texts.append(event.text)
                    out_chars += len(event.text)
                    yield StreamEvent("text", text=event.text)
                elif event.kind == "tool_call" and event.tool_call is not None:
                    calls.append(event.tool_call)
                    out_chars += len(event.tool_call.arguments) + len(event.tool_call.name)
                    yield StreamEvent("tool_call", tool_call=event.tool_call)
                elif event.kind == "usage" and event.usage is not None:
                    known = event.usage
                elif event.kind == "finish":
                    finish = event.finish_reason
                if self.budget_usd is not None:
                    cost_now = price.cost(usage_now())
                    if cost_now > charged:
                        total = await self.ledger.add(
                            call.task_id, call.agent_id, Charge(cost_now - charged)
                        )
                        charged = cost_now
                        if total >= self.budget_usd:
                            call.hops.append(
                                Hop(
                                    route.provider,
                                    route.model,
                                    0,
                                    "budget_stopped",
                                    None,
                                    f"task total ${total:.6f}",
                                )
                            )
                            raise BudgetExceededError(
                                budget_message(call.task_id, total, self.budget_usd)
                                + f"; the reply from {route} was stopped mid-stream after "
                                f"{usage_now().output_tokens} output tokens"
                            )
        except BudgetExceededError as exc:
            await _close(events)
            await self._finish(
                call,
                route,
                usage_now(),
                charged,
                status="budget_stopped",
                streamed=True,
                error=str(exc)[:500],
            )
            raise
        except BaseException as exc:
            await _close(events)
            await self._finish(
                call,
                route,
                usage_now(),
                charged,
                status="error",
                streamed=True,
                error=str(exc)[:500] or type(exc).__name__,
            )
            raise
        final = (
            known
            if known is not None and (known.input_tokens or known.output_tokens)
            else usage_now()
        )
        final = Usage(final.input_tokens or est_in, final.output_tokens)
        cost, _ = await self._finish(call, route, final, charged, status="ok", streamed=True)
        result = ClientResult("".join(texts), tuple(calls), final, finish)
        yield StreamEvent("done", response=self._response(call, route, result, cost))

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


async def _close(events: AsyncIterator[ClientEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # closing a broken stream may fail again; the call already did
            log.debug("closing a stream failed: %s", exc)


def budget_message(task_id: str, spent: float, budget: float | None) -> str:
    return (
        f"task {task_id!r} has spent ${spent:.4f} of its ${budget or 0:.4f} LLM budget "
        "(CFN_TASK_BUDGET_USD): no further LLM calls for it; raise the budget to go on"
    )


def apply_profile(request: ChatRequest, profile: AgentProfile | None) -> ChatRequest:
    """Fill what the request leaves open from the agent's profile."""
    if profile is None:
        return request
    changes: dict[str, object] = {}
    if request.temperature is None and profile.temperature is not None:
        changes["temperature"] = profile.temperature
    if request.max_tokens is None and profile.max_tokens is not None:
        changes["max_tokens"] = profile.max_tokens
    if profile.system_prompt and not any(m.role == "system" for m in request.messages):
        changes["messages"] = (Message("system", profile.system_prompt), *request.messages)
    return replace(request, **changes) if changes else request  # type: ignore[arg-type]
