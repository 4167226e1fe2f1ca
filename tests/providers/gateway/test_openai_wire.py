"""The OpenAI Chat Completions wire format, checked against the official SDK's parsers.

The SDK talks to an ``httpx2.MockTransport`` that stands in for the network:
it records what the SDK sends and answers with the bytes our module wrote.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.errors import InvalidInputError
from cfn.providers.gateway.openai_wire import (
    ChatOptions,
    ChunkStream,
    completion_json,
    error_json,
    parse_chat,
)
from cfn.providers.types import ChatResponse, Message, StreamEvent, ToolCall, ToolSpec, Usage
from tests.support.lazy import LazyModule

openai = LazyModule("openai")  # imported by the worker that runs these tests
# One xdist worker runs the tests that import the SDKs (seconds of CPU each).
pytestmark = pytest.mark.xdist_group("llm-sdks")

Body = dict[str, Any]
CREATED = 1_700_000_000


def sdk(reply: bytes | Body, status: int = 200, sent: list[Body] | None = None) -> openai.OpenAI:
    """An SDK client whose every request gets ``reply`` (SSE bytes or a JSON body)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        if sent is not None:
            sent.append(json.loads(request.content))
        if isinstance(reply, bytes):
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(status, content=reply, headers=headers)
        return httpx2.Response(status, json=reply)

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    return openai.OpenAI(
        api_key="test-key", base_url="http://gateway.test/v1", http_client=http, max_retries=0
    )


def response(
    text: str = "",
    calls: tuple[ToolCall, ...] = (),
    finish: str | None = None,
    usage: tuple[int, int] = (12, 34),
) -> ChatResponse:
    return ChatResponse(
        text, "zai", "glm-test", Usage(*usage), 0.0, tool_calls=calls, finish_reason=finish
    )


def streamed(
    texts: list[str],
    calls: tuple[ToolCall, ...] = (),
    final: ChatResponse | None = None,
    include_usage: bool = True,
) -> bytes:
    stream = ChunkStream()
    out = stream.start("glm-test", "chatcmpl-1", CREATED)
    for t in texts:
        out += stream.event(StreamEvent("text", text=t))
    for c in calls:
        out += stream.event(StreamEvent("tool_call", tool_call=c))
    done = final or response("".join(texts), calls)
    out += stream.event(StreamEvent("done", response=done))
    return out + stream.finish(done, include_usage)


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="glm-test", messages=[{"role": "user", "content": "hi"}], **extra
    )


# --- requests ----------------------------------------------------------------------

RUN_TOOL: Body = {
    "type": "function",
    "function": {
        "name": "run",
        "description": "Run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string"}},
            "required": ["cmd"],
        },
    },
}


def test_parse_what_the_sdk_sends() -> None:
    sent: list[Body] = []
    client = sdk(completion_json(response("ok"), "glm-test", "c1", CREATED), sent=sent)
    create: Any = client.chat.completions.create  # a custom tool is outside its typed params
    create(
        model="glm-test",
        temperature=0.3,
        max_completion_tokens=256,
        stop=["END"],
        user="agent-7",
        tools=[RUN_TOOL, {"type": "custom", "custom": {"name": "grammar_tool"}}],
        tool_choice="auto",
        messages=[
            {"role": "developer", "content": "be terse"},
            {"role": "user", "content": [{"type": "text", "text": "list"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "run", "arguments": '{"cmd": "ls"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        ],
    )
    request, options = parse_chat(sent[0])
    assert request.messages == (
        Message("system", "be terse"),
        Message("user", "list"),
        Message("assistant", "", tool_calls=(ToolCall("call_1", "run", '{"cmd": "ls"}'),)),
        Message("tool", "a.txt", tool_call_id="call_1"),
    )
    assert request.tools == (
        ToolSpec("run", "Run a shell command", RUN_TOOL["function"]["parameters"]),
    )
    assert request.temperature == 0.3 and request.max_tokens == 256
    assert options == ChatOptions(
        model="glm-test",
        stream=False,
        include_usage=False,
        max_tokens=256,
        stop=("END",),
        user="agent-7",
    )


def test_parse_parts_and_options() -> None:
    request, options = parse_chat(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 50,
            "n": 1,
            "stop": "STOP",
            "tool_choice": {"type": "function", "function": {"name": "run"}},
            "top_p": 0.9,
            "seed": 3,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "sys"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,xx"}},
                        {"type": "text", "text": "this?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                {"role": "assistant", "content": "sure", "tool_calls": []},
                {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "r"}]},
            ],
            "tools": [
                {"type": "function", "function": {"name": "bare"}},
                {"function": {"name": "untyped", "parameters": {"type": "object"}}},
                {"type": "custom", "custom": {"name": "grammar"}},
            ],
        }
    )
    assert request.messages == (
        Message("system", "sys"),
        Message("user", "what is\n\n[image_url omitted]\n\nthis?"),
        Message("assistant", "no"),
        Message("assistant", "sure"),
        Message("tool", "r", tool_call_id="c"),
    )
    assert request.tools == (
        ToolSpec("bare", "", {"type": "object", "properties": {}}),
        ToolSpec("untyped", "", {"type": "object"}),
    )
    assert options == ChatOptions("m", True, True, 50, ("STOP",), None)


def test_other_tool_choices_and_empty_stop() -> None:
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
    for choice in ("none", "required", allowed):
        request, options = parse_chat(_with(tool_choice=choice, stop=""))
        assert options.stop == () and request.messages == (Message("user", "hi"),)


def test_max_completion_tokens_wins() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "messages": [{"role": "user", "content": "x"}],
    }
    request, options = parse_chat(body)
    assert request.max_tokens == options.max_tokens == 20


def _with(**changes: Any) -> Body:
    body: Body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def _msg(**fields: Any) -> Body:
    return _with(messages=[fields])


def _call(**fields: Any) -> Body:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    call.update(fields)
    return _msg(role="assistant", content=None, tool_calls=[call])


INVALID: list[tuple[object, str]] = [
    ([], "the body must be a JSON object"),
    ({"messages": []}, "model must be a string"),
    (_with(model=""), "model must not be empty"),
    (_with(messages=None), "messages must be a list"),
    (_with(messages=[]), "messages must hold at least one"),
    (_with(messages=[{}] * 10_001), "messages has 10001 items"),
    (_with(messages=[1]), "messages[0] must be a JSON object"),
    (_msg(role="function", content="x"), "messages[0].role must be one of"),
    (_msg(role=["user"], content="x"), "messages[0].role must be one of"),
    (_msg(role="user"), "messages[0].content must be a list"),
    (_msg(role="user", content=None), "messages[0].content must be a list"),
    (_msg(role="user", content=[{"text": "x"}]), "messages[0].content[0].type must name"),
    (_msg(role="user", content=[{"type": "text"}]), "messages[0].content[0].text must be a str"),
    (_msg(role="system", content=7), "messages[0].content must be a list"),
    (_msg(role="tool", content="x"), "messages[0].tool_call_id must be a string"),
    (_msg(role="tool", content="x", tool_call_id=""), "messages[0].tool_call_id must not be"),
    (_msg(role="assistant", tool_calls={}), "messages[0].tool_calls must be a list"),
    (_call(type="custom"), "messages[0].tool_calls[0].type must be 'function'"),
    (_call(id=None), "messages[0].tool_calls[0].id must be a string"),
    (_call(function="f"), "messages[0].tool_calls[0].function must be a JSON object"),
    (_call(function={"arguments": "{}"}), "tool_calls[0].function.name must be a string"),
    (
        _call(function={"name": "f", "arguments": {"a": 1}}),
        "messages[0].tool_calls[0].function.arguments must be a string",
    ),
    (_with(tools="run"), "tools must be a list"),
    (_with(tools=[{"type": "function"}]), "tools[0].function must be a JSON object"),
    (_with(tools=[{"type": "function", "function": {}}]), "tools[0].function.name must be"),
    (
        _with(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
        "tools[0].function.parameters must be a JSON object",
    ),
    (
        _with(tools=[{"type": "function", "function": {"name": "f", "description": 1}}]),
        "tools[0].function.description must be a string",
    ),
    (_with(tools=[RUN_TOOL, RUN_TOOL]), "tools[1].function.name 'run' is defined twice"),
    (_with(temperature="warm"), "temperature must be a number"),
    (_with(temperature=2.5), "temperature must be between 0 and 2"),
    (_with(max_tokens=0), "max_tokens must be at least 1"),
    (_with(max_completion_tokens=1.5), "max_completion_tokens must be an integer"),
    (_with(n=2), "n must be 1: this gateway returns one choice"),
    (_with(n="1"), "n must be an integer"),
    (_with(stream=1), "stream must be true or false"),
    (_with(stream_options=True), "stream_options must be a JSON object"),
    (_with(stream_options={"include_usage": "y"}), "stream_options.include_usage must be"),
    (_with(stop=["a", 1]), "stop[1] must be a string"),
    (_with(stop=["a"] * 5), "stop has 5 items; at most 4"),
    (_with(user=5), "user must be a string"),
    (_with(tool_choice="sometimes"), "tool_choice must be none, auto, required"),
    (_with(tool_choice=["auto"]), "tool_choice must be none, auto, required"),
    (_with(tool_choice={"function": {"name": "f"}}), "tool_choice must be none, auto, required"),
    (_with(tool_choice={"type": "function"}), "tool_choice.function must be a JSON object"),
    (
        _with(tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name must be a string",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
def test_invalid_body_names_the_field(body: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid request body: ") as caught:
        parse_chat(body)
    assert message in str(caught.value)


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
    "tool_calls",
    "tool_call_id",
    "function",
    "arguments",
    "parameters",
    "stream_options",
    "include_usage",
    "n",
    "user",
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
    st.sampled_from(["user", "assistant", "tool", "system", "developer"]),
    FUZZ_CONTENT,
    FUZZ_FIELDS,
)
FUZZ_BODY = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(FUZZ_MESSAGE, min_size=1, max_size=4)},
    optional={"tools": st.lists(FUZZ_BLOCK, max_size=2)},
)


@settings(max_examples=200, deadline=None)
@given(FUZZ_JSON | FUZZ_BODY)
def test_any_json_parses_or_is_refused_cleanly(body: object) -> None:
    """Whatever a client sends, the answer is a request or InvalidInputError, never a crash."""
    with contextlib.suppress(InvalidInputError):
        parse_chat(body)


# --- non-streamed replies ------------------------------------------------------------


def test_completion_json_through_the_sdk() -> None:
    calls = (ToolCall("call_1", "run", '{"cmd": "ls"}'), ToolCall("call_2", "ping", "{}"))
    body = completion_json(response("", calls, "tool_use", (100, 20)), "glm-test", "c-9", CREATED)
    completion = ask(sdk(body))
    assert completion.id == "c-9" and completion.created == CREATED
    assert completion.model == "glm-test" and completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_1", "run", '{"cmd": "ls"}'),
        ("call_2", "ping", "{}"),
    ]
    assert choice.finish_reason == "tool_calls"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 20, 120)


def test_text_reply() -> None:
    completion = ask(sdk(completion_json(response("hello"), "m", "c", CREATED)))
    message = completion.choices[0].message
    assert message.content == "hello" and message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    empty = completion_json(response(""), "m", "c", CREATED)
    assert empty["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    ("finish", "calls", "expected"),
    [
        (None, (), "stop"),
        ("end_turn", (), "stop"),
        ("stop_sequence", (), "stop"),
        ("length", (), "length"),
        ("max_tokens", (), "length"),
        ("tool_use", (), "tool_calls"),
        ("refusal", (), "content_filter"),
        ("end_turn", (ToolCall("t", "f"),), "tool_calls"),
    ],
)
def test_finish_reason(finish: str | None, calls: tuple[ToolCall, ...], expected: str) -> None:
    body = completion_json(response("x", calls, finish), "m", "c", CREATED)
    assert ask(sdk(body)).choices[0].finish_reason == expected


# --- streamed replies ----------------------------------------------------------------


def test_stream_through_the_sdk() -> None:
    calls = (ToolCall("call_1", "run", '{"cmd": "ls"}'), ToolCall("call_2", "grep", "{}"))
    data = streamed(["Hel", "lo ", "", "wörld ✓"], calls, response("Hello wörld ✓", calls))
    chunks = list(ask(sdk(data), stream=True, stream_options={"include_usage": True}))
    assert all(c.id == "chatcmpl-1" and c.created == CREATED for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello wörld ✓"
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.id, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "call_1", "run", '{"cmd": "ls"}'),
        (1, "call_2", "grep", "{}"),
    ]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 34)


def test_stream_helper_accumulates() -> None:
    calls = (ToolCall("call_7", "run", '{"cmd": "pwd"}'),)
    data = streamed(["Looking", "..."], calls)
    with sdk(data).chat.completions.stream(
        model="glm-test",
        messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Looking..."
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_7",
        "run",
        {"cmd": "pwd"},
    )
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens == 46


def test_stream_without_usage_ends_with_done() -> None:
    data = streamed(["a"], include_usage=False)
    assert data.endswith(b'"finish_reason":"stop","logprobs":null}]}\n\ndata: [DONE]\n\n')
    assert b'"usage"' not in data
    chunks = list(ask(sdk(data), stream=True))
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]


def test_frames_are_data_lines() -> None:
    stream = ChunkStream()
    first = stream.start("m", "c", CREATED)
    assert first == (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"m",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"finish_reason":null,"logprobs":null}]}\n\n'
    )
    assert stream.event(StreamEvent("text", text="")) == b""
    assert stream.event(StreamEvent("done", response=response())) == b""
    assert stream.event(StreamEvent("text", text="\u2028é\n")).isascii()


def test_finish_sends_what_was_not_streamed() -> None:
    calls = (ToolCall("call_1", "run", "{}"),)
    stream = ChunkStream()
    data = stream.start("m", "c", CREATED) + stream.finish(response("whole", calls), True)
    chunks = list(ask(sdk(data), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "whole"
    assert [tc.id for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()] == [
        "call_1"
    ]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


def test_error_mid_stream_raises_in_the_sdk() -> None:
    stream = ChunkStream()
    data = (
        stream.start("m", "c", CREATED)
        + stream.event(StreamEvent("text", text="part"))
        + stream.error("server_error", "upstream went away")
    )
    with pytest.raises(openai.APIError, match="upstream went away") as caught:
        list(ask(sdk(data), stream=True))
    assert caught.value.body == {
        "message": "upstream went away",
        "type": "server_error",
        "param": None,
        "code": None,
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=12))
def test_any_chunking_reassembles(chunks: list[str]) -> None:
    data = streamed(chunks)
    events = list(ask(sdk(data), stream=True))
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == "".join(chunks)


# --- errors --------------------------------------------------------------------------

#: (status, the SDK's exception class by name: the SDK is imported when a test runs, kind)
STATUS_ERRORS: list[tuple[int, str, str]] = [
    (400, "BadRequestError", "invalid_request_error"),
    (401, "AuthenticationError", "authentication_error"),
    (403, "PermissionDeniedError", "permission_error"),
    (404, "NotFoundError", "invalid_request_error"),
    (413, "APIStatusError", "invalid_request_error"),
    (422, "UnprocessableEntityError", "invalid_request_error"),
    (429, "RateLimitError", "rate_limit_error"),
    (500, "InternalServerError", "server_error"),
    (503, "InternalServerError", "server_error"),
]


@pytest.mark.parametrize(("status", "exc", "kind"), STATUS_ERRORS)
def test_error_bodies_through_the_sdk(status: int, exc: str, kind: str) -> None:
    body = error_json(status, "no luck")
    assert body["error"]["type"] == kind
    with pytest.raises(getattr(openai, exc)) as caught:
        ask(sdk(body, status=status))
    assert caught.value.status_code == status
    assert caught.value.message.endswith("no luck") or "no luck" in str(caught.value)
    assert caught.value.type == kind
    assert caught.value.code == body["error"]["code"]
