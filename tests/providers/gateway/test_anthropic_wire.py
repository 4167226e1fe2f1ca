"""The Anthropic Messages wire format, checked against the official SDK's own parsers.

The SDK talks to an ``httpx2.MockTransport`` that stands in for the network:
it records what the SDK sends and answers with the bytes our module wrote.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.errors import InvalidInputError
from cfn.providers.gateway.anthropic_wire import (
    ERROR_KINDS,
    MessagesOptions,
    MessageStream,
    count_tokens_json,
    error_json,
    error_kind,
    message_json,
    parse_count_tokens,
    parse_messages,
)
from cfn.providers.types import (
    ChatRequest,
    ChatResponse,
    Message,
    StreamEvent,
    ToolCall,
    ToolSpec,
    Usage,
)
from tests.support.lazy import LazyModule

anthropic = LazyModule("anthropic")  # imported by the worker that runs these tests
# One xdist worker runs the tests that import the SDKs (seconds of CPU each).
pytestmark = pytest.mark.xdist_group("llm-sdks")

Body = dict[str, Any]


def sdk(
    reply: bytes | Body, status: int = 200, sent: list[Body] | None = None
) -> anthropic.Anthropic:
    """An SDK client whose every request gets ``reply`` (SSE bytes or a JSON body)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        if sent is not None:
            sent.append(json.loads(request.content))
        if isinstance(reply, bytes):
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(status, content=reply, headers=headers)
        return httpx2.Response(status, json=reply)

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    return anthropic.Anthropic(
        api_key="test-key", base_url="http://gateway.test", http_client=http, max_retries=0
    )


def response(
    text: str = "",
    calls: tuple[ToolCall, ...] = (),
    finish: str | None = None,
    usage: tuple[int, int] = (12, 34),
) -> ChatResponse:
    return ChatResponse(
        text, "anthropic", "claude-test", Usage(*usage), 0.0, tool_calls=calls, finish_reason=finish
    )


def streamed(
    texts: list[str], calls: tuple[ToolCall, ...] = (), final: ChatResponse | None = None
) -> bytes:
    stream = MessageStream()
    out = stream.start("claude-test", "msg_1", 12) + stream.ping()
    for t in texts:
        out += stream.event(StreamEvent("text", text=t))
    for c in calls:
        out += stream.event(StreamEvent("tool_call", tool_call=c))
    done = final or response("".join(texts), calls)
    out += stream.event(StreamEvent("done", response=done))
    return out + stream.finish(done)


def ask(client: anthropic.Anthropic, **extra: Any) -> Any:
    return client.messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}], **extra
    )


# --- requests ----------------------------------------------------------------------

BASH_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "command": {"type": "string", "description": "The command to execute"},
        "timeout": {"type": "number"},
    },
    "required": ["command"],
    "additionalProperties": False,
}

CLAUDE_CODE_BODY: Body = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 32000,
    "stream": True,
    "temperature": 1,
    "system": [
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "text",
            "text": "You are an interactive CLI tool that helps users.",
            "cache_control": {"type": "ephemeral"},
        },
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>be brief</system-reminder>"},
                {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should run ls.", "signature": "EqQBCkYIB"},
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "Bash",
                    "input": {"command": "ls", "description": "List files"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": [{"type": "text", "text": "README.md\nsrc"}],
                },
                {"type": "text", "text": "now read the README"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
                {
                    "type": "tool_use",
                    "id": "toolu_01B",
                    "name": "Read",
                    "input": {"file_path": "/repo/README.md"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": "File does not exist.",
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ],
    "tools": [
        {"name": "Bash", "description": "Run a shell command", "input_schema": BASH_SCHEMA},
        {
            "name": "Read",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "metadata": {"user_id": "user_abc_account__session_123"},
    "thinking": {"type": "enabled", "budget_tokens": 4000},
    "tool_choice": {"type": "auto"},
    "context_management": {"edits": []},
}


def test_parse_claude_code_body() -> None:
    request, options = parse_messages(copy.deepcopy(CLAUDE_CODE_BODY))
    assert options == MessagesOptions(
        model="claude-sonnet-4-5-20250929",
        stream=True,
        max_tokens=32000,
        stop_sequences=(),
        metadata_user="user_abc_account__session_123",
    )
    assert request.max_tokens == 32000 and request.temperature == 1.0
    assert request.messages == (
        Message(
            "system",
            "You are Claude Code, Anthropic's official CLI for Claude.\n\n"
            "You are an interactive CLI tool that helps users.",
        ),
        Message("user", "<system-reminder>be brief</system-reminder>\n\nlist files"),
        Message(
            "assistant",
            "Let me look.",
            tool_calls=(
                ToolCall("toolu_01A", "Bash", '{"command": "ls", "description": "List files"}'),
            ),
        ),
        Message("tool", "README.md\nsrc", tool_call_id="toolu_01A"),
        Message("user", "now read the README"),
        Message(
            "assistant",
            "",
            tool_calls=(ToolCall("toolu_01B", "Read", '{"file_path": "/repo/README.md"}'),),
        ),
        Message("tool", "error: File does not exist.", tool_call_id="toolu_01B"),
    )
    assert [t.name for t in request.tools] == ["Bash", "Read"]  # web_search skipped
    assert request.tools[0] == ToolSpec("Bash", "Run a shell command", BASH_SCHEMA)


def test_parse_what_the_sdk_sends() -> None:
    """The request the official SDK builds parses into the same conversation."""
    sent: list[Body] = []
    client = sdk(message_json(response("ok"), "claude-test", "msg_1"), sent=sent)
    client.messages.create(
        model="claude-test",
        max_tokens=64,
        system="be terse",
        stop_sequences=["END"],
        metadata={"user_id": "agent-7"},
        tools=[{"name": "run", "description": "Run", "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "run", "input": {"x": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}],
            },
        ],
    )
    request, options = parse_messages(sent[0])
    assert request.messages == (
        Message("system", "be terse"),
        Message("user", "go"),
        Message("assistant", "", tool_calls=(ToolCall("t1", "run", '{"x": 1}'),)),
        Message("tool", "done", tool_call_id="t1"),
    )
    assert request.tools == (ToolSpec("run", "Run", {"type": "object"}),)
    assert options.stop_sequences == ("END",) and options.metadata_user == "agent-7"
    assert options.stream is False and options.model == "claude-test"


def test_parse_blocks_that_become_placeholders() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "shot:"}, image],
                    },
                    {"type": "document", "source": {}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t2", "is_error": True}],
            },
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]},
        ],
    }
    request, _ = parse_messages(body)
    assert request.messages == (
        Message("user", "[image omitted]\n\nwhat is this?"),
        Message("tool", "shot:\n[image omitted]", tool_call_id="t1"),
        Message("user", "[document omitted]"),
        Message("tool", "error", tool_call_id="t2"),
        # the thinking-only assistant turn is dropped
    )


def test_is_error_not_prefixed_twice() -> None:
    block = {"type": "tool_result", "tool_use_id": "t", "content": "Error: boom", "is_error": True}
    request, _ = parse_messages(
        {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [block]}]}
    )
    assert request.messages == (Message("tool", "Error: boom", tool_call_id="t"),)


def test_count_tokens_body() -> None:
    request = parse_count_tokens(
        {"model": "m", "system": "sys", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert request == ChatRequest((Message("system", "sys"), Message("user", "hi")))
    assert count_tokens_json(42) == {"input_tokens": 42}
    with pytest.raises(InvalidInputError, match="max_tokens"):
        parse_count_tokens({"model": "m", "max_tokens": 0, "messages": [{"role": "user"}]})


def _with(**changes: Any) -> Body:
    body: Body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def _user(*blocks: Any) -> Body:
    return _with(messages=[{"role": "user", "content": list(blocks)}])


def _assistant(*blocks: Any) -> Body:
    return _with(messages=[{"role": "assistant", "content": list(blocks)}])


INVALID: list[tuple[object, str]] = [
    ([], "the body must be a JSON object"),
    ("{}", "the body must be a JSON object"),
    ({"max_tokens": 10, "messages": []}, "model must be a string"),
    (_with(model=""), "model must not be empty"),
    (_with(model=7), "model must be a string"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens must be an int"),
    (_with(max_tokens=0), "max_tokens must be at least 1"),
    (_with(max_tokens=True), "max_tokens must be an integer"),
    (_with(max_tokens="10"), "max_tokens must be an integer"),
    (_with(messages="hi"), "messages must be a list"),
    (_with(messages={"role": "user"}), "messages must be a list"),
    (_with(messages=[]), "messages must hold at least one"),
    (_with(messages=[{"role": "user"}] * 10_001), "messages has 10001 items"),
    (_with(messages=["hi"]), "messages[0] must be a JSON object"),
    (_with(messages=[{"role": "tool", "content": "x"}]), "messages[0].role must be"),
    (_with(messages=[{"role": "user", "content": 5}]), "messages[0].content must be a list"),
    (_user("text"), "messages[0].content[0] must be a JSON object"),
    (_user({"text": "x"}), "messages[0].content[0].type must name"),
    (_user({"type": "Text!", "text": "x"}), "messages[0].content[0].type must name"),
    (_user({"type": "text", "text": 3}), "messages[0].content[0].text must be a string"),
    (_user({"type": "tool_result", "content": "x"}), "content[0].tool_use_id must be a string"),
    (_user({"type": "tool_result", "tool_use_id": ""}), "content[0].tool_use_id must not be"),
    (
        _user({"type": "tool_result", "tool_use_id": "t", "content": 1}),
        "messages[0].content[0].content must be a list",
    ),
    (
        _user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}),
        "messages[0].content[0].content[0].text must be a string",
    ),
    (
        _user({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}),
        "messages[0].content[0].is_error must be true or false",
    ),
    (_user({"type": "tool_use", "id": "t", "name": "n", "input": {}}), "belongs in an assistant"),
    (_assistant({"type": "tool_result", "tool_use_id": "t"}), "belongs in a user message"),
    (_assistant({"type": "tool_use", "name": "n", "input": {}}), "content[0].id must be a str"),
    (_assistant({"type": "tool_use", "id": "t", "input": {}}), "content[0].name must be a str"),
    (
        _assistant({"type": "tool_use", "id": "t", "name": "n", "input": "{}"}),
        "messages[0].content[0].input must be a JSON object",
    ),
    (_with(system=5), "system must be a list"),
    (_with(system=[{"type": "image"}]), "system[0].type must be 'text'"),
    (_with(system=[{"type": "text"}]), "system[0].text must be a string"),
    (_with(tools={"name": "x"}), "tools must be a list"),
    (_with(tools=["x"]), "tools[0] must be a JSON object"),
    (_with(tools=[{"input_schema": {}}]), "tools[0].name must be a string"),
    (_with(tools=[{"name": "x"}]), "tools[0].input_schema must be a JSON object"),
    (_with(tools=[{"name": "x", "input_schema": {}, "description": 1}]), "tools[0].description"),
    (_with(tools=[{"name": "x", "input_schema": {}, "type": 3}]), "tools[0].type must be a str"),
    (
        _with(tools=[{"name": "x", "input_schema": {}}, {"name": "x", "input_schema": {}}]),
        "tools[1].name 'x' is defined twice",
    ),
    (_with(temperature="hot"), "temperature must be a number"),
    (_with(temperature=1.5), "temperature must be between 0 and 1"),
    (_with(stream="yes"), "stream must be true or false"),
    (_with(stop_sequences="END"), "stop_sequences must be a list"),
    (_with(stop_sequences=[""]), "stop_sequences[0] must not be empty"),
    (_with(stop_sequences=[1]), "stop_sequences[0] must be a string"),
    (_with(metadata="x"), "metadata must be a JSON object"),
    (_with(metadata={"user_id": 5}), "metadata.user_id must be a string"),
    (_with(tool_choice="auto"), "tool_choice must be a JSON object"),
    (_with(tool_choice={"type": "maybe"}), "tool_choice.type must be one of"),
    (_with(tool_choice={"type": ["auto"]}), "tool_choice.type must be one of"),
    (_with(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role must be"),
    (_with(tool_choice={"type": "tool"}), "tool_choice.name must be a string"),
    (_with(thinking=True), "thinking must be a JSON object"),
    (_with(top_p=2), "top_p must be between 0 and 1"),
    (_with(top_k=-1), "top_k must be at least 0"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
def test_invalid_body_names_the_field(body: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid request body: ") as caught:
        parse_messages(body)
    assert message in str(caught.value)


def test_accepted_optional_fields() -> None:
    request, options = parse_messages(
        _with(
            tool_choice={"type": "tool", "name": "x"},
            top_p=0.5,
            top_k=10,
            stop_sequences=["a", "b"],
            stream=False,
            system=None,
            tools=[{"type": "custom", "name": "x", "input_schema": {"type": "object"}}],
        )
    )
    assert options.stop_sequences == ("a", "b") and not options.stream
    assert request.tools == (ToolSpec("x", "", {"type": "object"}),)
    assert request.messages == (Message("user", "hi"),)


FUZZ_KEYS = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "id",
    "name",
    "tools",
    "description",
    "temperature",
    "stream",
    "tool_choice",
    "top_p",
    "max_tokens",
    "system",
    "tool_use_id",
    "input",
    "is_error",
    "input_schema",
    "stop_sequences",
    "metadata",
    "user_id",
    "thinking",
    "top_k",
]
FUZZ_WORDS = ["user", "assistant", "system", "developer", "tool", "text", "tool_use"]
FUZZ_WORDS += ["tool_result", "image", "thinking", "function", "custom", "auto", "m", "{}"]
FUZZ_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.floats(allow_nan=False)
    | st.sampled_from(FUZZ_WORDS)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FUZZ_KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
FUZZ_FIELDS = st.dictionaries(st.sampled_from(FUZZ_KEYS), FUZZ_JSON, max_size=4)
#: Objects with a plausible ``type`` or ``role`` and random other fields, so that
#: examples get past the first checks and into the blocks and calls.
FUZZ_BLOCK = st.builds(
    lambda kind, rest: {**rest, "type": kind}, st.sampled_from(FUZZ_WORDS), FUZZ_FIELDS
)
FUZZ_CONTENT = st.text(max_size=3) | st.lists(FUZZ_BLOCK | FUZZ_JSON, max_size=3)
FUZZ_MESSAGE = st.builds(
    lambda role, content, rest: {**rest, "role": role, "content": content},
    st.sampled_from(["user", "assistant", "user", "assistant", "system"]),
    FUZZ_CONTENT,
    FUZZ_FIELDS,
)
FUZZ_BODY = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "max_tokens": st.just(5),
        "messages": st.lists(FUZZ_MESSAGE, min_size=1, max_size=4),
    },
    optional={"tools": st.lists(FUZZ_BLOCK, max_size=2)},
)


@settings(max_examples=200, deadline=None)
@given(FUZZ_JSON | FUZZ_BODY)
def test_any_json_parses_or_is_refused_cleanly(body: object) -> None:
    """Whatever a client sends, the answer is a request or InvalidInputError, never a crash."""
    with contextlib.suppress(InvalidInputError):
        parse_messages(body)


# --- non-streamed replies ------------------------------------------------------------


def test_message_json_through_the_sdk() -> None:
    reply = response(
        "Running it.",
        (ToolCall("toolu_1", "run", '{"cmd": "ls -la"}'), ToolCall("toolu_2", "ping", "")),
        finish="tool_calls",
        usage=(100, 20),
    )
    body = message_json(reply, "claude-test", "msg_abc")
    message = ask(sdk(body))
    assert message.id == "msg_abc" and message.model == "claude-test"
    assert message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Running it."
    assert (message.content[1].id, message.content[1].name) == ("toolu_1", "run")
    assert message.content[1].input == {"cmd": "ls -la"}
    assert message.content[2].input == {}
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (100, 20)


@pytest.mark.parametrize(
    ("finish", "calls", "expected"),
    [
        (None, (), "end_turn"),
        ("stop", (), "end_turn"),
        ("end_turn", (), "end_turn"),
        ("length", (), "max_tokens"),
        ("max_tokens", (), "max_tokens"),
        ("stop_sequence", (), "stop_sequence"),
        ("tool_use", (), "tool_use"),
        ("content_filter", (), "refusal"),
        ("stop", (ToolCall("t", "f"),), "tool_use"),
    ],
)
def test_stop_reason(finish: str | None, calls: tuple[ToolCall, ...], expected: str) -> None:
    body = message_json(response("x", calls, finish), "m", "msg")
    assert body["stop_reason"] == expected
    assert ask(sdk(body)).stop_reason == expected


def test_broken_tool_arguments_keep_the_raw_text() -> None:
    calls = (ToolCall("t1", "run", '{"cmd": "ls'), ToolCall("t2", "run", "[1, 2]"))
    body = message_json(response("", calls), "m", "msg")
    assert body["content"] == [
        {"type": "tool_use", "id": "t1", "name": "run", "input": {"_raw": '{"cmd": "ls'}},
        {"type": "tool_use", "id": "t2", "name": "run", "input": {"_raw": "[1, 2]"}},
    ]
    final = sdk(streamed([], calls)).messages.stream(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    with final as stream:
        message: Any = stream.get_final_message()  # content: a union of many block types
    assert [b.input for b in message.content] == [{"_raw": '{"cmd": "ls'}, {"_raw": "[1, 2]"}]


def test_empty_reply_has_no_content() -> None:
    body = message_json(response(""), "m", "msg")
    assert body["content"] == [] and body["stop_reason"] == "end_turn"
    assert ask(sdk(body)).content == []


# --- streamed replies ----------------------------------------------------------------


def test_stream_through_the_sdk_helper() -> None:
    calls = (ToolCall("toolu_9", "grep", '{"pattern": "TODO", "path": "src"}'),)
    data = streamed(["Hel", "lo, ", "", "wörld ✓"], calls, response("Hello, wörld ✓", calls))
    client = sdk(data)
    with client.messages.stream(
        model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert "".join(stream.text_stream) == "Hello, wörld ✓"
        message: Any = stream.get_final_message()  # content: a union of many block types
    assert message.id == "msg_1" and message.model == "claude-test"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Hello, wörld ✓"
    tool = message.content[1]
    assert (tool.id, tool.name, tool.input) == (
        "toolu_9",
        "grep",
        {"pattern": "TODO", "path": "src"},
    )
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 34)


def test_stream_event_sequence_is_the_apis() -> None:
    calls = (ToolCall("t1", "a", '{"x": 1}'), ToolCall("t2", "b", "{}"))
    events = list(ask(sdk(streamed(["a", "b"], calls)), stream=True))
    assert [(e.type, getattr(e, "index", None)) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert (start.usage.input_tokens, start.usage.output_tokens) == (12, 1)
    assert events[5].content_block.input == {}
    assert events[6].delta.type == "input_json_delta"
    assert events[-2].delta.stop_reason == "tool_use" and events[-2].usage.output_tokens == 34


def test_raw_frames() -> None:
    stream = MessageStream()
    assert stream.ping() == b'event: ping\ndata: {"type":"ping"}\n\n'
    stream.start("m", "msg", 3)
    assert stream.event(StreamEvent("text", text="")) == b""
    assert stream.event(StreamEvent("done", response=response())) == b""
    frames = stream.event(StreamEvent("text", text="a\nb")).split(b"\n\n")
    assert frames[0] == (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}'
    )
    assert frames[1].startswith(b"event: content_block_delta\ndata: ")
    assert json.loads(frames[1].split(b"data: ", 1)[1])["delta"]["text"] == "a\nb"
    assert stream.error("overloaded_error", "Overloaded") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )


def test_non_ascii_is_escaped_in_frames() -> None:
    stream = MessageStream()
    frame = stream.event(StreamEvent("text", text="line\u2028sep é"))
    assert frame.isascii()


def test_finish_sends_what_was_not_streamed() -> None:
    """A reply the gateway got whole (no events) still reaches the client whole."""
    calls = (ToolCall("t1", "run", '{"a": [1]}'),)
    stream = MessageStream()
    data = stream.start("m", "msg_2", 0) + stream.finish(response("whole text", calls, "stop"))
    with sdk(data).messages.stream(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        message: Any = s.get_final_message()
    assert message.content[0].text == "whole text"
    assert (message.content[1].id, message.content[1].input) == ("t1", {"a": [1]})
    assert message.stop_reason == "tool_use"
    # input tokens known only at the end replace the estimate of message_start
    assert message.usage.input_tokens == 12


def test_streamed_calls_are_not_sent_twice() -> None:
    call = ToolCall("t1", "run", "{}")
    data = streamed(["x"], (call,), response("x", (call,)))
    assert data.count(b'"id":"t1"') == 1


def test_error_mid_stream_raises_in_the_sdk() -> None:
    stream = MessageStream()
    data = (
        stream.start("m", "msg", 1)
        + stream.event(StreamEvent("text", text="partial"))
        + stream.error("overloaded_error", "upstream is overloaded")
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(ask(sdk(data), stream=True))
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "upstream is overloaded"},
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=12))
def test_any_chunking_reassembles(chunks: list[str]) -> None:
    data = streamed(chunks, final=response("".join(chunks), finish="end_turn"))
    events = list(ask(sdk(data), stream=True))
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == "".join(chunks)
    starts = [e for e in events if e.type == "content_block_start"]
    assert len(starts) == (1 if "".join(chunks) else 0)


# --- errors --------------------------------------------------------------------------

#: (status, the SDK's exception class by name: the SDK is imported when a test runs)
STATUS_ERRORS: list[tuple[int, str]] = [
    (400, "BadRequestError"),
    (401, "AuthenticationError"),
    (403, "PermissionDeniedError"),
    (404, "NotFoundError"),
    (413, "APIStatusError"),
    (429, "RateLimitError"),
    (500, "InternalServerError"),
    (529, "APIStatusError"),
]


@pytest.mark.parametrize(("status", "exc"), STATUS_ERRORS)
def test_error_bodies_through_the_sdk(status: int, exc: str) -> None:
    body = error_json(ERROR_KINDS[status], "no luck")
    with pytest.raises(getattr(anthropic, exc)) as caught:
        ask(sdk(body, status=status))
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": ERROR_KINDS[status], "message": "no luck"},
    }
    assert "no luck" in str(caught.value)


def test_error_kind_defaults() -> None:
    assert error_kind(429) == "rate_limit_error"
    assert error_kind(422) == "invalid_request_error"
    assert error_kind(502) == "api_error"
