"""OpenAI-compatible chat completions, spoken directly over HTTP/1.1 (``http11``).

Serves z.ai, Kimi (Moonshot), OpenRouter, xAI, Gemini's OpenAI endpoint and
local servers (Ollama, vLLM) alike: only the base URL and key differ. A
provider without a key (a local server) gets no ``Authorization`` header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from cfn.providers.clients.base import ClientEvent, ClientResult
from cfn.providers.clients.errors import malformed, stream_error_chunk
from cfn.providers.clients.wire import Wire, as_dict, drain, sse_events
from cfn.providers.routes import ProviderSpec
from cfn.providers.types import ChatRequest, Message, ToolCall, Usage
from cfn.system.http11 import Proxies


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
    if not isinstance(raw, dict):
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_completion(data: dict[str, Any]) -> ClientResult:
    usage = _usage(data.get("usage")) or Usage()
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return ClientResult("", (), usage, None)
    choice = as_dict(choices[0])
    message = as_dict(choice.get("message"))
    calls = tuple(
        ToolCall(_str(c.get("id")), _str(fn.get("name")), _str(fn.get("arguments")) or "{}")
        for c in (message.get("tool_calls") or ())
        if isinstance(c, dict) and isinstance(fn := c.get("function"), dict)
    )
    finish = choice.get("finish_reason")
    return ClientResult(
        _str(message.get("content")), calls, usage, finish if isinstance(finish, str) else None
    )


class OpenAICompatClient:
    def __init__(
        self, spec: ProviderSpec, timeout: float, proxies: Proxies | None = None
    ) -> None:
        self.provider = spec.name
        headers = {}
        if spec.key is not None and spec.key.get_secret_value():
            headers["authorization"] = f"Bearer {spec.key.get_secret_value()}"
        url = spec.base_url.rstrip("/") + "/chat/completions"
        self._wire = Wire(spec.name, spec.key_hint, url, headers, timeout, proxies)

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        return parse_completion(await self._wire.post(build_params(request, model)))

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        params = build_params(request, model)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        response = await self._wire.open(params)
        pending: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        events = sse_events(response)
        try:
            async for _, raw in events:
                if raw.startswith("[DONE]"):
                    await drain(events)
                    break
                try:
                    chunk = json.loads(raw)
                except ValueError as exc:
                    raise malformed("stream chunk", exc) from exc
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise stream_error_chunk(chunk["error"])
                usage = _usage(chunk.get("usage"))
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    delta = as_dict(choice.get("delta"))
                    content = delta.get("content")
                    if content and isinstance(content, str):
                        yield ClientEvent("text", text=content)
                    for tc in delta.get("tool_calls") or ():
                        if not isinstance(tc, dict):
                            continue
                        index = tc.get("index")
                        slot = pending.setdefault(
                            index if isinstance(index, int) else 0, ["", "", ""]
                        )
                        if tc.get("id"):
                            slot[0] = _str(tc["id"])
                        fn = tc.get("function")
                        if isinstance(fn, dict):
                            slot[1] += _str(fn.get("name"))
                            slot[2] += _str(fn.get("arguments"))
                    finish = choice.get("finish_reason")
                    if finish and isinstance(finish, str):
                        for _, (cid, name, args) in sorted(pending.items()):
                            yield ClientEvent(
                                "tool_call", tool_call=ToolCall(cid, name, args or "{}")
                            )
                        pending.clear()
                        yield ClientEvent("finish", finish_reason=finish)
                if usage is not None:
                    yield ClientEvent("usage", usage=usage)
        finally:
            try:
                await events.aclose()
            finally:
                await response.aclose()
        for _, (cid, name, args) in sorted(pending.items()):
            yield ClientEvent("tool_call", tool_call=ToolCall(cid, name, args or "{}"))

    async def aclose(self) -> None:
        await self._wire.aclose()
