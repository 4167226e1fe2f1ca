"""The Anthropic Messages API on the wire, to and from cfn's own types.

Requests (``POST /v1/messages`` and ``/v1/messages/count_tokens``) come as
Claude Code and the official ``anthropic`` SDK send them::

    {"model": "claude-...", "max_tokens": 1024, "stream": true,
     "system": "..." | [{"type": "text", "text": "...", "cache_control": {...}}],
     "tools": [{"name": "...", "description": "...", "input_schema": {...}}],
     "messages": [{"role": "user" | "assistant", "content": "..." | [block, ...]}],
     "temperature": 0.2, "stop_sequences": [...], "metadata": {"user_id": "..."},
     "tool_choice": {...}, "thinking": {...}, "top_p": 0.9, "top_k": 40}

``parse_messages`` turns one into a ``ChatRequest``:

* the system text (a string, or its text blocks joined by a blank line) is
  one ``Message("system")`` first; ``cache_control`` is dropped;
* an assistant turn is one ``Message("assistant")``: its text blocks joined
  by a blank line, its ``tool_use`` blocks ``ToolCall(id, name, json(input))``;
  a turn left with neither (only thinking) is dropped;
* a user turn's ``tool_result`` blocks become ``Message("tool")`` each, in
  order (text prefixed ``error: `` when ``is_error``), then the rest of its
  text, if any, one ``Message("user")``;
* ``thinking`` and ``redacted_thinking`` blocks are dropped; any other block
  (image, document, server tool blocks) becomes ``[TYPE omitted]`` text;
* tools with a ``type`` other than ``custom`` (web_search, bash, ...: the
  server's own tools) are skipped; ``tool_choice``, ``thinking``, ``top_p``
  and ``top_k`` are checked for shape, then ignored, as are unknown keys.

A body that breaks these rules raises ``InvalidInputError`` naming the field,
like ``messages[2].content[0].tool_use_id``. Byte size is the HTTP layer's
limit; here only list lengths are capped.

Replies: ``message_json`` is a whole Message object; a ``MessageStream``
writes the named server-sent events of ``stream: true``, each frame
``event: NAME\\ndata: JSON\\n\\n``::

    message_start        {"message": {..., "content": [], "usage": {"input_tokens": N, ...}}}
    content_block_start  {"index": 0, "content_block": {"type": "text", "text": ""}}
    content_block_delta  {"index": 0, "delta": {"type": "text_delta", "text": "..."}}
    content_block_stop   {"index": 0}
    content_block_start  {"index": 1, "content_block": {"type": "tool_use", "id", "name",
                          "input": {}}}
    content_block_delta  {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ...}}
    content_block_stop   {"index": 1}
    message_delta        {"delta": {"stop_reason": "tool_use", "stop_sequence": null},
                          "usage": {"output_tokens": M}}
    message_stop         {}

A failure mid-stream is ``event: error`` with
``{"type": "error", "error": {"type": KIND, "message": ...}}``; ``ping`` is a
keep-alive. Tool arguments that are not a JSON object go out as
``{"_raw": "<the text>"}`` (what ``clients.anthropic_http`` sends too), so
the client sees the model's broken output instead of a silent ``{}``. JSON is
written ASCII-only, so no character in it can split an SSE line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from cfn.providers.gateway import fields
from cfn.providers.types import ChatRequest, ChatResponse, Message, StreamEvent, ToolCall, ToolSpec

MAX_MESSAGES: Final = 10_000
MAX_BLOCKS: Final = 10_000
MAX_TOOLS: Final = 1_000
MAX_STOP_SEQUENCES: Final = 64
MAX_NAME: Final = 256
MAX_USER: Final = 1_024

#: HTTP status -> the ``error.type`` api.anthropic.com answers with.
ERROR_KINDS: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_BLOCK_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


@dataclass(frozen=True)
class MessagesOptions:
    """What a Messages request asks of the reply, beyond the ``ChatRequest``."""

    model: str
    stream: bool
    max_tokens: int | None
    stop_sequences: tuple[str, ...]
    metadata_user: str | None


# --- checking fields ----------------------------------------------------------------


def _block_type(block: dict[str, Any], path: str) -> str:
    kind = block.get("type")
    if not isinstance(kind, str) or not _BLOCK_TYPE.fullmatch(kind):
        fields.fail(f"{path}.type", "must name a content block type, like 'text'")
    return kind


# --- requests ----------------------------------------------------------------------


def _tool_result_text(block: dict[str, Any], path: str) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts: list[str] = []
        for j, raw in enumerate(fields.list_of(content, f"{path}.content", MAX_BLOCKS)):
            part = fields.obj(raw, f"{path}.content[{j}]")
            kind = _block_type(part, f"{path}.content[{j}]")
            if kind == "text":
                parts.append(fields.text(part.get("text"), f"{path}.content[{j}].text"))
            elif kind not in _DROPPED_BLOCKS:
                parts.append(f"[{kind} omitted]")
        text = "\n".join(parts)
    is_error = block.get("is_error")
    failed = is_error is not None and fields.boolean(is_error, f"{path}.is_error")
    if failed and not text.lower().startswith("error"):
        text = f"error: {text}" if text else "error"
    return text


def _user_turn(content: list[Any], path: str) -> list[Message]:
    tools: list[Message] = []
    texts: list[str] = []
    for j, raw in enumerate(content):
        bpath = f"{path}[{j}]"
        block = fields.obj(raw, bpath)
        kind = _block_type(block, bpath)
        if kind == "text":
            texts.append(fields.text(block.get("text"), f"{bpath}.text"))
        elif kind == "tool_result":
            call_id = fields.text(block.get("tool_use_id"), f"{bpath}.tool_use_id", nonempty=True)
            tools.append(Message("tool", _tool_result_text(block, bpath), tool_call_id=call_id))
        elif kind == "tool_use":
            fields.fail(bpath, "is a tool_use block, which belongs in an assistant message")
        elif kind not in _DROPPED_BLOCKS:
            texts.append(f"[{kind} omitted]")
    text = "\n\n".join(t for t in texts if t)
    if text or not tools:
        tools.append(Message("user", text))
    return tools


def _assistant_turn(content: list[Any], path: str) -> list[Message]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, raw in enumerate(content):
        bpath = f"{path}[{j}]"
        block = fields.obj(raw, bpath)
        kind = _block_type(block, bpath)
        if kind == "text":
            texts.append(fields.text(block.get("text"), f"{bpath}.text"))
        elif kind == "tool_use":
            call_id = fields.text(block.get("id"), f"{bpath}.id", nonempty=True, cap=MAX_NAME)
            name = fields.text(block.get("name"), f"{bpath}.name", nonempty=True, cap=MAX_NAME)
            args = fields.obj(block.get("input"), f"{bpath}.input")
            calls.append(ToolCall(call_id, name, json.dumps(args)))
        elif kind == "tool_result":
            fields.fail(bpath, "is a tool_result block, which belongs in a user message")
        elif kind not in _DROPPED_BLOCKS:
            texts.append(f"[{kind} omitted]")
    text = "\n\n".join(t for t in texts if t)
    return [Message("assistant", text, tool_calls=tuple(calls))] if text or calls else []


def _messages(value: object) -> list[Message]:
    raw_messages = fields.list_of(value, "messages", MAX_MESSAGES)
    if not raw_messages:
        fields.fail("messages", "must hold at least one message")
    out: list[Message] = []
    for i, raw in enumerate(raw_messages):
        msg = fields.obj(raw, f"messages[{i}]")
        role = msg.get("role")
        if role not in ("user", "assistant", "system"):
            fields.fail(f"messages[{i}].role", "must be 'user', 'assistant' or 'system'")
        content = msg.get("content")
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        blocks = fields.list_of(content, f"messages[{i}].content", MAX_BLOCKS)
        if role == "system":
            # Claude Code puts system reminders among the messages: they stay system text.
            text = "\n\n".join(
                str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("text")
            )
            out.append(Message("system", text))
        elif role == "user":
            out += _user_turn(blocks, f"messages[{i}].content")
        else:
            out += _assistant_turn(blocks, f"messages[{i}].content")
    return out


def _system(value: object) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    texts: list[str] = []
    for j, raw in enumerate(fields.list_of(value, "system", MAX_BLOCKS)):
        block = fields.obj(raw, f"system[{j}]")
        if _block_type(block, f"system[{j}]") != "text":
            fields.fail(f"system[{j}].type", "must be 'text'")
        texts.append(fields.text(block.get("text"), f"system[{j}].text"))
    return "\n\n".join(t for t in texts if t)


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(fields.list_of(value, "tools", MAX_TOOLS)):
        tool = fields.obj(raw, f"tools[{i}]")
        kind = tool.get("type")
        if kind is not None and fields.text(kind, f"tools[{i}].type") != "custom":
            continue  # a server tool (web_search, bash, ...): nothing we can offer
        name = fields.text(tool.get("name"), f"tools[{i}].name", nonempty=True, cap=MAX_NAME)
        if name in seen:
            fields.fail(f"tools[{i}].name", f"{name!r} is defined twice")
        seen.add(name)
        description = tool.get("description")
        description = (
            "" if description is None else fields.text(description, f"tools[{i}].description")
        )
        schema = fields.obj(tool.get("input_schema"), f"tools[{i}].input_schema")
        specs.append(ToolSpec(name, description, schema))
    return tuple(specs)


def _check_ignored(body: dict[str, Any]) -> None:
    """Fields we accept but do not act on: wrong shapes are still the client's error."""
    choice = body.get("tool_choice")
    if choice is not None:
        choice = fields.obj(choice, "tool_choice")
        kind = choice.get("type")
        if not isinstance(kind, str) or kind not in _TOOL_CHOICES:
            fields.fail("tool_choice.type", "must be one of " + ", ".join(sorted(_TOOL_CHOICES)))
        if kind == "tool":
            fields.text(choice.get("name"), "tool_choice.name", nonempty=True)
    if body.get("thinking") is not None:
        fields.obj(body["thinking"], "thinking")
    if body.get("top_p") is not None:
        fields.number(body["top_p"], "top_p", 0.0, 1.0)
    if body.get("top_k") is not None:
        fields.integer(body["top_k"], "top_k", 0)


def _parse(body: object, *, need_max_tokens: bool) -> tuple[ChatRequest, MessagesOptions]:
    data = fields.obj(body, "the body")
    model = fields.text(data.get("model"), "model", nonempty=True, cap=MAX_NAME)
    max_tokens: int | None = None
    if data.get("max_tokens") is not None or need_max_tokens:
        max_tokens = fields.integer(data.get("max_tokens"), "max_tokens", 1)
    temperature = data.get("temperature")
    if temperature is not None:
        temperature = fields.number(temperature, "temperature", 0.0, 1.0)
    stream = data.get("stream")
    stream = False if stream is None else fields.boolean(stream, "stream")
    stops = data.get("stop_sequences")
    stop_list = [] if stops is None else fields.list_of(stops, "stop_sequences", MAX_STOP_SEQUENCES)
    stop_sequences = tuple(
        fields.text(s, f"stop_sequences[{i}]", nonempty=True) for i, s in enumerate(stop_list)
    )
    metadata = data.get("metadata")
    user: str | None = None
    if metadata is not None:
        raw_user = fields.obj(metadata, "metadata").get("user_id")
        user = None if raw_user is None else fields.text(raw_user, "metadata.user_id", cap=MAX_USER)
    _check_ignored(data)
    system = _system(data.get("system"))
    messages = ([Message("system", system)] if system else []) + _messages(data.get("messages"))
    request = ChatRequest(
        tuple(messages), _tools(data.get("tools")), temperature=temperature, max_tokens=max_tokens
    )
    return request, MessagesOptions(model, stream, max_tokens, stop_sequences, user)


def parse_messages(body: object) -> tuple[ChatRequest, MessagesOptions]:
    """A ``POST /v1/messages`` body (decoded JSON) as a request and its reply options."""
    return _parse(body, need_max_tokens=True)


def parse_count_tokens(body: object) -> ChatRequest:
    """A ``POST /v1/messages/count_tokens`` body: as for messages, ``max_tokens`` optional."""
    return _parse(body, need_max_tokens=False)[0]


def count_tokens_json(n: int) -> dict[str, Any]:
    return {"input_tokens": n}


# --- replies -----------------------------------------------------------------------


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the ``input`` object; not a JSON object -> ``{"_raw": text}``."""
    try:
        value = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return {"_raw": call.arguments}
    return value if isinstance(value, dict) else {"_raw": call.arguments}


def stop_reason(response: ChatResponse) -> str:
    """Our ``finish_reason`` (from any provider) as an Anthropic ``stop_reason``."""
    reason = response.finish_reason
    if response.tool_calls or reason in ("tool_calls", "tool_use"):
        return "tool_use"
    if reason in ("length", "max_tokens"):
        return "max_tokens"
    if reason == "stop_sequence":
        return "stop_sequence"
    if reason in ("refusal", "content_filter"):
        return "refusal"
    return "end_turn"


def _tool_block(call: ToolCall, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": input_}


def message_json(response: ChatResponse, model: str, message_id: str) -> dict[str, Any]:
    """The whole Message object of a non-streamed reply."""
    content: list[dict[str, Any]] = []
    if response.text:
        content.append({"type": "text", "text": response.text})
    content += [_tool_block(c, tool_input(c)) for c in response.tool_calls]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(response),
        "stop_sequence": None,
        "usage": {
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
        },
    }


def error_json(kind: str, message: str) -> dict[str, Any]:
    """An error body; ``kind`` is one of ``ERROR_KINDS``' values."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_kind(status: int) -> str:
    """The error type for an HTTP status, also for statuses ``ERROR_KINDS`` does not list."""
    if status in ERROR_KINDS:
        return ERROR_KINDS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class MessageStream:
    """The SSE frames of one streamed reply, from ``start`` to ``finish`` (or ``error``).

    Not thread-safe; one per reply. ``event`` returns ``b""`` for events that
    write nothing (empty text, ``done``: pass the final response to ``finish``).
    """

    def __init__(self) -> None:
        self._blocks = 0  # content blocks opened so far; the next one's index
        self._text_open = False
        self._sent_text = False
        self._sent_calls: set[str] = set()

    def start(self, model: str, message_id: str, input_tokens: int) -> bytes:
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        return _frame("message_start", {"type": "message_start", "message": message})

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        return _frame(
            "content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1}
        )

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if not self._text_open:
            block = {"type": "text", "text": ""}
            out = _frame(
                "content_block_start",
                {"type": "content_block_start", "index": self._blocks, "content_block": block},
            )
            self._blocks += 1
            self._text_open = True
        self._sent_text = True
        delta = {"type": "text_delta", "text": text}
        return out + _frame(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta},
        )

    def _tool_call(self, call: ToolCall) -> bytes:
        closed = self._close_text()
        index = self._blocks
        self._blocks += 1
        self._sent_calls.add(call.id)
        delta = {"type": "input_json_delta", "partial_json": json.dumps(tool_input(call))}
        return (
            closed
            + _frame(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": _tool_block(call, {}),
                },
            )
            + _frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            + _frame("content_block_stop", {"type": "content_block_stop", "index": index})
        )

    def event(self, ev: StreamEvent) -> bytes:
        if ev.kind == "text":
            return self._text(ev.text)
        if ev.kind == "tool_call" and ev.tool_call is not None:
            return self._tool_call(ev.tool_call)
        return b""

    def finish(self, response: ChatResponse) -> bytes:
        """Close the reply. Content of ``response`` no event carried (text, when none was
        streamed; tool calls by id) is written first, so a reply that was not streamed
        at all still arrives whole."""
        out = b"" if self._sent_text else self._text(response.text)
        for call in response.tool_calls:
            if call.id not in self._sent_calls:
                out += self._tool_call(call)
        usage: dict[str, int] = {"output_tokens": response.usage.output_tokens}
        if response.usage.input_tokens:
            usage["input_tokens"] = response.usage.input_tokens
        reason = "tool_use" if self._sent_calls else stop_reason(response)
        delta = {"stop_reason": reason, "stop_sequence": None}
        return (
            out
            + self._close_text()
            + _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            + _frame("message_stop", {"type": "message_stop"})
        )

    def error(self, kind: str, message: str) -> bytes:
        return _frame("error", error_json(kind, message))

    def ping(self) -> bytes:
        return _frame("ping", {"type": "ping"})
