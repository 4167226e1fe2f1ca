"""The MCP gateway's HTTP client for its own servers: ``HttpPool`` over ``cfn.system.http11``.

The gateway makes one request per tool call to a server it started itself
(``POST /mcp``, ``POST /execute``, ``DELETE /mcp``), so the client matters: an
httpx request costs about 2 ms of client-side work on the project's 2-core
machine, four times the whole round trip of a raw asyncio request to the same
uvicorn server (0.5 ms). cfn's own HTTP/1.1 client (``cfn.system.http11``, also
the LLM gateway's) does it in one write per request over kept-alive
connections; a kept-alive connection the server has closed meanwhile (uvicorn
closes idle ones; a restarted server has dropped them all) is replaced, and a
request that got no byte of reply on it is sent once more on a new one.

This module fixes what the MCP gateway wants of it: one base URL
(``http://host:port[/prefix]``, plain HTTP: the servers are local), byte header
pairs, the whole reply read (at most ``MAX_REPLY``), every failure one
``UpstreamError`` naming the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cfn.system.http11 import HttpError, Pool, host_header

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
#: Largest reply accepted (a full-page screenshot in base64 is a few MB).
MAX_REPLY = 64 * 1024 * 1024
MAX_IDLE = 32

Header = tuple[bytes, bytes]


class UpstreamError(ConnectionError):
    """The server could not be reached, or its reply was not HTTP/1.1 we can read."""


@dataclass(frozen=True)
class Reply:
    status: int
    #: Header names lower-cased (repeated headers joined with ", ").
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
        self.base = "http://" + host_header(("http", parts.hostname, parts.port or 80))
        self.prefix = parts.path.rstrip("/")
        self.read_timeout = read_timeout
        self._pool = Pool(read_timeout, connect_timeout=connect_timeout, max_idle=max_idle)

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
        sent = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        url = self.base + self.prefix + path.decode("latin-1")
        try:
            async with asyncio.timeout(timeout):
                reply = await self._pool.request(method.decode("ascii"), url, sent, body)
                content = await reply.read(MAX_REPLY)
        except TimeoutError:
            raise UpstreamError(f"{self.base} sent no reply within {timeout:g} s") from None
        except HttpError as exc:
            if exc.kind == "ConnectError":
                raise UpstreamError(f"cannot connect to {self.base}: {exc.detail}") from None
            if exc.kind == "ReadTimeout":
                raise UpstreamError(
                    f"{self.base} sent no reply within {self.read_timeout:g} s"
                ) from None
            raise UpstreamError(f"{self.base}: {exc}") from None
        return Reply(reply.status, reply.headers, content)

    async def aclose(self) -> None:
        await self._pool.aclose()


__all__ = ["Header", "HttpPool", "Reply", "UpstreamError"]
