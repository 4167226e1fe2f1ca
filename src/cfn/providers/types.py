"""The plain data that goes in and out of an LLM call, independent of any SDK.

Agents build a ``ChatRequest``; whichever provider serves it, they get back a
``ChatResponse`` (or ``StreamEvent``s ending in one) with the same fields, so
code above ``providers`` never sees an SDK type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Complexity = Literal["low", "medium", "high"]
COMPLEXITIES: tuple[str, ...] = ("low", "medium", "high")

#: Provider name of the built-in offline stand-in (no key, no network).
OFFLINE = "offline"


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for; ``arguments`` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments as JSON; models do emit broken JSON, so callers get the error."""
        return json.loads(self.arguments or "{}")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    #: For ``role="tool"``: the id of the call this message answers.
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None

    @classmethod
    def of(cls, prompt: str, system: str | None = None, **kwargs: Any) -> ChatRequest:
        """A one-turn request: optional system message plus one user message."""
        messages = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
        return cls(messages=messages, **kwargs)

    def text_size(self) -> int:
        """Characters of all message text and tool schemas, for estimates before a call."""
        size = sum(
            len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in self.messages
        )
        return size + sum(len(json.dumps(t.parameters)) + len(t.description) for t in self.tools)


@dataclass(frozen=True)
class TaskTraits:
    """What the seed's selectProvider reads from a task."""

    complexity: Complexity | None = None
    cost_sensitive: bool = False


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


HopOutcome = Literal[
    "ok",
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "stream_dropped",
    "request_error",
    "skipped_no_credentials",
    "budget_stopped",
]


@dataclass(frozen=True)
class Hop:
    """One attempt at one provider: what happened and how long we waited after it."""

    provider: str
    model: str
    attempt: int
    outcome: HopOutcome
    status_code: int | None = None
    detail: str = ""
    waited_s: float = 0.0
    elapsed_ms: float = 0.0

    def describe(self) -> str:
        code = f" {self.status_code}" if self.status_code else ""
        wait = f", waited {self.waited_s:.2f}s" if self.waited_s else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.provider}:{self.model} #{self.attempt} {self.outcome}{code}{detail}{wait}"


@dataclass(frozen=True)
class ChatResponse:
    text: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    #: True when the offline stand-in answered: no model was called.
    offline: bool = False
    hops: tuple[Hop, ...] = ()
    latency_ms: float = 0.0

    @property
    def label(self) -> str:
        """``provider:model``, marked when offline, for anything that shows a provider."""
        return f"{self.provider}:{self.model}" + (
            " (OFFLINE, no model called)" if self.offline else ""
        )


@dataclass(frozen=True)
class StreamEvent:
    """One piece of a streamed reply: text, a finished tool call, or the final response."""

    kind: Literal["text", "tool_call", "done"]
    text: str = ""
    tool_call: ToolCall | None = None
    response: ChatResponse | None = None
