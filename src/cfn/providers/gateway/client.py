"""How an agent process calls the LLM gateway: ``GatewayLLM``.

The builtin agent runtime talks to the gateway in the OpenAI Chat
Completions format (``POST {url}/v1/chat/completions``, ``Authorization:
Bearer <the agent's token>``) and gets back, besides the standard reply,
cfn's ``"cfn"`` extension: the provider and model that served it, its cost,
whether it was the offline stand-in, and the hops of the fallback chain.
The agent holds no provider key and writes no usage: the gateway routed,
charged and recorded the call.

Gateway answers map back to cfn's errors once, here: 401 → ``AuthError``,
402 → ``BudgetExceededError``, 403 → ``ForbiddenError``, other 4xx →
``ProviderRequestError``, 5xx and an unreachable gateway →
``ProviderUnavailableError``.
"""

from __future__ import annotations

import json
from typing import Any

from cfn.errors import (
    AuthError,
    BudgetExceededError,
    ForbiddenError,
    ProviderRequestError,
    ProviderUnavailableError,
)
from cfn.providers.clients.openai_http import build_params
from cfn.providers.types import ChatRequest, ChatResponse, Hop, TaskTraits, ToolCall, Usage
from cfn.system.http11 import HttpError, Pool

#: The gateway does the retrying (with the provider's Retry-After); the agent waits long.
READ_TIMEOUT = 900.0
CONNECT_TIMEOUT = 5.0


def _error(status: int, body: bytes) -> Exception:
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode(errors="replace") or f"HTTP {status}"
    text = f"LLM gateway: {message}"
    if status == 401:
        return AuthError(text)
    if status == 402:
        return BudgetExceededError(text)
    if status == 403:
        return ForbiddenError(text)
    if 400 <= status < 500:
        return ProviderRequestError(text)
    return ProviderUnavailableError(text)


def parse_reply(data: Any) -> ChatResponse:
    """A gateway's Chat Completions reply (with its ``cfn`` extension) as a ``ChatResponse``."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        extra = data.get("cfn") or {}
        calls = tuple(
            ToolCall(
                str(c["id"]),
                str(c["function"]["name"]),
                str(c["function"].get("arguments") or "{}"),
            )
            for c in message.get("tool_calls") or ()
        )
        return ChatResponse(
            text=str(message.get("content") or ""),
            provider=str(extra.get("provider", "")),
            model=str(extra.get("model", data.get("model", ""))),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            cost_usd=float(extra.get("cost_usd", 0.0)),
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            offline=bool(extra.get("offline", False)),
            hops=tuple(
                Hop(str(extra.get("provider", "")), "", 0, "ok", detail=str(h))
                for h in extra.get("hops") or ()
            ),
            latency_ms=float(extra.get("latency_ms", 0.0)),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProviderUnavailableError(f"LLM gateway sent an unusable reply: {exc}") from None


class GatewayLLM:
    """An agent's LLM: the gateway at ``url`` with the agent's own ``token``.

    ``complete`` has ``LLMService.complete``'s signature; the route is the one
    the token carries, so ``provider``/``model`` only ask for another route
    the token allows (``provider:model``).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = READ_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "accept": "application/json",
        }
        # cfn's own HTTP/1.1 client (cfn.system.http11): nothing is set up before
        # the first call (a claude-code agent makes none), no TLS for an http gateway.
        self._client = Pool(timeout, connect_timeout=connect_timeout, max_idle=4)

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
        wanted = f"{provider}:{model}" if provider and model else "cfn-routed"
        body = json.dumps(build_params(request, wanted), separators=(",", ":")).encode()
        try:
            reply = await self._client.request(
                "POST", f"{self.url}/v1/chat/completions", self._headers, body
            )
            content = await reply.read()
        except HttpError as exc:
            raise ProviderUnavailableError(
                f"LLM gateway {self.url} unreachable: {exc.kind}: {exc.detail}"
            ) from None
        if reply.status != 200:
            raise _error(reply.status, content)
        try:
            data = json.loads(content)
        except ValueError:
            raise ProviderUnavailableError("LLM gateway sent a reply that is not JSON") from None
        return parse_reply(data)

    async def aclose(self) -> None:
        await self._client.aclose()
