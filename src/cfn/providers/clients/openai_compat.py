"""OpenAI-compatible chat completions through the official ``openai`` SDK.

Serves z.ai, Kimi (Moonshot), OpenRouter, xAI, Gemini's OpenAI endpoint and
local servers (Ollama, vLLM) alike: only the base URL and key differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import openai

from cfn.providers.clients.base import ClientEvent, ClientResult
from cfn.providers.clients.errors import sort_error
from cfn.providers.routes import ProviderSpec
from cfn.providers.types import ChatRequest, Message, ToolCall, Usage


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant" and m.tool_calls:
            item["content"] = m.content or None
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id or ""
        out.append(item)
    return out


def build_params(request: ChatRequest, model: str) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "messages": to_openai_messages(request.messages)}
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens
    return params


def _usage(raw: Any) -> Usage | None:
    if raw is None:
        return None
    return Usage(int(raw.prompt_tokens or 0), int(raw.completion_tokens or 0))


class OpenAICompatClient:
    def __init__(self, spec: ProviderSpec, timeout: float) -> None:
        self.provider = spec.name
        self._key_hint = spec.key_hint
        key = spec.key.get_secret_value() if spec.key is not None else "unused-no-key"
        self._sdk = openai.AsyncOpenAI(
            api_key=key, base_url=spec.base_url, max_retries=0, timeout=timeout
        )
        # The overloads of create() depend on literal ``stream``; we pass a dict.
        self._create = cast(Any, self._sdk.chat.completions).create

    def _sort(self, exc: BaseException) -> BaseException:
        return sort_error(exc, openai, self.provider, self._key_hint)

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        try:
            resp = await self._create(**build_params(request, model))
        except Exception as exc:
            raise self._sort(exc) from exc
        if not resp.choices:
            return ClientResult("", (), _usage(resp.usage) or Usage(), None)
        choice = resp.choices[0]
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments or "{}")
            for c in (choice.message.tool_calls or ())
            if getattr(c, "function", None) is not None
        )
        return ClientResult(
            choice.message.content or "", calls, _usage(resp.usage) or Usage(), choice.finish_reason
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        params = build_params(request, model)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        try:
            stream = await self._create(**params)
        except Exception as exc:
            raise self._sort(exc) from exc
        pending: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        try:
            async for chunk in stream:
                usage = _usage(getattr(chunk, "usage", None))
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if delta is not None and delta.content:
                        yield ClientEvent("text", text=delta.content)
                    for tc in (delta.tool_calls or ()) if delta is not None else ():
                        slot = pending.setdefault(tc.index, ["", "", ""])
                        if tc.id:
                            slot[0] = tc.id
                        if tc.function is not None:
                            slot[1] += tc.function.name or ""
                            slot[2] += tc.function.arguments or ""
                    if choice.finish_reason:
                        for _, (cid, name, args) in sorted(pending.items()):
                            yield ClientEvent(
                                "tool_call", tool_call=ToolCall(cid, name, args or "{}")
                            )
                        pending.clear()
                        yield ClientEvent("finish", finish_reason=choice.finish_reason)
                if usage is not None:
                    yield ClientEvent("usage", usage=usage)
        except Exception as exc:
            sorted_exc = self._sort(exc)
            raise sorted_exc from exc
        finally:
            await stream.close()
        for _, (cid, name, args) in sorted(pending.items()):
            yield ClientEvent("tool_call", tool_call=ToolCall(cid, name, args or "{}"))

    async def aclose(self) -> None:
        await self._sdk.close()
