"""Anthropic Messages through the official ``anthropic`` SDK.

Serves ``anthropic``, ``max`` (the seed's route to Claude 3 Opus, with its own
key) and z.ai's Anthropic-compatible endpoint (ZAI_API_STYLE=anthropic).
Route models may carry OpenRouter's ``anthropic/`` prefix (the seed's ``max``
route does); the Messages API wants the bare name, so it is dropped here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic

from cfn.providers.clients.base import ClientEvent, ClientResult
from cfn.providers.clients.errors import sort_error
from cfn.providers.routes import ProviderSpec
from cfn.providers.types import ChatRequest, Message, ToolCall, Usage

DEFAULT_MAX_TOKENS = 4096


def api_model(model: str) -> str:
    return model.removeprefix("anthropic/")


def _tool_input(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return {"_raw": call.arguments}


def to_anthropic(messages: tuple[Message, ...]) -> tuple[str | None, list[dict[str, Any]]]:
    """System text apart; tool results become ``tool_result`` blocks of a user turn."""
    system = [m.content for m in messages if m.role == "system" and m.content]
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        if m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c)}
                for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
            continue
        out.append({"role": m.role, "content": m.content})
    return ("\n\n".join(system) or None), out


def build_params(request: ChatRequest, model: str) -> dict[str, Any]:
    system, messages = to_anthropic(request.messages)
    params: dict[str, Any] = {
        "model": api_model(model),
        "messages": messages,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        params["system"] = system
    if request.tools:
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
    if request.temperature is not None:
        # Recent SDKs dropped ``temperature`` from create()'s signature (newer models
        # ignore it); the Messages API and z.ai's endpoint still take it in the body.
        params["extra_body"] = {"temperature": request.temperature}
    return params


class AnthropicClient:
    def __init__(self, spec: ProviderSpec, timeout: float) -> None:
        self.provider = spec.name
        self._key_hint = spec.key_hint
        key = spec.key.get_secret_value() if spec.key is not None else "unused-no-key"
        self._sdk = anthropic.AsyncAnthropic(
            api_key=key, base_url=spec.base_url, max_retries=0, timeout=timeout
        )
        self._create = cast(Any, self._sdk.messages).create

    def _sort(self, exc: BaseException) -> BaseException:
        return sort_error(exc, anthropic, self.provider, self._key_hint)

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        try:
            msg = await self._create(**build_params(request, model))
        except Exception as exc:
            raise self._sort(exc) from exc
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in msg.content or ():
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        usage = Usage(int(msg.usage.input_tokens or 0), int(msg.usage.output_tokens or 0))
        return ClientResult("".join(texts), tuple(calls), usage, msg.stop_reason)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        params = build_params(request, model)
        params["stream"] = True
        try:
            stream = await self._create(**params)
        except Exception as exc:
            raise self._sort(exc) from exc
        input_tokens = output_tokens = 0
        tools: dict[int, list[str]] = {}  # index -> [id, name, partial json]
        try:
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    u = event.message.usage
                    input_tokens = int(getattr(u, "input_tokens", 0) or 0)
                    output_tokens = int(getattr(u, "output_tokens", 0) or 0)
                    yield ClientEvent("usage", usage=Usage(input_tokens, output_tokens))
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        tools[event.index] = [block.id, block.name, ""]
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        yield ClientEvent("text", text=delta.text)
                    elif delta.type == "input_json_delta" and event.index in tools:
                        tools[event.index][2] += delta.partial_json
                elif kind == "content_block_stop":
                    slot = tools.pop(event.index, None)
                    if slot is not None:
                        yield ClientEvent(
                            "tool_call", tool_call=ToolCall(slot[0], slot[1], slot[2] or "{}")
                        )
                elif kind == "message_delta":
                    u = event.usage
                    if getattr(u, "input_tokens", None):
                        input_tokens = int(u.input_tokens)
                    output_tokens = int(getattr(u, "output_tokens", 0) or output_tokens)
                    yield ClientEvent("usage", usage=Usage(input_tokens, output_tokens))
                    if event.delta.stop_reason:
                        yield ClientEvent("finish", finish_reason=event.delta.stop_reason)
        except Exception as exc:
            raise self._sort(exc) from exc
        finally:
            await stream.close()

    async def aclose(self) -> None:
        await self._sdk.close()
