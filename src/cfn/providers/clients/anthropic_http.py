"""Anthropic Messages, spoken directly over HTTP/1.1 (``http11``).

Serves ``anthropic``, ``max`` (the seed's route to Claude 3 Opus, with its own
key) and z.ai's Anthropic-compatible endpoint (ZAI_API_STYLE=anthropic).
Route models may carry OpenRouter's ``anthropic/`` prefix (the seed's ``max``
route does); the Messages API wants the bare name, so it is dropped here.

``POST {base_url}/v1/messages``, the key as ``Authorization: Bearer`` (what the
anthropic SDK 2.x sent; Anthropic and z.ai's endpoint accept it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from cfn.providers.clients.base import ClientEvent, ClientResult
from cfn.providers.clients.errors import malformed, stream_error_event
from cfn.providers.clients.wire import Wire, as_dict, sse_events
from cfn.providers.routes import ProviderSpec
from cfn.providers.types import ChatRequest, Message, ToolCall, Usage
from cfn.system.http11 import Proxies

DEFAULT_MAX_TOKENS = 4096
API_VERSION = "2023-06-01"


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
        params["temperature"] = request.temperature
    return params


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_message(data: dict[str, Any]) -> ClientResult:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(_str(block.get("text")))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    _str(block.get("id")), _str(block.get("name")), json.dumps(block.get("input"))
                )
            )
    usage = as_dict(data.get("usage"))
    stop = data.get("stop_reason")
    return ClientResult(
        "".join(texts),
        tuple(calls),
        Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens"))),
        stop if isinstance(stop, str) else None,
    )


class AnthropicClient:
    def __init__(
        self, spec: ProviderSpec, timeout: float, proxies: Proxies | None = None
    ) -> None:
        self.provider = spec.name
        headers = {"anthropic-version": API_VERSION}
        if spec.key is not None and spec.key.get_secret_value():
            headers["authorization"] = f"Bearer {spec.key.get_secret_value()}"
        url = spec.base_url.rstrip("/") + "/v1/messages"
        self._wire = Wire(spec.name, spec.key_hint, url, headers, timeout, proxies)

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        return parse_message(await self._wire.post(build_params(request, model)))

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        params = build_params(request, model)
        params["stream"] = True
        response = await self._wire.open(params)
        input_tokens = output_tokens = 0
        tools: dict[int, list[str]] = {}  # index -> [id, name, partial json]
        events = sse_events(response)
        try:
            async for name, raw in events:
                if name is None or name == "ping":
                    continue
                if name == "error":
                    raise stream_error_event(raw, self.provider)
                try:
                    event = json.loads(raw)
                except ValueError as exc:
                    raise malformed(f"{name} event", exc) from exc
                if not isinstance(event, dict):
                    continue
                kind = event.get("type")
                index = event.get("index")
                if kind == "message_start":
                    u = as_dict(as_dict(event.get("message")).get("usage"))
                    input_tokens = _int(u.get("input_tokens"))
                    output_tokens = _int(u.get("output_tokens"))
                    yield ClientEvent("usage", usage=Usage(input_tokens, output_tokens))
                elif kind == "content_block_start":
                    block = as_dict(event.get("content_block"))
                    if block.get("type") == "tool_use" and isinstance(index, int):
                        tools[index] = [_str(block.get("id")), _str(block.get("name")), ""]
                elif kind == "content_block_delta":
                    delta = as_dict(event.get("delta"))
                    if delta.get("type") == "text_delta":
                        yield ClientEvent("text", text=_str(delta.get("text")))
                    elif delta.get("type") == "input_json_delta" and index in tools:
                        tools[index][2] += _str(delta.get("partial_json"))
                elif kind == "content_block_stop":
                    slot = tools.pop(index, None) if isinstance(index, int) else None
                    if slot is not None:
                        yield ClientEvent(
                            "tool_call", tool_call=ToolCall(slot[0], slot[1], slot[2] or "{}")
                        )
                elif kind == "message_delta":
                    u = as_dict(event.get("usage"))
                    if u.get("input_tokens"):
                        input_tokens = _int(u["input_tokens"])
                    output_tokens = _int(u.get("output_tokens")) or output_tokens
                    yield ClientEvent("usage", usage=Usage(input_tokens, output_tokens))
                    stop = as_dict(event.get("delta")).get("stop_reason")
                    if stop and isinstance(stop, str):
                        yield ClientEvent("finish", finish_reason=stop)
        finally:
            try:
                await events.aclose()
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        await self._wire.aclose()
