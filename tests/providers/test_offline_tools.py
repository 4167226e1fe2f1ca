from __future__ import annotations

import json

from cfn.providers.clients.offline import BANNER, OfflineClient
from cfn.providers.types import ChatRequest, Message, ToolCall, ToolSpec

TOOLS = (ToolSpec("write_file"), ToolSpec("read_file"))


async def test_first_turn_with_write_tool_is_a_labelled_write() -> None:
    client = OfflineClient()
    request = ChatRequest.of("Build fizzbuzz", tools=TOOLS)
    first = await client.complete(request, "offline-1")
    (call,) = first.tool_calls
    args = json.loads(call.arguments)
    assert call.name == "write_file" and args["path"].startswith("offline/note-")
    assert BANNER in args["content"] and "No language model" in args["content"]
    again = await client.complete(request, "offline-1")
    assert again.tool_calls == first.tool_calls  # deterministic
    # After the tool answered, the reply is the JSON line with a confidence.
    follow = ChatRequest(
        messages=(
            *request.messages,
            Message("assistant", "", (call,)),
            Message("tool", "wrote 10 bytes", tool_call_id=call.id),
        ),
        tools=TOOLS,
    )
    final = await client.complete(follow, "offline-1")
    assert final.tool_calls == ()
    data = json.loads(final.text.splitlines()[-1])
    assert data["offline"] is True and 0.7 <= data["confidence"] <= 0.99


async def test_no_write_tool_no_tool_call() -> None:
    result = await OfflineClient().complete(
        ChatRequest.of("Review it", tools=(ToolSpec("read_file"),)), "offline-1"
    )
    assert result.tool_calls == () and result.text.startswith(BANNER)
    stream = [e async for e in OfflineClient().stream(ChatRequest.of("x", tools=TOOLS), "m")]
    assert stream[0].kind == "tool_call" and isinstance(stream[0].tool_call, ToolCall)
