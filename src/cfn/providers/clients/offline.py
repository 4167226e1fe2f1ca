"""The offline provider: a deterministic stand-in that calls no model at all.

It exists so the whole CFN Loop runs on a fresh machine with no key and no
network, and so tests get stable output. Its replies say plainly that they
are offline, and carry a machine-readable JSON line the loop can parse:

    [OFFLINE] cfn offline provider: deterministic stand-in, no language model was called.
    {"offline": true, "provider": "offline", "confidence": 0.83, ...}

``confidence`` is derived from a hash of the request, in [0.70, 0.99], so
the same prompt always gets the same value; a prompt containing
``offline-confidence: 0.42`` gets exactly that (for exercising a gate).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator

from cfn.providers.clients.base import ClientEvent, ClientResult, estimate_tokens
from cfn.providers.types import ChatRequest, Usage

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


class OfflineClient:
    provider = "offline"

    def _result(self, request: ChatRequest, model: str) -> tuple[str, Usage]:
        text = offline_text(request, model)
        return text, Usage(estimate_tokens(request.text_size()), estimate_tokens(len(text)))

    async def complete(self, request: ChatRequest, model: str) -> ClientResult:
        text, usage = self._result(request, model)
        return ClientResult(text, (), usage, "stop")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]:
        text, usage = self._result(request, model)
        yield ClientEvent("usage", usage=Usage(usage.input_tokens, 0))
        for start in range(0, len(text), _CHUNK):
            yield ClientEvent("text", text=text[start : start + _CHUNK])
        yield ClientEvent("usage", usage=usage)
        yield ClientEvent("finish", finish_reason="stop")

    async def aclose(self) -> None:
        return None
