"""A small HTTP/1.1 client on asyncio streams: what the provider clients need, nothing else.

It lives in ``cfn.system`` (standard library only) because two parts use it: the
provider clients (``cfn.providers.clients.wire``, the LLM gateway's upstream calls)
and the MCP gateway's hops to its own servers (``cfn.mcp.upstream``).

Why not httpx: measured on this project's 2-core machine, one kept-alive httpx
call cost the LLM gateway about 2 ms of Python per request (httpcore, h11, anyio
and httpx's own layers; ``bench gateway``), which is the whole of the gateway's
latency budget. An LLM API call needs little of HTTP: one POST with a JSON
body, a reply framed by ``Content-Length``, chunked encoding or the end of the
connection, read whole or line by line (server-sent events). This module does
that and only that, in one write per request and one buffered reader per
connection:

* ``Pool``: kept-alive connections per origin (scheme, host, port), TLS with
  the system's CA store and SNI, TCP_NODELAY (asyncio sets it on TCP sockets),
  at most ``max_idle`` idle per origin. A request on a *reused* connection that
  ends before any byte of the reply (EOF, or a reset: what a server's closing of
  an idle connection looks like) is sent once more on a new connection, as
  browsers do; httpx does not. A server that acted on the request and then died
  before answering would see it twice: rare, and cheaper than failing every call
  that meets a connection the provider closed while it was idle.
* Redirects: 307 and 308 keep the method and body and are followed (at most
  five); credentials are dropped when the origin changes. 301, 302 and 303
  would turn an API POST into a GET and come back as the status they are.
* Proxies: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY``
  as the caller passes them (``Settings``, the one reader of the environment):
  ``https`` through a ``CONNECT`` tunnel, ``http`` in absolute form.
* Compressed replies (``gzip``, ``deflate``) are decoded, though none are asked
  for.
* Errors: ``HttpError`` (with ``timeout`` set for a deadline that passed), one
  type, mapped to cfn's ``Transient`` once, in ``errors``.

``timeout`` bounds each write and each read, and the connect unless
``connect_timeout`` is given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

#: Origins the redirect rule compares: (scheme, host, port).
Origin = tuple[str, str, int]

MAX_REDIRECTS = 5
#: The longest status line plus header block a reply may have.
MAX_HEAD = 64 * 1024
#: Headers that carry a credential: not sent on to another origin.
CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"})
READ_SIZE = 64 * 1024


class HttpError(Exception):
    """No usable reply: no connection, a deadline passed, a reply HTTP cannot parse."""

    def __init__(self, kind: str, detail: str, *, timeout: bool = False) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.timeout = timeout


@dataclass(frozen=True)
class Proxies:
    """Where requests go through a proxy (the standard variables, as ``Settings`` read them)."""

    http: str | None = None
    https: str | None = None
    no_proxy: Sequence[str] = ()

    def for_url(self, scheme: str, host: str) -> str | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self._bypassed(host):
            return None
        return proxy

    def _bypassed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.no_proxy:
            entry = entry.strip().lower().lstrip(".")
            if entry == "*" or host == entry or (entry and host.endswith("." + entry)):
                return True
        return False


def _origin(url: str) -> tuple[Origin, str]:
    """The origin of an absolute http(s) URL and its request target (path and query)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpError("InvalidURL", f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise HttpError("InvalidURL", f"{url!r}: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def host_header(origin: Origin) -> str:
    """``host[:port]`` as a Host header names an origin (IPv6 in brackets, no default port)."""
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


class _Connection:
    """One TCP (or TLS) connection and its buffered reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """A reply whose head has been read; its body is read once, whole or in lines."""

    def __init__(
        self,
        pool: Pool,
        origin: Origin,
        connection: _Connection,
        status: int,
        headers: dict[str, str],
        *,
        keep_alive: bool,
        no_body: bool,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._connection: _Connection | None = connection
        self.status = status
        self.headers = headers
        self._keep_alive = keep_alive
        self._done = no_body
        self._length: int | None = None
        self._chunked = False
        encoding = headers.get("content-encoding", "identity").strip().lower()
        self._decoder = (
            zlib.decompressobj(47) if encoding in ("gzip", "deflate", "x-gzip") else None
        )
        if not no_body:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                try:
                    self._length = int(headers["content-length"])
                except ValueError:
                    raise HttpError(
                        "RemoteProtocolError", "a Content-Length that is not a number"
                    ) from None
                if self._length < 0:
                    raise HttpError("RemoteProtocolError", "a negative Content-Length")
                self._done = self._length == 0
            else:
                self._keep_alive = False  # the body ends with the connection
        self._chunk_left = 0
        self._content: bytes | None = b"" if self._done else None
        if self._done:
            self._release()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (before decoding), leaving the connection reusable."""
        connection = self._connection
        if connection is None or self._done:
            return
        timeout = self._pool.timeout
        reader = connection.reader
        try:
            if self._chunked:
                while True:
                    async with asyncio.timeout(timeout):
                        line = await reader.readline()
                    if not line.endswith(b"\n"):
                        raise HttpError("RemoteProtocolError", "incomplete chunked read")
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise HttpError("RemoteProtocolError", "a bad chunk size") from None
                    if size == 0:
                        while True:  # trailers, then the blank line
                            async with asyncio.timeout(timeout):
                                trailer = await reader.readline()
                            if not trailer.endswith(b"\n"):
                                raise HttpError("RemoteProtocolError", "incomplete chunked read")
                            if trailer in (b"\r\n", b"\n"):
                                break
                        break
                    left = size
                    while left:
                        async with asyncio.timeout(timeout):
                            data = await reader.read(min(left, READ_SIZE))
                        if not data:
                            raise HttpError("RemoteProtocolError", "incomplete chunked read")
                        left -= len(data)
                        yield data
                    async with asyncio.timeout(timeout):
                        end = await reader.readline()
                    if end not in (b"\r\n", b"\n"):
                        raise HttpError("RemoteProtocolError", "a chunk without its line end")
            elif self._length is not None:
                left = self._length
                while left:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(min(left, READ_SIZE))
                    if not data:
                        raise HttpError(
                            "RemoteProtocolError",
                            f"the connection closed {left} bytes before the body's end",
                        )
                    left -= len(data)
                    yield data
            else:
                while True:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_SIZE)
                    if not data:
                        break
                    yield data
        except TimeoutError:
            self._abort()
            raise HttpError("ReadTimeout", "no data within the timeout", timeout=True) from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._abort()
            raise HttpError("ReadError", str(exc) or type(exc).__name__) from None
        except ValueError:  # readline: a chunk size or trailer line past the reader's limit
            self._abort()
            raise HttpError("RemoteProtocolError", "a chunk line too long") from None
        except BaseException:
            self._abort()
            raise
        self._done = True
        self._release()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The decoded body, piece by piece."""
        async for raw in self._raw_chunks():
            data = self._decode(raw)
            if data:
                yield data
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                yield tail

    def _decode(self, raw: bytes) -> bytes:
        if self._decoder is None:
            return raw
        try:
            return self._decoder.decompress(raw)
        except zlib.error as exc:
            self._abort()
            raise HttpError("DecodingError", str(exc)) from None

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole decoded body (read once; later calls return it again); a body
        over ``max_bytes`` is an ``HttpError`` (TooLarge) and its connection closed."""
        if self._content is None:
            pieces: list[bytes] = []
            size = 0
            async for piece in self.iter_bytes():
                size += len(piece)
                if max_bytes is not None and size > max_bytes:
                    self._abort()
                    raise HttpError("TooLarge", f"a reply body over {max_bytes} bytes")
                pieces.append(piece)
            self._content = b"".join(pieces)
        return self._content

    async def iter_lines(self) -> AsyncIterator[str]:
        """The body's lines, decoded UTF-8 (ended by LF, CRLF or CR, as SSE allows)."""
        pending = ""
        utf8 = _Utf8()
        async for piece in self.iter_bytes():
            pending += utf8.decode(piece)
            *lines, pending = _split_lines(pending)
            for line in lines:
                yield line
        pending += utf8.decode(b"", final=True)
        if pending:  # the body's end ends its last line, and a "\r" held back for a "\n"
            for line in _split_lines(pending + "\n")[:-1]:
                yield line

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep_alive:
            self._pool._put(self._origin, connection)
        else:
            connection.close()

    def _abort(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def aclose(self) -> None:
        """Give the connection back (when the body was read to its end) or close it."""
        if self._done:
            self._release()
        else:
            self._abort()


class _Utf8:
    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes, *, final: bool = False) -> str:
        return str(self._decoder.decode(data, final))


def _split_lines(text: str) -> list[str]:
    """``text`` cut at line ends; the last item is what follows the last end (maybe "")."""
    # A lone "\r" at the very end may be the first half of "\r\n": keep it for later.
    hold = text.endswith("\r")
    if hold:
        text = text[:-1]
    parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if hold:
        parts[-1] += "\r"
    return parts


class Pool:
    """Kept-alive connections per origin; ``request`` sends one request on one of them."""

    def __init__(
        self,
        timeout: float,
        *,
        connect_timeout: float | None = None,
        max_idle: int = 100,
        proxies: Proxies | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.max_idle = max_idle
        self.proxies = proxies or Proxies()
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def idle_connections(self) -> int:
        """How many kept-alive connections wait for a request (all origins)."""
        return sum(len(found) for found in self._idle.values())

    def _put(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self.max_idle or connection.reader.at_eof():
            connection.close()
            return
        idle.append(connection)

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reader.at_eof() or connection.writer.is_closing():
                connection.close()
                continue
            return connection
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        proxy = self.proxies.for_url(scheme, host)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is None:
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=self._tls() if scheme == "https" else None,
                        server_hostname=host if scheme == "https" else None,
                        limit=MAX_HEAD,
                    )
                else:
                    reader, writer = await self._through(proxy, origin)
        except TimeoutError:
            raise HttpError(
                "ConnectTimeout", f"{host}:{port} did not answer within the timeout", timeout=True
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpError("ConnectError", str(exc) or type(exc).__name__) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HttpError("ProxyError", "the proxy closed the tunnel without a reply") from None
        return _Connection(reader, writer)

    async def _through(
        self, proxy: str, origin: Origin
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``origin`` by way of ``proxy`` (a CONNECT tunnel for https)."""
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme not in ("http", "") or not parts.hostname:
            raise HttpError("ProxyError", f"unsupported proxy {parts.scheme}://{parts.hostname}")
        reader, writer = await asyncio.open_connection(
            parts.hostname, _port(parts, 80), limit=MAX_HEAD
        )
        if origin[0] == "http":
            return reader, writer
        auth = _proxy_auth(parts.username, parts.password)
        host = f"[{origin[1]}]" if ":" in origin[1] else origin[1]
        target = f"{host}:{origin[2]}"
        connect = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
        try:
            writer.write(connect.encode("latin-1"))
            head = await reader.readuntil(b"\r\n\r\n")
            if head.split(b" ", 2)[1:2] != [b"200"]:
                raise HttpError("ProxyError", f"the proxy refused the tunnel: {head[:80]!r}")
            await writer.start_tls(self._tls(), server_hostname=origin[1])
        except BaseException:
            writer.close()  # no half-made tunnel left open (a refusal, a failed handshake)
            raise
        return reader, writer

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> Response:
        """Send one request (following 307/308 redirects); the reply's head read."""
        sent_headers = dict(headers)
        origin, target = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(method, origin, target, sent_headers, body)
            location = response.headers.get("location")
            if response.status not in (307, 308) or not location:
                return response
            await response.aclose()
            url = urljoin(f"{origin[0]}://{host_header(origin)}{target}", location)
            new_origin, target = _origin(url)
            if new_origin != origin:
                sent_headers = {
                    k: v for k, v in sent_headers.items() if k.lower() not in CREDENTIALS
                }
            origin = new_origin
        raise HttpError("TooManyRedirects", f"more than {MAX_REDIRECTS} redirects")

    async def _send(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        if self._closed:
            raise HttpError("PoolClosed", "the client was closed")
        proxy = self.proxies.for_url(origin[0], origin[1])
        request_target = target
        extra = ""
        if proxy is not None and origin[0] == "http":
            request_target = f"http://{host_header(origin)}{target}"
            parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            extra = _proxy_auth(parts.username, parts.password)
        lines = [f"{method} {request_target} HTTP/1.1", f"Host: {host_header(origin)}"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
                raise HttpError("LocalProtocolError", f"header {name[:40]!r}: a line break or ':'")
            if name.lower() != "host":
                lines.append(f"{name}: {value}")
        if body or method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            lines.append(f"Content-Length: {len(body)}")
        try:
            head = ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise HttpError("LocalProtocolError", "a header that is not Latin-1") from None
        for attempt in (1, 2):
            # The second attempt goes on a new connection: another idle one may be as stale.
            connection = self._take(origin) if attempt == 1 else None
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin)
            try:
                return await self._exchange(connection, origin, method, head + body)
            except _Stale:
                connection.close()
                if not reused or attempt == 2:
                    raise HttpError(
                        "RemoteProtocolError", "the server closed the connection without a reply"
                    ) from None
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, connection: _Connection, origin: Origin, method: str, data: bytes
    ) -> Response:
        reader, writer = connection.reader, connection.writer
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(data)
                await writer.drain()
        except TimeoutError:
            raise HttpError("WriteTimeout", "not sent within the timeout", timeout=True) from None
        except OSError:
            raise _Stale() from None
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                raise HttpError("ReadTimeout", "no reply in time", timeout=True) from None
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _Stale() from None
                raise HttpError("RemoteProtocolError", "the reply's head was cut") from None
            except asyncio.LimitOverrunError:
                raise HttpError("RemoteProtocolError", "the reply's head is too large") from None
            except OSError as exc:
                if isinstance(exc, ConnectionResetError | BrokenPipeError):
                    raise _Stale() from None
                raise HttpError("ReadError", str(exc) or type(exc).__name__) from None
            status, version, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and other interim replies
            break
        connection_header = headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection_header
            if version == "HTTP/1.1"
            else "keep-alive" in connection_header
        )
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        return Response(
            self, origin, connection, status, headers, keep_alive=keep_alive, no_body=no_body
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for found in idle.values():
            for connection in found:
                connection.close()


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing was read from it."""


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes every byte)
        raise HttpError("RemoteProtocolError", "a reply head that is not text") from None
    status_line, _, rest = text.partition("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError("RemoteProtocolError", f"not an HTTP/1.x reply: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError("RemoteProtocolError", f"a bad header line: {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), parts[0], headers


def _port(parts: SplitResult, default: int) -> int:
    """The port of a proxy URL; a port that is not a number is the proxy's error."""
    try:
        return parts.port or default
    except ValueError:
        detail = f"the proxy URL's port is not a number: {parts.netloc!r}"
        raise HttpError("ProxyError", detail) from None


def _proxy_auth(user: str | None, password: str | None) -> str:
    """The ``Proxy-Authorization`` header line of a proxy URL's user info, or ""."""
    if not user:
        return ""
    pair = f"{unquote(user)}:{unquote(password or '')}".encode()
    return f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"


__all__ = ["HttpError", "Pool", "Proxies", "Response", "host_header"]
