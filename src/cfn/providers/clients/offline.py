"""The offline provider: a deterministic stand-in that calls no model at all.

It exists so the whole CFN Loop runs on a fresh machine with no key and no
network, and so tests get stable output. Its replies say plainly that they
are offline, and carry a machine-readable JSON line the loop can parse:

    [OFFLINE] cfn offline provider: deterministic stand-in, no language model was called.
    {"offline": true, "provider": "offline", "confidence": 0.83, ...}

``confidence`` is derived from a hash of the request, in [0.70, 0.99], so
the same prompt always gets the same value; a prompt containing
``offline-confidence: 0.42`` gets exactly that (for exercising a gate).

When the request offers a ``write_file`` tool and no tool has answered yet,
the first reply is a ``write_file`` call instead of text: it writes one note
under ``offline/`` saying plainly that no model wrote it, so an agent loop
exercises its real tool path and the workspace really changes. The reply
after the tool result is the text above.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator

from cfn.providers.clients.base import ClientEvent, ClientResult, estimate_tokens
from cfn.providers.types import ChatRequest, ToolCall, Usage

BANNER = "[OFFLINE] cfn offline provider: deterministic stand-in, no language model was called."
_HINT = re.compile(r"offline-confidence:\s*([01](?:\.\d+)?)")
_CHUNK = 24


def _digest(request: ChatRequest) -> str:
    h = hashlib.sha256()
    for m in request.messages:
        h.update(m.role.encode())
        h.update(b"\0")
        h.update(m.content.encode())
        h.update(b"\0")
    for t in request.tools:
        h.update(t.name.encode())
    return h.hexdigest()


def offline_confidence(request: ChatRequest) -> float:
    for m in reversed(request.messages):
        if m.role == "user":
            hints = _HINT.findall(m.content)
            if hints:
                value = float(hints[-1])
                if 0.0 <= value <= 1.0:
                    return value
            break
    return round(0.70 + (int(_digest(request)[:8], 16) % 30) / 100, 2)


def offline_text(request: ChatRequest, model: str) -> str:
    last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    first_line = " ".join(last_user.split())[:120]
    payload = {
        "offline": True,
        "provider": "offline",
        "model": model,
        "confidence": offline_confidence(request),
        "summary": f"Offline stand-in reply to: {first_line}",
        "request_sha256": _digest(request)[:16],
    }
    return BANNER + "\n" + json.dumps(payload, sort_keys=True)


def offline_tool_call(request: ChatRequest) -> ToolCall | None:
    """The deterministic ``write_file`` call of a first turn, when the tool is offered."""
    if not any(t.name == "write_file" for t in request.tools):
        return None
    if any(m.role == "tool" for m in request.messages):
        return None
    last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    digest = _digest(request)[:12]
    content = (
        f"{BANNER}\n\nThis note was written by cfn's offline stand-in provider. No language "
        "model read the task or wrote this file; configure a provider key to get real work.\n\n"
        f"Task as the agent received it:\n\n{last_user[:2000]}\n"
    )
    arguments = json.dumps({"path": f"offline/note-{digest}.md", "content": content})
    return ToolCall(id=f"offline-{digest}", name="write_file", arguments=arguments)


class OfflineClient:
    provider = "offline"

    def _result(self, request: ChatRequest, model: str) -> tuple[str, Usage]:
        text = offline_text(request, model)
        return text, Usage(estimate_tokens(request.text_size()), estimate_tokens(len(text)))

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        call = offline_tool_call(request)
        if call is not None:
            usage = Usage(
                estimate_tokens(request.text_size()), estimate_tokens(len(call.arguments))
            )
            return ClientResult("", (call,), usage, "tool_calls")
        text, usage = self._result(request, model)
        return ClientResult(text, (), usage, "stop")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        call = offline_tool_call(request)
        if call is not None:
            usage = Usage(
                estimate_tokens(request.text_size()), estimate_tokens(len(call.arguments))
            )
            yield ClientEvent("tool_call", tool_call=call)
            yield ClientEvent("usage", usage=usage)
            yield ClientEvent("finish", finish_reason="tool_calls")
            return
        text, usage = self._result(request, model)
        yield ClientEvent("usage", usage=Usage(usage.input_tokens, 0))
        for start in range(0, len(text), _CHUNK):
            yield ClientEvent("text", text=text[start : start + _CHUNK])
        yield ClientEvent("usage", usage=usage)
        yield ClientEvent("finish", finish_reason="stop")

    async def aclose(self) -> None:
        return None
