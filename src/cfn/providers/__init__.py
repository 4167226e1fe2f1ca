"""Provider routing and LLM clients (seed: "Provider Routing").

Agents call LLMs only through ``LLMService``::

    service = build_service(settings, manager)      # Redis ledger + store sink
    reply = await service.complete(ChatRequest.of("..."), agent_id="coder-1-1", task_id="t1")
    reply.text, reply.usage, reply.cost_usd, reply.hops, reply.offline
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from cfn.providers.pricing import Price, PriceTable
from cfn.providers.router import Decision, select_provider
from cfn.providers.routes import ProviderSpec, Route, RouteTable, load_route_table, parse_route
from cfn.providers.service import LLMService
from cfn.providers.types import (
    OFFLINE,
    ChatRequest,
    ChatResponse,
    Hop,
    Message,
    StreamEvent,
    TaskTraits,
    ToolCall,
    ToolSpec,
    Usage,
)
from cfn.providers.usage import (
    CallRecord,
    MemoryLedger,
    RedisLedger,
    StoreSink,
    Totals,
    UsageSink,
)

if TYPE_CHECKING:
    from cfn.coordination.connection import RedisManager
    from cfn.settings import Settings

log = logging.getLogger(__name__)


def store_sink() -> UsageSink:
    """The SQL store's ``record_llm_call`` (``llm_calls`` table) as a sink.

    That function is synchronous (it writes SQL), so it runs in a worker thread.
    """
    from cfn.store.repository import record_llm_call

    async def record(call: CallRecord) -> None:
        await asyncio.to_thread(
            record_llm_call,
            provider=call.provider,
            model=call.model,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cost_usd=max(0.0, call.cost_usd),
            task_id=call.task_id,
            agent_id=call.agent_id,
        )

    return StoreSink(record)


def build_service(
    settings: Settings, manager: RedisManager | None = None, *, with_store: bool = False
) -> LLMService:
    """A service whose budget lives in Redis (shared by every agent process of a task)."""
    ledger = RedisLedger(manager) if manager is not None else MemoryLedger()
    sinks: list[UsageSink] = []
    if with_store:
        sinks.append(store_sink())
    return LLMService(settings, ledger=ledger, sinks=sinks)


__all__ = [
    "OFFLINE",
    "CallRecord",
    "ChatRequest",
    "ChatResponse",
    "Decision",
    "Hop",
    "LLMService",
    "MemoryLedger",
    "Message",
    "Price",
    "PriceTable",
    "ProviderSpec",
    "RedisLedger",
    "Route",
    "RouteTable",
    "StoreSink",
    "StreamEvent",
    "TaskTraits",
    "ToolCall",
    "ToolSpec",
    "Totals",
    "Usage",
    "UsageSink",
    "build_service",
    "load_route_table",
    "parse_route",
    "select_provider",
]
