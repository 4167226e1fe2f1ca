"""OpenAI Chat Completions on the wire, to and from cfn's own types.

Requests (``POST /v1/chat/completions``) come as the official ``openai`` SDK
and OpenAI-compatible agents send them::

    {"model": "...", "stream": true, "stream_options": {"include_usage": true},
     "messages": [
       {"role": "system" | "developer", "content": "..."},
       {"role": "user", "content": "..." | [{"type": "text", "text": "..."}, ...]},
       {"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "run", "arguments": "{\\"cmd\\": \\"ls\\"}"}}]},
       {"role": "tool", "tool_call_id": "call_1", "content": "..."}],
     "tools": [{"type": "function",
                "function": {"name": "run", "description": "...", "parameters": {...}}}],
     "temperature": 0.2, "max_completion_tokens": 512, "stop": ["..."],
     "tool_choice": "auto", "n": 1, "user": "..."}

``parse_chat`` turns one into a ``ChatRequest``: system and developer
messages become ``Message("system")`` where they stand; text parts of a
content list are joined by a blank line, other parts (images, audio, files)
become ``[TYPE omitted]``; tool arguments stay the model's raw text. Tools of
a type other than ``function`` are skipped. ``max_completion_tokens`` wins
over the older ``max_tokens``. ``n`` other than 1 is refused (one choice is
all we return); ``tool_choice`` is checked for shape, then ignored, as are
unknown keys (``top_p``, ``seed``, ``response_format``, ...). A body that
breaks these rules raises ``InvalidInputError`` naming the field, like
``messages[3].tool_calls[0].function.arguments``.

Replies: ``completion_json`` is a whole ``chat.completion``; a
``ChunkStream`` writes the ``stream: true`` frames, each ``data: JSON\\n\\n``::

    {"object": "chat.completion.chunk", "choices": [{"index": 0,
      "delta": {"role": "assistant", "content": ""}, "finish_reason": null}], ...}
    ... "delta": {"content": "..."} ...
    ... "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "run", "arguments": "{...}"}}]} ...
    ... "delta": {}, "finish_reason": "stop" | "tool_calls" | "length" ...
    {"object": "chat.completion.chunk", "choices": [], "usage": {...}}  (include_usage)
    data: [DONE]

A failure mid-stream is one frame ``data: {"error": {"message", "type", "code"}}``,
which the SDK raises as ``APIError``. JSON is written ASCII-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from cfn.providers.gateway import fields
from cfn.providers.types import (
    ChatRequest,
    ChatResponse,
    Message,
    Role,
    StreamEvent,
    ToolCall,
    ToolSpec,
)

MAX_MESSAGES: Final = 10_000
MAX_PARTS: Final = 10_000
MAX_TOOLS: Final = 1_000
MAX_STOP: Final = 4
MAX_NAME: Final = 256
MAX_USER: Final = 1_024

#: HTTP status -> (error.type, error.code) as api.openai.com answers.
ERROR_TYPES: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}

_ROLES: Final[dict[str, Role]] = {"system": "system", "developer": "system", "user": "user"}
_TOOL_CHOICES = frozenset({"none", "auto", "required"})


@dataclass(frozen=True)
class ChatOptions:
    """What a chat request asks of the reply, beyond the ``ChatRequest``."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    stop: tuple[str, ...] = ()
    user: str | None = None


# --- checking fields ----------------------------------------------------------------


# --- requests ----------------------------------------------------------------------


def _content(value: object, path: str, *, nullable: bool = False) -> str:
    """A message's content: a string, or a list of parts whose text is joined."""
    if value is None and nullable:
        return ""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for j, raw in enumerate(fields.list_of(value, path, MAX_PARTS)):
        part = fields.obj(raw, f"{path}[{j}]")
        kind = part.get("type")
        if not isinstance(kind, str) or not kind.isidentifier() or len(kind) > 64:
            fields.fail(f"{path}[{j}].type", "must name a content part type, like 'text'")
        if kind in ("text", "refusal"):
            texts.append(fields.text(part.get(kind), f"{path}[{j}].{kind}"))
        else:
            texts.append(f"[{kind} omitted]")
    return "\n\n".join(t for t in texts if t)


def _tool_calls(value: object, path: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    calls: list[ToolCall] = []
    for j, raw in enumerate(fields.list_of(value, path, MAX_PARTS)):
        cpath = f"{path}[{j}]"
        call = fields.obj(raw, cpath)
        kind = call.get("type", "function")
        if kind != "function":
            fields.fail(f"{cpath}.type", "must be 'function'")
        call_id = fields.text(call.get("id"), f"{cpath}.id", nonempty=True, cap=MAX_NAME)
        function = fields.obj(call.get("function"), f"{cpath}.function")
        name = fields.text(
            function.get("name"), f"{cpath}.function.name", nonempty=True, cap=MAX_NAME
        )
        arguments = fields.text(function.get("arguments", "{}"), f"{cpath}.function.arguments")
        calls.append(ToolCall(call_id, name, arguments or "{}"))
    return tuple(calls)


def _message(raw: object, path: str) -> Message:
    msg = fields.obj(raw, path)
    role = msg.get("role")
    if isinstance(role, str) and role in _ROLES:
        return Message(_ROLES[role], _content(msg.get("content"), f"{path}.content"))
    if role == "assistant":
        calls = _tool_calls(msg.get("tool_calls"), f"{path}.tool_calls")
        text = _content(msg.get("content"), f"{path}.content", nullable=True)
        return Message("assistant", text, tool_calls=calls)
    if role == "tool":
        call_id = fields.text(msg.get("tool_call_id"), f"{path}.tool_call_id", nonempty=True)
        return Message(
            "tool", _content(msg.get("content"), f"{path}.content"), tool_call_id=call_id
        )
    fields.fail(f"{path}.role", "must be one of system, developer, user, assistant, tool")


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(fields.list_of(value, "tools", MAX_TOOLS)):
        tool = fields.obj(raw, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            continue  # custom grammar tools, hosted tools: nothing we can offer
        function = fields.obj(tool.get("function"), f"tools[{i}].function")
        name = fields.text(
            function.get("name"), f"tools[{i}].function.name", nonempty=True, cap=MAX_NAME
        )
        if name in seen:
            fields.fail(f"tools[{i}].function.name", f"{name!r} is defined twice")
        seen.add(name)
        description = function.get("description")
        if description is not None:
            fields.text(description, f"tools[{i}].function.description")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        specs.append(
            ToolSpec(
                name, description or "", fields.obj(parameters, f"tools[{i}].function.parameters")
            )
        )
    return tuple(specs)


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    items = fields.list_of(value, "stop", MAX_STOP)
    return tuple(fields.text(s, f"stop[{i}]", nonempty=True) for i, s in enumerate(items))


def _check_ignored(body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        fields.fail("tool_choice", "must be none, auto, required or an object with a type")
    if choice["type"] == "function":
        function = fields.obj(choice.get("function"), "tool_choice.function")
        fields.text(function.get("name"), "tool_choice.function.name", nonempty=True)


def parse_chat(body: object) -> tuple[ChatRequest, ChatOptions]:
    """A ``POST /v1/chat/completions`` body (decoded JSON) as a request and its options."""
    data = fields.obj(body, "the body")
    model = fields.text(data.get("model"), "model", nonempty=True, cap=MAX_NAME)
    max_tokens: int | None = None
    for key in ("max_completion_tokens", "max_tokens"):
        if data.get(key) is not None:
            max_tokens = fields.integer(data[key], key, 1)
            break
    temperature = data.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            fields.fail("temperature", "must be a number")
        if not 0 <= temperature <= 2:
            fields.fail("temperature", "must be between 0 and 2")
        temperature = float(temperature)
    n = data.get("n")
    if n is not None and fields.integer(n, "n", 1) != 1:
        fields.fail("n", "must be 1: this gateway returns one choice")
    stream = data.get("stream")
    stream = False if stream is None else fields.boolean(stream, "stream")
    include_usage = False
    if data.get("stream_options") is not None:
        raw_include = fields.obj(data["stream_options"], "stream_options").get("include_usage")
        if raw_include is not None:
            include_usage = fields.boolean(raw_include, "stream_options.include_usage")
    user = data.get("user")
    if user is not None:
        user = fields.text(user, "user", cap=MAX_USER)
    stop = _stop(data.get("stop"))
    _check_ignored(data)
    raw_messages = fields.list_of(data.get("messages"), "messages", MAX_MESSAGES)
    if not raw_messages:
        fields.fail("messages", "must hold at least one message")
    messages = tuple(_message(m, f"messages[{i}]") for i, m in enumerate(raw_messages))
    request = ChatRequest(
        messages, _tools(data.get("tools")), temperature=temperature, max_tokens=max_tokens
    )
    return request, ChatOptions(model, stream, include_usage, max_tokens, stop, user)


# --- replies -----------------------------------------------------------------------


def finish_reason(response: ChatResponse) -> str:
    """Our ``finish_reason`` (from any provider) as an OpenAI one."""
    reason = response.finish_reason
    if response.tool_calls or reason in ("tool_calls", "tool_use"):
        return "tool_calls"
    if reason in ("length", "max_tokens"):
        return "length"
    if reason in ("content_filter", "refusal"):
        return "content_filter"
    return "stop"


def _usage(response: ChatResponse) -> dict[str, int]:
    u = response.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
    }


def _call_json(call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": call.id, "type": "function", "function": function}


def completion_json(
    response: ChatResponse, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """The whole ``chat.completion`` object of a non-streamed reply."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.text or (None if response.tool_calls else ""),
        "refusal": None,
    }
    if response.tool_calls:
        message["tool_calls"] = [_call_json(c) for c in response.tool_calls]
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(response),
        "logprobs": None,
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(response),
    }


def error_json(status: int, message: str) -> dict[str, Any]:
    """An error body for an HTTP status, in OpenAI's shape."""
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    kind, code = ERROR_TYPES.get(status, default)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _frame(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ChunkStream:
    """The SSE frames of one streamed reply, from ``start`` to ``finish`` (or ``error``).

    Not thread-safe; one per reply. ``event`` returns ``b""`` for events that
    write nothing (empty text, ``done``: pass the final response to ``finish``).
    """

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._sent_text = False
        self._sent_calls: dict[str, int] = {}  # call id -> its index in the delta

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _frame({**self._head, "choices": [choice]})

    def start(self, model: str, completion_id: str, created: int) -> bytes:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        return self._chunk({"role": "assistant", "content": ""})

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        self._sent_text = True
        return self._chunk({"content": text})

    def _tool_call(self, call: ToolCall) -> bytes:
        index = self._sent_calls.setdefault(call.id, len(self._sent_calls))
        return self._chunk({"tool_calls": [{"index": index, **_call_json(call)}]})

    def event(self, ev: StreamEvent) -> bytes:
        if ev.kind == "text":
            return self._text(ev.text)
        if ev.kind == "tool_call" and ev.tool_call is not None:
            return self._tool_call(ev.tool_call)
        return b""

    def finish(self, response: ChatResponse, include_usage: bool) -> bytes:
        """Close the reply. Content of ``response`` no event carried (text, when none was
        streamed; tool calls by id) is written first, so a reply that was not streamed
        at all still arrives whole."""
        out = b"" if self._sent_text else self._text(response.text)
        for call in response.tool_calls:
            if call.id not in self._sent_calls:
                out += self._tool_call(call)
        reason = "tool_calls" if self._sent_calls else finish_reason(response)
        out += self._chunk({}, reason)
        if include_usage:
            out += _frame({**self._head, "choices": [], "usage": _usage(response)})
        return out + b"data: [DONE]\n\n"

    def error(self, kind: str, message: str) -> bytes:
        return _frame({"error": {"message": message, "type": kind, "param": None, "code": None}})
