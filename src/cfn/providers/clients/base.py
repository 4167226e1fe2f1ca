"""What every client shares: its protocol, its result types, and error sorting.

Clients never retry: the service does, so that every attempt is a recorded
hop and Retry-After is honoured once, in one place. Clients only sort
failures into *transient* (429, 5xx, timeouts, dropped connections: worth
another try or the next provider) and *request errors* (other 4xx: raised at
once).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from cfn.providers.types import ChatRequest, ToolCall, Usage

TransientKind = Literal[
    "rate_limited", "server_error", "timeout", "connection_error", "stream_dropped"
]


class Transient(Exception):
    """A failure worth retrying; never leaves ``cfn.providers``."""

    def __init__(
        self,
        kind: TransientKind,
        detail: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind: TransientKind = kind
        self.detail = detail
        self.status_code = status_code
        self.retry_after = retry_after


@dataclass(frozen=True)
class ClientResult:
    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: str | None


@dataclass(frozen=True)
class ClientEvent:
    """A ``text`` chunk, a finished ``tool_call``, ``usage`` (cumulative) or ``finish``."""

    kind: Literal["text", "tool_call", "usage", "finish"]
    text: str = ""
    tool_call: ToolCall | None = None
    usage: Usage | None = None
    finish_reason: str | None = None


class ProviderClient(Protocol):
    provider: str

    async def complete(self, request: ChatRequest, model: str) -> ClientResult: ...

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ClientEvent]: ...

    async def aclose(self) -> None: ...


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def estimate_tokens(chars: int) -> int:
    """About four characters a token: for budget checks before the real count arrives."""
    return 0 if chars <= 0 else max(1, math.ceil(chars / 4))
