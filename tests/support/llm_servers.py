"""A local stand-in for LLM APIs that speaks their real wire formats.

One threaded HTTP/1.1 server answers both OpenAI chat completions
(``POST /v1/chat/completions``: JSON, or SSE ``data:`` chunks ending in
``[DONE]``) and Anthropic Messages (``POST /v1/messages``: JSON, or the named
SSE events ``message_start`` ... ``message_stop``). Tests script replies in
order (``push``); with nothing scripted it answers a plain "ok" in whichever
format and mode the request asked for. Scripted replies can also be error
bodies, 429 with Retry-After, 5xx, a slow answer, a connection closed before
any response, or a stream cut off mid-way (chunked encoding left unfinished,
which clients see as a broken connection, not as a clean end).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: SSE events as (event name or None, data text); set for a streamed reply.
    events: list[tuple[str | None, str]] | None = None
    delay: float = 0.0
    event_delay: float = 0.0
    #: Close the connection without any response.
    drop: bool = False
    #: Close the connection after this many SSE events (mid-stream).
    drop_after: int | None = None


Script = Reply | Callable[[Recorded], Reply]


# --- OpenAI chat completions -------------------------------------------------------


def _oa_tool_calls(tool_calls: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in tool_calls
    ]


def openai_json(
    text: str | None = "ok",
    *,
    tool_calls: list[tuple[str, str, str]] | None = None,
    usage: tuple[int, int] = (10, 5),
    model: str = "fake-model",
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = _oa_tool_calls(tool_calls)
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }
    )


def _chunk(delta: dict[str, Any], finish: str | None = None, model: str = "fake-model") -> str:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
    )


def openai_sse(
    texts: list[str] | None = None,
    *,
    tool_calls: list[tuple[str, str, str]] | None = None,
    usage: tuple[int, int] | None = (10, 5),
    event_delay: float = 0.0,
    drop_after: int | None = None,
) -> Reply:
    events: list[tuple[str | None, str]] = [(None, _chunk({"role": "assistant", "content": ""}))]
    events += [(None, _chunk({"content": t})) for t in (texts if texts is not None else ["o", "k"])]
    for index, (cid, name, args) in enumerate(tool_calls or []):
        half = len(args) // 2
        events.append(
            (
                None,
                _chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": cid,
                                "type": "function",
                                "function": {"name": name, "arguments": args[:half]},
                            }
                        ]
                    }
                ),
            )
        )
        rest = {"index": index, "function": {"arguments": args[half:]}}
        events.append((None, _chunk({"tool_calls": [rest]})))
    events.append((None, _chunk({}, "tool_calls" if tool_calls else "stop")))
    if usage is not None:
        events.append(
            (
                None,
                json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion.chunk",
                        "created": 1700000000,
                        "model": "fake-model",
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage[0],
                            "completion_tokens": usage[1],
                            "total_tokens": sum(usage),
                        },
                    }
                ),
            )
        )
    events.append((None, "[DONE]"))
    return Reply(events=events, event_delay=event_delay, drop_after=drop_after)


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    kind = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status, "server_error")
    return Reply(
        status=status,
        body={"error": {"message": message, "type": kind, "param": None, "code": kind}},
        headers=headers or {},
    )


# --- Anthropic Messages ------------------------------------------------------------


def anthropic_json(
    text: str = "ok",
    *,
    tool_uses: list[tuple[str, str, dict[str, Any]]] | None = None,
    usage: tuple[int, int] = (10, 5),
    model: str = "claude-test",
) -> Reply:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [
        {"type": "tool_use", "id": tid, "name": name, "input": inp}
        for tid, name, inp in tool_uses or []
    ]
    return Reply(
        body={
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if tool_uses else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
    )


def anthropic_sse(
    texts: list[str] | None = None,
    *,
    tool_uses: list[tuple[str, str, str]] | None = None,
    usage: tuple[int, int] = (10, 5),
    event_delay: float = 0.0,
    drop_after: int | None = None,
    error_after: int | None = None,
) -> Reply:
    def ev(name: str, data: dict[str, Any]) -> tuple[str, str]:
        return name, json.dumps({"type": name, **data})

    events: list[tuple[str | None, str]] = [
        ev(
            "message_start",
            {
                "message": {
                    "id": "msg_test",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-test",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage[0], "output_tokens": 1},
                }
            },
        ),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", json.dumps({"type": "ping"})),
    ]
    for t in texts if texts is not None else ["o", "k"]:
        events.append(
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
        )
    events.append(ev("content_block_stop", {"index": 0}))
    for offset, (tid, name, args) in enumerate(tool_uses or [], start=1):
        events.append(
            ev(
                "content_block_start",
                {
                    "index": offset,
                    "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}},
                },
            )
        )
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            events.append(
                ev(
                    "content_block_delta",
                    {"index": offset, "delta": {"type": "input_json_delta", "partial_json": part}},
                )
            )
        events.append(ev("content_block_stop", {"index": offset}))
    events.append(
        ev(
            "message_delta",
            {
                "delta": {
                    "stop_reason": "tool_use" if tool_uses else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": usage[1]},
            },
        )
    )
    events.append(ev("message_stop", {}))
    if error_after is not None:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        events = [*events[:error_after], ("error", json.dumps({"type": "error", "error": error}))]
    return Reply(events=events, event_delay=event_delay, drop_after=drop_after)


def anthropic_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    kind = {429: "rate_limit_error", 401: "authentication_error", 529: "overloaded_error"}.get(
        status, "api_error"
    )
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": kind, "message": message}},
        headers=headers or {},
    )


def auto_reply(request: Recorded) -> Reply:
    """Plain "ok" in the request's own format and mode (Claude Code posts to
    ``/v1/messages?beta=true``: the query does not change the format)."""
    stream = bool(request.body.get("stream"))
    if request.path.split("?", 1)[0].endswith("/messages"):
        return anthropic_sse() if stream else anthropic_json()
    return openai_sse() if stream else openai_json()


# --- the server --------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for
    # the client's delayed ACK (~40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        headers = {k.lower(): v for k, v in self.headers.items()}
        recorded = Recorded("POST", self.path, headers, body)
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(recorded)
            script = owner.script.popleft() if owner.script else owner.default
        reply = script(recorded) if callable(script) else script
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self._abort()
            return
        if reply.events is not None:
            self._stream(reply)
            return
        data = json.dumps(reply.body).encode() if reply.body is not None else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for index, (name, data) in enumerate(reply.events or []):
            if reply.drop_after is not None and index >= reply.drop_after:
                self.wfile.flush()
                self._abort()
                return
            text = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
            payload = text.encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()
            if reply.event_delay:
                time.sleep(reply.event_delay)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _abort(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a test's timeout, a dropped stream) is expected here:
        no traceback on the test run's stderr. Anything else is still reported."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LLMServer:
    """``with LLMServer() as srv:`` then point a provider's base URL at ``srv.openai_url``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.script: deque[Script] = deque()
        self.default: Script = auto_reply
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.base

    def push(self, *replies: Script) -> None:
        with self.lock:
            self.script.extend(replies)

    def start(self) -> LLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def llm_server() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server
