"""The gateway's upstream HTTP client against a real socket server speaking HTTP/1.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cfn.mcp.upstream import HttpPool, UpstreamError
from tests.support.servers import free_port

Reply = Callable[[bytes], Awaitable[tuple[bytes, bool]]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[bytes], dict[str, Reply]]]:
    """A raw HTTP/1.1 server: ``mode["reply"](request) -> (bytes to send, close after)``."""
    seen: list[bytes] = []
    mode: dict[str, Reply] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1]) for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )  # fmt: skip
                request = head + await reader.readexactly(length)
                seen.append(request)
                data, close = await mode["reply"](request)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    srv = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield port, seen, mode
    finally:
        srv.close()


def fixed(data: bytes, close: bool = False) -> Reply:
    async def reply(request: bytes) -> tuple[bytes, bool]:
        return data, close

    return reply


async def test_reply_framings_and_reuse(server: tuple[int, list[bytes], dict[str, Reply]]) -> None:
    port, seen, mode = server
    pool = HttpPool(f"http://127.0.0.1:{port}/base")
    mode["reply"] = fixed(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 7\r\n\r\n{\"a\":1}")  # fmt: skip
    one = await pool.request(b"POST", b"/mcp", [(b"x-h", b"v")], b'{"q":1}')
    assert (one.status, one.content_type, one.body) == (200, "application/json", b'{"a":1}')
    assert seen[0].startswith(b"POST /base/mcp HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"x-h: v\r\n" in seen[0] and seen[0].endswith(b'Content-Length: 7\r\n\r\n{"q":1}')
    await pool.request(b"POST", b"/mcp", body=b"{}")
    assert pool._pool.idle_connections() == 1  # one kept-alive connection served both
    mode["reply"] = fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")  # fmt: skip
    assert (await pool.request(b"POST", b"/c")).body == b"abcde"
    mode["reply"] = fixed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert (await pool.request(b"DELETE", b"/mcp")).status == 404
    mode["reply"] = fixed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)
    assert (await pool.request(b"POST", b"/e")).body == b"until the end"
    assert pool._pool.idle_connections() == 0  # a close-delimited reply ends its connection
    await pool.aclose()


async def test_a_closed_idle_connection_is_replaced(
    server: tuple[int, list[bytes], dict[str, Reply]],
) -> None:
    port, seen, mode = server
    pool = HttpPool(f"http://127.0.0.1:{port}")
    # The server closes after each reply without saying so (as after its keep-alive timeout).
    mode["reply"] = fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)
    for _ in range(3):
        assert (await pool.request(b"POST", b"/x", body=b"1")).body == b"ok"
    assert len(seen) == 3  # each request reached the server exactly once
    await pool.aclose()


async def test_failures_are_upstream_errors(
    server: tuple[int, list[bytes], dict[str, Reply]],
) -> None:
    port, _, mode = server

    async def slow(request: bytes) -> tuple[bytes, bool]:
        await asyncio.sleep(1)
        return b"", True

    mode["reply"] = slow
    pool = HttpPool(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamError, match=r"no reply within 0\.2 s"):
        await pool.request(b"POST", b"/x", timeout=0.2)
    mode["reply"] = fixed(b"SSH-2.0-nope\r\n\r\n")
    with pytest.raises(UpstreamError, match=r"not an HTTP/1\.x reply"):
        await pool.request(b"POST", b"/x")
    mode["reply"] = fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close=True)
    with pytest.raises(UpstreamError, match="5 bytes before the body's end"):
        await pool.request(b"POST", b"/x")
    with pytest.raises(UpstreamError, match="a line break"):
        await pool.request(b"POST", b"/x", [(b"x", b"a\r\nInjected: 1")])
    closed = HttpPool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError, match="cannot connect"):
        await closed.request(b"POST", b"/x")
    with pytest.raises(ValueError, match="must be http://host:port"):
        HttpPool("https://127.0.0.1:1")
    await pool.aclose()
