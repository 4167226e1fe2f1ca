"""cfn's own HTTP/1.1 client (system/http11.py) against real local servers.

Every test scripts its own asyncio server (and proxy) on 127.0.0.1: body framing and
connection reuse, line splitting, compressed replies, stale kept-alive connections,
redirects, timeouts, malformed replies, proxies (absolute form, CONNECT tunnels with
TLS, NO_PROXY) and a closed pool. Nothing of cfn is mocked: real sockets only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfn.providers.clients.wire import proxies_of
from cfn.system.http11 import HttpError, Pool, Proxies
from tests.providers.conftest import MakeSettings, make_settings  # noqa: F401 (a fixture)

# --- scripted servers ---------------------------------------------------------------


@dataclass
class Request:
    """One request as a server read it."""

    line: str
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    connection: int  # which of the server's accepted connections carried it (from 1)


class Conn:
    """One accepted connection, as a handler sees it."""

    def __init__(
        self,
        server: Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.number = number

    async def request(self) -> Request | None:
        """The next request (head and Content-Length body), or None at the connection's end."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        line, *rest = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for text in rest:
            if text:
                name, _, value = text.partition(":")
                headers[name.strip().lower()] = value.strip()
        try:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        method, target, _ = line.split(" ", 2)
        request = Request(line, method, target, headers, body, self.number)
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


Handler = Callable[[Conn], Awaitable[None]]


class Server:
    """An asyncio server on 127.0.0.1 running ``handler`` for each connection it accepts."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[Request] = []
        self.port = 0
        self._errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self._errors and exc_info[0] is None:
            raise self._errors[0]

    def url(self, path: str = "/", *, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            await self.handler(Conn(self, reader, writer, self.connections))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # cancelled by __aexit__: ending quietly spares asyncio's "exception in callback"
        except Exception as exc:  # a broken handler fails its test (in __aexit__)
            self._errors.append(exc)
        finally:
            writer.close()


def keep_alive(respond: Callable[[Request], bytes]) -> Handler:
    """A handler answering every request on its connection with ``respond``'s bytes."""

    async def handle(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(respond(request))

    return handle


def reply(body: bytes = b"", *, status: int = 200, headers: Iterable[str] = ()) -> bytes:
    """A whole reply framed by Content-Length."""
    lines = [f"HTTP/1.1 {status} Scripted", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(
    chunks: Iterable[bytes],
    *,
    headers: Iterable[str] = (),
    extensions: bool = False,
    trailers: Iterable[str] = (),
) -> bytes:
    """A whole reply in chunked encoding, one chunk per item of ``chunks``."""
    lines = ["HTTP/1.1 200 Scripted", *headers, "Transfer-Encoding: chunked"]
    out = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    for number, chunk in enumerate(chunks):
        extension = f';n={number};name="x"'.encode() if extensions else b""
        out += f"{len(chunk):x}".encode() + extension + b"\r\n" + chunk + b"\r\n"
    out += b"0\r\n" + b"".join(t.encode() + b"\r\n" for t in trailers) + b"\r\n"
    return bytes(out)


@contextlib.asynccontextmanager
async def pool_of(timeout: float = 2.0, **options: Any) -> AsyncIterator[Pool]:
    pool = Pool(timeout, **options)
    try:
        yield pool
    finally:
        await pool.aclose()


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- body framing and reuse -----------------------------------------------------------

#: The Proxy-Authorization of a proxy URL with ``user:pw@``.
BASIC_USER_PW = "Basic " + base64.b64encode(b"user:pw").decode()
BODY = b"".join(b"line %d of the body\n" % n for n in range(400))  # ~8 KB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_framed_body_is_read_exactly_and_the_connection_reused(framing: str) -> None:
    def respond(request: Request) -> bytes:
        if framing == "content-length":
            return reply(BODY, headers=["Content-Type: text/plain"])
        pieces = [BODY[:1], BODY[1:3000], BODY[3000:3001], BODY[3001:]]
        return chunked(pieces, extensions=True, trailers=["X-Checksum: abc", "X-More: 1"])

    async with Server(keep_alive(respond)) as server, pool_of() as pool:
        first = await pool.request("POST", server.url("/one?x=1"), {"X-Test": "a"}, b"ping")
        assert first.status == 200
        assert first.is_success
        assert await first.read() == BODY
        assert await first.read() == BODY  # read once, returned again
        assert pool.idle_connections() == 1

        second = await pool.request("GET", server.url("/two"), {})
        assert await second.read() == BODY
        assert pool.idle_connections() == 1

    assert server.connections == 1
    seen = [(r.method, r.target, r.body, r.connection) for r in server.requests]
    assert seen == [("POST", "/one?x=1", b"ping", 1), ("GET", "/two", b"", 1)]
    first_request = server.requests[0]
    assert first_request.headers["host"] == f"127.0.0.1:{server.port}"
    assert first_request.headers["content-length"] == "4"
    assert first_request.headers["x-test"] == "a"


async def test_close_delimited_body_is_read_to_the_end_and_not_reused() -> None:
    async def handle(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
            await conn.close()

    async with Server(handle) as server, pool_of() as pool:
        first = await pool.request("GET", server.url("/a"), {})
        assert await first.read() == BODY
        assert pool.idle_connections() == 0
        second = await pool.request("GET", server.url("/b"), {})
        assert await second.read() == BODY
        assert pool.idle_connections() == 0

    assert server.connections == 2
    assert [r.connection for r in server.requests] == [1, 2]


async def test_interim_reply_is_skipped_and_a_bodiless_204_keeps_the_connection() -> None:
    def respond(request: Request) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n"

    async with Server(keep_alive(respond)) as server, pool_of() as pool:
        for _ in range(2):
            response = await pool.request("POST", server.url(), {}, b"{}")
            assert response.status == 204
            assert response.headers["x-done"] == "yes"
            assert await response.read() == b""
            assert pool.idle_connections() == 1

    assert server.connections == 1
    assert len(server.requests) == 2


# --- lines --------------------------------------------------------------------------


async def test_iter_lines_across_chunk_boundaries() -> None:
    pieces = [
        b"data: one\ndata: two\r",  # LF, then a CR whose LF comes in the next chunk
        b"\nthree\r\nfour\rfive",  # CRLF, a lone CR, an unfinished line
        b"\r",  # CRLF split across two chunks: one line end, no phantom empty line
        b"\n",
        b"\r",  # an empty line ended by CRLF, split again
        b"\ncaf\xc3",  # a two-byte UTF-8 character cut in half
        b"\xa9 \xe2",  # a three-byte one cut after its first byte ...
        b"\x82",  # ... and after its second
        b"\xac\n\n",  # an empty line ended by LF
        b"last without an end",
    ]

    async with (
        Server(keep_alive(lambda request: chunked(pieces))) as server,
        pool_of() as pool,
    ):
        response = await pool.request("POST", server.url("/stream"), {}, b"{}")
        lines = [line async for line in response.iter_lines()]
        assert pool.idle_connections() == 1

    assert lines == [
        "data: one",
        "data: two",
        "three",
        "four",
        "five",
        "",
        "café €",
        "",
        "last without an end",
    ]


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"a\rb\r"], ["a", "b"]),
        ([b"a\r", b"b\r"], ["a", "b"]),
        ([b"a\n\r"], ["a", ""]),
        ([b"a\r\n"], ["a"]),
        ([b"a\r", b"\n"], ["a"]),
    ],
)
async def test_iter_lines_at_the_end_of_the_body(pieces: list[bytes], expected: list[str]) -> None:
    """A lone CR is a whole line end, also as the body's last byte."""
    async with (
        Server(keep_alive(lambda request: chunked(pieces))) as server,
        pool_of() as pool,
    ):
        response = await pool.request("GET", server.url(), {})
        assert [line async for line in response.iter_lines()] == expected


# --- compressed replies ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_reply_is_decoded(encoding: str) -> None:
    packed = gzip.compress(BODY) if encoding == "gzip" else zlib.compress(BODY)
    headers = [f"Content-Encoding: {encoding}"]

    async with (
        Server(keep_alive(lambda request: reply(packed, headers=headers))) as server,
        pool_of() as pool,
    ):
        response = await pool.request("GET", server.url(), {})
        assert await response.read() == BODY
        assert pool.idle_connections() == 1


async def test_gzip_in_small_chunks_is_decoded_into_lines() -> None:
    packed = gzip.compress(BODY)
    pieces = [packed[i : i + 7] for i in range(0, len(packed), 7)]

    def respond(request: Request) -> bytes:
        return chunked(pieces, headers=["Content-Encoding: gzip"])

    async with (
        Server(keep_alive(respond)) as server,
        pool_of() as pool,
    ):
        response = await pool.request("GET", server.url(), {})
        lines = [line async for line in response.iter_lines()]

    assert lines == BODY.decode().splitlines()


# --- stale kept-alive connections -----------------------------------------------------


@pytest.mark.parametrize("closes", ["when idle", "on the next request"])
async def test_stale_kept_alive_connection_is_replaced(closes: str) -> None:
    closed = asyncio.Event()

    async def handle(conn: Conn) -> None:
        if conn.number > 1:
            await keep_alive(lambda request: reply(b"fresh"))(conn)
            return
        await conn.request()
        await conn.send(reply(b"first"))  # kept alive (HTTP/1.1, no Connection: close)
        if closes == "on the next request":
            await conn.request()  # read, never answered: as if closed just before it came
        await conn.close()
        closed.set()

    async with Server(handle) as server, pool_of() as pool:
        first = await pool.request("POST", server.url("/1"), {}, b"one")
        assert await first.read() == b"first"
        assert pool.idle_connections() == 1
        if closes == "when idle":
            await closed.wait()
            await asyncio.sleep(0.05)  # the client's loop sees the connection's end
        second = await pool.request("POST", server.url("/2"), {}, b"two")
        assert second.status == 200
        assert await second.read() == b"fresh"
        assert pool.idle_connections() == 1

    assert server.connections == 2
    assert server.requests[-1].body == b"two"
    assert server.requests[-1].connection == 2
    if closes == "on the next request":  # sent twice: the lost copy, then on a new connection
        assert [(r.target, r.connection) for r in server.requests] == [
            ("/1", 1),
            ("/2", 1),
            ("/2", 2),
        ]


async def test_the_resend_after_a_stale_connection_uses_a_new_connection() -> None:
    """Two kept-alive connections, both dead: the request is resent on a new one."""

    async def handle(conn: Conn) -> None:
        if conn.number > 2:
            await keep_alive(lambda request: reply(b"fresh"))(conn)
            return
        await conn.request()
        await conn.send(reply(b"warm"))
        await conn.request()  # the next request is never answered
        await conn.close()

    async with Server(handle) as server, pool_of() as pool:
        warm = await asyncio.gather(
            pool.request("GET", server.url("/warm"), {}),
            pool.request("GET", server.url("/warm"), {}),
        )
        for response in warm:
            assert await response.read() == b"warm"
        assert pool.idle_connections() == 2

        response = await pool.request("POST", server.url("/real"), {}, b"body")
        assert await response.read() == b"fresh"

    assert server.connections == 3
    assert [r.connection for r in server.requests if r.target == "/real"] == [2, 3]


async def test_fresh_connection_closed_without_a_reply_is_an_error() -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.close()

    async with Server(handle) as server, pool_of() as pool:
        with pytest.raises(HttpError) as caught:
            await pool.request("POST", server.url(), {}, b"x")
        assert caught.value.kind == "RemoteProtocolError"
        assert not caught.value.timeout
        assert server.connections == 1  # not sent again
        assert len(server.requests) == 1
        assert pool.idle_connections() == 0


# --- redirects ------------------------------------------------------------------------

SECRETS = {
    "Authorization": "Bearer secret",
    "X-Api-Key": "key-1",
    "X-Custom": "kept",
    "Content-Type": "application/json",
}


@pytest.mark.parametrize("status", [307, 308])
async def test_307_and_308_are_followed_with_method_and_body(status: int) -> None:
    def respond(request: Request) -> bytes:
        if request.target == "/start":
            return reply(b"moved", status=status, headers=["Location: /next?step=2"])
        return reply(b"arrived")

    async with Server(keep_alive(respond)) as server, pool_of() as pool:
        response = await pool.request("POST", server.url("/start"), SECRETS, b'{"a":1}')
        assert response.status == 200
        assert await response.read() == b"arrived"

    seen = [(r.method, r.target, r.body) for r in server.requests]
    assert seen == [("POST", "/start", b'{"a":1}'), ("POST", "/next?step=2", b'{"a":1}')]
    followed = server.requests[1].headers  # the same origin: credentials kept
    assert followed["authorization"] == "Bearer secret"
    assert followed["x-api-key"] == "key-1"
    assert followed["x-custom"] == "kept"


async def test_redirect_to_another_origin_drops_credentials() -> None:
    async with Server(keep_alive(lambda request: reply(b"landed"))) as target:
        location = f"Location: {target.url('/landing?q=1')}"
        redirect = reply(status=307, headers=[location])
        async with Server(keep_alive(lambda r: redirect)) as start, pool_of() as pool:
            response = await pool.request("POST", start.url("/start"), SECRETS, b"payload")
            assert response.status == 200
            assert await response.read() == b"landed"

    assert start.requests[0].headers["authorization"] == "Bearer secret"
    assert start.requests[0].headers["x-api-key"] == "key-1"
    [landed] = target.requests
    assert (landed.method, landed.target, landed.body) == ("POST", "/landing?q=1", b"payload")
    assert "authorization" not in landed.headers
    assert "x-api-key" not in landed.headers
    assert landed.headers["x-custom"] == "kept"
    assert landed.headers["content-type"] == "application/json"
    assert landed.headers["host"] == f"127.0.0.1:{target.port}"


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_other_redirects_are_returned_as_they_are(status: int) -> None:
    redirect = reply(b"see elsewhere", status=status, headers=["Location: /elsewhere"])

    async with Server(keep_alive(lambda request: redirect)) as server, pool_of() as pool:
        response = await pool.request("POST", server.url("/start"), SECRETS, b"x")
        assert response.status == status
        assert not response.is_success
        assert response.headers["location"] == "/elsewhere"
        assert await response.read() == b"see elsewhere"

    assert [r.target for r in server.requests] == ["/start"]


def hops_then_ok(hops: int) -> Callable[[Request], bytes]:
    """307 from /r0 to /r1 ... to /r{hops}, which answers 200."""

    def respond(request: Request) -> bytes:
        step = int(request.target.removeprefix("/r"))
        if step < hops:
            return reply(status=307, headers=[f"Location: /r{step + 1}"])
        return reply(b"done")

    return respond


async def test_five_redirects_are_followed() -> None:
    async with Server(keep_alive(hops_then_ok(5))) as server, pool_of() as pool:
        response = await pool.request("POST", server.url("/r0"), {}, b"b")
        assert await response.read() == b"done"
    assert [r.target for r in server.requests] == [f"/r{n}" for n in range(6)]


async def test_more_than_five_redirects_is_an_error() -> None:
    async with Server(keep_alive(hops_then_ok(100))) as server, pool_of() as pool:
        with pytest.raises(HttpError) as caught:
            await pool.request("POST", server.url("/r0"), {}, b"b")
        assert caught.value.kind == "TooManyRedirects"
    assert [r.target for r in server.requests] == [f"/r{n}" for n in range(6)]


# --- timeouts and refused connections --------------------------------------------------


async def test_a_server_that_never_answers_times_out() -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await asyncio.Event().wait()  # silent until the test ends

    async with Server(handle) as server, pool_of(0.3) as pool:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            await pool.request("POST", server.url(), {}, b"x")
        elapsed = time.monotonic() - started
        assert caught.value.kind == "ReadTimeout"
        assert caught.value.timeout
        assert 0.25 <= elapsed < 1.0
        assert pool.idle_connections() == 0


async def test_a_body_that_stops_coming_times_out() -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.Event().wait()

    async with Server(handle) as server, pool_of(0.3) as pool:
        response = await pool.request("GET", server.url(), {})
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            await response.read()
        assert caught.value.kind == "ReadTimeout"
        assert caught.value.timeout
        assert time.monotonic() - started < 1.0
        assert pool.idle_connections() == 0


async def test_a_port_nobody_listens_on_is_a_connect_error() -> None:
    with dead_port() as port:
        async with pool_of(0.3) as pool:
            with pytest.raises(HttpError) as caught:
                await pool.request("GET", f"http://127.0.0.1:{port}/", {})
    assert caught.value.kind == "ConnectError"
    assert not caught.value.timeout


# --- malformed replies -------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon in this line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # the head cut by the connection's end
    ],
)
async def test_a_malformed_head_is_a_protocol_error(head: bytes) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(head)
        await conn.close()

    async with Server(handle) as server, pool_of() as pool:
        with pytest.raises(HttpError) as caught:
            await pool.request("GET", server.url(), {})
        assert caught.value.kind == "RemoteProtocolError"
        assert server.connections == 1
        assert pool.idle_connections() == 0


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_body_cut_short_is_an_error_on_read(cut: bytes) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(cut)
        await conn.close()

    async with Server(handle) as server, pool_of() as pool:
        response = await pool.request("GET", server.url(), {})
        assert response.status == 200
        with pytest.raises(HttpError) as caught:
            await response.read()
        assert caught.value.kind == "RemoteProtocolError"
        assert pool.idle_connections() == 0


async def test_a_chunk_size_line_past_the_limit_is_a_protocol_error() -> None:
    """A "chunked" reply whose body is not chunked at all: a long line, no size."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"a" * 70_000)
        await asyncio.Event().wait()

    async with Server(handle) as server, pool_of() as pool:
        response = await pool.request("GET", server.url(), {})
        with pytest.raises(HttpError) as caught:
            await response.read()
        assert caught.value.kind == "RemoteProtocolError"
        assert pool.idle_connections() == 0


# --- proxies ------------------------------------------------------------------------


async def test_http_through_a_proxy_uses_the_absolute_form_and_proxy_credentials() -> None:
    proxy = Server(keep_alive(lambda request: reply(b"via the proxy")))
    with dead_port() as origin_port:  # only the proxy can answer
        async with proxy:
            proxies = Proxies(http=f"http://user:pw@127.0.0.1:{proxy.port}")
            async with pool_of(proxies=proxies) as pool:
                url = f"http://127.0.0.1:{origin_port}/v1/chat?stream=1"
                for _ in range(2):
                    headers = {"Authorization": "Bearer k"}
                    response = await pool.request("POST", url, headers, b"{}")
                    assert await response.read() == b"via the proxy"

    assert proxy.connections == 1  # kept alive to the proxy
    first = proxy.requests[0]
    assert first.line == f"POST http://127.0.0.1:{origin_port}/v1/chat?stream=1 HTTP/1.1"
    assert first.headers["host"] == f"127.0.0.1:{origin_port}"
    assert first.headers["proxy-authorization"] == BASIC_USER_PW
    assert first.headers["authorization"] == "Bearer k"
    assert first.body == b"{}"


async def test_no_proxy_hosts_are_reached_directly() -> None:
    proxy = Server(keep_alive(lambda request: reply(b"via the proxy")))
    origin = Server(keep_alive(lambda request: reply(b"direct")))
    async with proxy, origin:
        proxies = Proxies(http=f"http://127.0.0.1:{proxy.port}", no_proxy=("127.0.0.1",))
        async with pool_of(proxies=proxies) as pool:
            response = await pool.request("GET", origin.url("/x"), {})
            assert await response.read() == b"direct"

    assert proxy.connections == 0
    assert [r.line for r in origin.requests] == ["GET /x HTTP/1.1"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for localhost and 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        _certificate_by_cryptography(cert, key)
        return cert, key
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _certificate_by_cryptography(cert: Path, key: Path) -> None:
    cryptography = pytest.importorskip("cryptography", reason="neither openssl nor cryptography")
    del cryptography
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    signed = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(signed.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def tls_contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context trusting only that server's certificate)."""
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def test_https_direct_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    server_tls, client_tls = tls_contexts(certificate)
    origin = Server(keep_alive(lambda request: reply(b"secure")), tls=server_tls)
    async with origin, pool_of(ssl_context=client_tls) as pool:
        for _ in range(2):
            response = await pool.request("POST", origin.url(scheme="https"), {}, b"{}")
            assert await response.read() == b"secure"
            assert pool.idle_connections() == 1
        assert origin.connections == 1

        async with pool_of() as untrusting:  # the system's CAs do not know this certificate
            with pytest.raises(HttpError) as caught:
                await untrusting.request("GET", origin.url(scheme="https"), {})
            assert caught.value.kind == "ConnectError"


async def _splice(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


async def test_https_through_a_connect_tunnel(certificate: tuple[Path, Path]) -> None:
    server_tls, client_tls = tls_contexts(certificate)

    async def tunnel(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None and request.method == "CONNECT"
        port = int(request.target.rpartition(":")[2])
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await conn.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(
            _splice(conn.reader, upstream_writer), _splice(upstream_reader, conn.writer)
        )

    origin = Server(keep_alive(lambda request: reply(b"through the tunnel")), tls=server_tls)
    proxy = Server(tunnel)
    async with origin, proxy:
        proxies = Proxies(https=f"http://user:pw@127.0.0.1:{proxy.port}")
        async with pool_of(proxies=proxies, ssl_context=client_tls) as pool:
            url = origin.url("/v1/messages", scheme="https", host="localhost")
            for _ in range(2):
                response = await pool.request("POST", url, {"X-Api-Key": "k"}, b'{"m":1}')
                assert response.status == 200
                assert await response.read() == b"through the tunnel"
            assert pool.idle_connections() == 1

    assert proxy.connections == 1
    [connect] = proxy.requests  # the tunnel's bytes are TLS: no more requests it can read
    assert connect.line == f"CONNECT localhost:{origin.port} HTTP/1.1"
    assert connect.headers["host"] == f"localhost:{origin.port}"
    assert connect.headers["proxy-authorization"] == BASIC_USER_PW
    assert origin.connections == 1
    sent = ("POST /v1/messages HTTP/1.1", b'{"m":1}')
    assert [(r.line, r.body) for r in origin.requests] == [sent, sent]
    inside = origin.requests[0].headers
    assert inside["host"] == f"localhost:{origin.port}"
    assert inside["x-api-key"] == "k"
    assert "proxy-authorization" not in inside  # the proxy's credentials stay with the proxy


PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_proxies_of_reads_the_standard_variables(
    no_proxy_environment: pytest.MonkeyPatch, make_settings: MakeSettings  # noqa: F811
) -> None:
    assert proxies_of(make_settings()) == Proxies()

    no_proxy_environment.setenv("HTTPS_PROXY", "http://tunnel.example:3128")
    no_proxy_environment.setenv("ALL_PROXY", "http://fallback.example:8080")
    no_proxy_environment.setenv("no_proxy", "localhost, .internal.example,")
    proxies = proxies_of(make_settings())

    assert proxies.https == "http://tunnel.example:3128"
    assert proxies.http == "http://fallback.example:8080"  # ALL_PROXY stands in for HTTP_PROXY
    assert proxies.for_url("https", "api.example.com") == "http://tunnel.example:3128"
    assert proxies.for_url("http", "api.example.com") == "http://fallback.example:8080"
    assert proxies.for_url("https", "localhost") is None
    assert proxies.for_url("https", "LLM.Internal.Example") is None
    assert proxies.for_url("http", "internal.example") is None
    assert proxies.for_url("https", "notinternal.example") == "http://tunnel.example:3128"


def test_proxies_of_all_proxy_alone_covers_both_schemes(
    no_proxy_environment: pytest.MonkeyPatch, make_settings: MakeSettings  # noqa: F811
) -> None:
    no_proxy_environment.setenv("all_proxy", "http://only.example:1080")
    no_proxy_environment.setenv("NO_PROXY", "*")
    proxies = proxies_of(make_settings())
    assert (proxies.http, proxies.https) == ("http://only.example:1080", "http://only.example:1080")
    assert proxies.for_url("https", "api.example.com") is None  # "*" bypasses every host


async def test_proxies_of_settings_route_a_request_through_the_proxy(
    no_proxy_environment: pytest.MonkeyPatch, make_settings: MakeSettings  # noqa: F811
) -> None:
    proxy = Server(keep_alive(lambda request: reply(b"proxied")))
    with dead_port() as origin_port:
        async with proxy:
            no_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            async with pool_of(proxies=proxies_of(make_settings())) as pool:
                response = await pool.request("GET", f"http://127.0.0.1:{origin_port}/p", {})
                assert await response.read() == b"proxied"
    assert [r.line for r in proxy.requests] == [f"GET http://127.0.0.1:{origin_port}/p HTTP/1.1"]


# --- a closed pool --------------------------------------------------------------------


async def test_a_closed_pool_refuses_requests_and_keeps_no_connection() -> None:
    ended: dict[int, asyncio.Event] = {1: asyncio.Event(), 2: asyncio.Event()}

    async def handle(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(reply(b"ok " + request.target.encode()))
        ended[conn.number].set()

    async with Server(handle) as server:
        pool = Pool(2.0)
        in_flight = await pool.request("GET", server.url("/in-flight"), {})  # body unread
        idle = await pool.request("GET", server.url("/idle"), {})  # on a second connection
        assert await idle.read() == b"ok /idle"
        assert pool.idle_connections() == 1

        await pool.aclose()
        assert pool.idle_connections() == 0
        async with asyncio.timeout(1):
            await ended[2].wait()  # the idle connection was closed
        assert not ended[1].is_set()
        assert await in_flight.read() == b"ok /in-flight"  # a reply under way is still read
        assert pool.idle_connections() == 0  # but its connection is not kept
        async with asyncio.timeout(1):
            await ended[1].wait()

        with pytest.raises(HttpError) as caught:
            await pool.request("GET", server.url("/after"), {})
        assert caught.value.kind == "PoolClosed"

    assert server.connections == 2
    assert [r.target for r in server.requests] == ["/in-flight", "/idle"]


async def test_a_proxy_url_with_a_bad_port_is_one_proxy_error() -> None:
    """HTTPS_PROXY=http://proxy:abc: one HttpError the provider clients map, not a
    ValueError escaping as a traceback."""
    async with pool_of(proxies=Proxies(https="http://127.0.0.1:abc")) as pool:
        with pytest.raises(HttpError) as info:
            await pool.request("GET", "https://example.invalid/x", {})
    assert info.value.kind == "ProxyError" and "not a number" in info.value.detail
