"""The gateway's HTTP client for its own servers: HTTP/1.1 over pooled asyncio streams.

Why not httpx: on the project's 2-core machine one httpx request costs about
2 ms of client-side work, four times the whole round trip of a raw asyncio
request to the same uvicorn server (0.5 ms), and the gateway makes one such
request per tool call. This client does only what the gateway needs from
servers it starts itself: ``POST``/``DELETE`` with a byte body over plain HTTP,
keep-alive connections reused LIFO, and replies delimited by Content-Length,
chunked encoding or the end of the connection. No TLS, redirects, proxies,
cookies or HTTP/2.

A kept-alive connection the server has closed meanwhile (uvicorn closes idle
ones after 5 s; a restarted server has dropped them all) is detected before
reuse, and a request that got no byte of reply on a reused connection is sent
once more on a new one: the server never saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
#: Largest reply accepted (a full-page screenshot in base64 is a few MB).
MAX_REPLY = 64 * 1024 * 1024
#: Largest reply header block (the asyncio stream's line limit).
MAX_HEAD = 64 * 1024
MAX_IDLE = 32

Header = tuple[bytes, bytes]
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamError(ConnectionError):
    """The server could not be reached, or its reply was not HTTP/1.1 we can read."""


class _NothingReceived(UpstreamError):
    """The connection ended before the first byte of the reply."""


@dataclass(frozen=True)
class Reply:
    status: int
    #: Header names lower-cased; for a repeated header the last value.
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class HttpPool:
    """Keep-alive connections to one ``http://host:port[/prefix]`` and requests over them."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_idle: int = MAX_IDLE,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream URL must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        authority = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{authority}:{self.port}".encode()
        self.prefix = parts.path.rstrip("/").encode()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Iterable[Header] = (),
        body: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request (``path`` below the base URL's) and read its whole reply."""
        head = self._head(method, self.prefix + path, headers, len(body))
        for attempt in (1, 2):
            conn, reused = await self._acquire()
            try:
                conn[1].write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn[1].write(body)
                await conn[1].drain()
                async with asyncio.timeout(timeout or self.read_timeout):
                    reply, keep = await self._read(conn[0], method)
            except _NothingReceived as exc:
                self._discard(conn)
                if reused and attempt == 1:
                    continue  # the server had closed this idle connection: it never saw us
                raise UpstreamError(f"{self._where()} closed the connection: {exc}") from None
            except TimeoutError:
                self._discard(conn)
                raise UpstreamError(
                    f"{self._where()} sent no reply within {timeout or self.read_timeout:g} s"
                ) from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self._discard(conn)
                if (
                    reused
                    and attempt == 1
                    and isinstance(exc, ConnectionResetError | BrokenPipeError)
                ):
                    continue
                raise UpstreamError(f"{self._where()}: {type(exc).__name__}: {exc}") from None
            except BaseException:  # cancelled mid-request: the connection's state is unknown
                self._discard(conn)
                raise
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                self._discard(conn)
            return reply
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    # --- internals ---------------------------------------------------------------------

    def _where(self) -> str:
        return f"http://{self.authority.decode()}"

    def _head(self, method: bytes, path: bytes, headers: Iterable[Header], length: int) -> bytes:
        lines = [method + b" " + path + b" HTTP/1.1", b"host: " + self.authority]
        for name, value in headers:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise ValueError(f"header {name!r} has a line break in it")
            lines.append(name + b": " + value)
        lines.append(b"content-length: " + str(length).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _acquire(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():
                self._discard(conn)
                continue
            return conn, True
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
        except TimeoutError:
            raise UpstreamError(
                f"{self._where()} did not accept a connection within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self._where()}: {exc}") from None
        return conn, False

    @staticmethod
    def _discard(conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            conn[1].close()

    async def _read(self, reader: asyncio.StreamReader, method: bytes) -> tuple[Reply, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _NothingReceived("no reply") from None
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _NothingReceived(str(exc)) from None
        status, version, headers = _parse_head(head)
        while 100 <= status < 200:  # interim replies (we never send Expect, but allow them)
            status, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection and (version == b"HTTP/1.1" or "keep-alive" in connection)
        if method == b"HEAD" or status in (204, 304):
            return Reply(status, headers, b""), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise UpstreamError("invalid Content-Length in the reply") from None
            if not 0 <= length <= MAX_REPLY:
                raise UpstreamError(f"reply of {length} bytes (over {MAX_REPLY})")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(MAX_REPLY + 1)
            while len(body) <= MAX_REPLY and not reader.at_eof():
                more = await reader.read(MAX_REPLY + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > MAX_REPLY:
                raise UpstreamError(f"reply over {MAX_REPLY} bytes")
            keep = False
        return Reply(status, headers, body), keep


def _parse_head(head: bytes) -> tuple[int, bytes, dict[str, str]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise UpstreamError(f"not an HTTP/1.x reply: {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise UpstreamError(f"bad status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise UpstreamError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > MAX_REPLY:
            raise UpstreamError(f"reply over {MAX_REPLY} bytes")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
