"""What both HTTP clients share: one connection pool, JSON posts, SSE streams.

Each ``ProviderClient`` owns one ``http11.Pool`` (HTTP/1.1, kept-alive
connections, 307/308 redirects followed, ``timeout`` for connect, each write
and each read alike, the proxies ``Settings`` read). Transport failures and
non-2xx replies are sorted here, once, by ``errors``; the clients above only
see parsed JSON, SSE events, ``Transient`` and ``ProviderRequestError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from cfn.providers.clients.base import Transient
from cfn.providers.clients.errors import malformed, status_error, transport_error
from cfn.system.http11 import HttpError, Pool, Proxies, Response

if TYPE_CHECKING:
    from cfn.settings import Settings

#: As the official SDKs had it: many agents of one process share a provider's client.
MAX_IDLE = 100
#: After ``[DONE]``, how long to read what is left so the connection can be reused.
DRAIN_TIMEOUT = 0.1


def proxies_of(settings: Settings) -> Proxies:
    """The proxies for provider calls: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY."""
    fallback = settings.all_proxy or None
    no_proxy = tuple(p for p in (settings.no_proxy or "").split(",") if p.strip())
    return Proxies(
        http=settings.http_proxy or fallback,
        https=settings.https_proxy or fallback,
        no_proxy=no_proxy,
    )


def dumps(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate in some text: escape it instead
        return json.dumps(body, separators=(",", ":")).encode()


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Wire:
    """POSTs JSON to one URL of one provider."""

    def __init__(
        self,
        provider: str,
        key_hint: str,
        url: str,
        headers: Mapping[str, str],
        timeout: float,
        proxies: Proxies | None = None,
    ) -> None:
        self.provider = provider
        self.key_hint = key_hint
        self.url = url
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        self.headers.update(headers)
        self.http = Pool(timeout, max_idle=MAX_IDLE, proxies=proxies)

    async def _refused(self, response: Response) -> Exception:
        try:
            content = await response.read()
        except HttpError as exc:
            return transport_error(exc)
        finally:
            await response.aclose()
        return status_error(
            response.status, response.headers, content, self.provider, self.key_hint
        )

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The reply's JSON object."""
        try:
            response = await self.http.request("POST", self.url, self.headers, dumps(body))
            if not response.is_success:
                raise await self._refused(response)
            content = await response.read()
        except HttpError as exc:
            raise transport_error(exc) from exc
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise malformed("JSON reply", exc) from exc
        if not isinstance(data, dict):
            raise malformed("JSON reply", TypeError(f"{type(data).__name__}, not an object"))
        return data

    async def open(self, body: dict[str, Any]) -> Response:
        """A 2xx streamed response; the caller closes it."""
        try:
            response = await self.http.request("POST", self.url, self.headers, dumps(body))
        except HttpError as exc:
            raise transport_error(exc) from exc
        if response.is_success:
            return response
        raise await self._refused(response)

    async def aclose(self) -> None:
        await self.http.aclose()


async def sse_events(response: Response) -> AsyncGenerator[tuple[str | None, str], None]:
    """``(event name or None, data)`` of each server-sent event; a cut stream is ``Transient``."""
    event: str | None = None
    data: list[str] = []
    try:
        async for line in response.iter_lines():
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = None, []
                continue
            name, _, value = line.partition(":")
            if not name:  # a comment, e.g. ": keep-alive"
                continue
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
        if data:  # the last event, when the stream ends without its blank line
            yield event, "\n".join(data)
    except HttpError as exc:
        raise transport_error(exc) from exc


async def drain(events: AsyncIterator[object]) -> None:
    """Read the rest of a finished stream (briefly), so its connection goes back to the pool."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for _ in events:
                pass
    except (Transient, TimeoutError):
        pass  # the reply is complete; a failed cleanup must not turn it into an error
