"""What both HTTP clients share: one pooled httpx client, JSON posts, SSE streams.

Each ``ProviderClient`` owns one ``httpx.AsyncClient`` (HTTP/1.1, kept-alive
connections, redirects followed, ``timeout`` for connect, write, each read
and the pool wait alike). httpx exceptions and non-2xx replies are sorted
here, once, by ``errors``; the clients above only see parsed JSON, SSE
events, ``Transient`` and ``ProviderRequestError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx

from cfn.providers.clients.base import Transient
from cfn.providers.clients.errors import malformed, status_error, transport_error

#: As the official SDKs had it: many agents of one process share a provider's client.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
#: After ``[DONE]``, how long to read what is left so the connection can be reused.
DRAIN_TIMEOUT = 0.1


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
    ) -> None:
        self.provider = provider
        self.key_hint = key_hint
        self.url = url
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        self.headers.update(headers)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), limits=LIMITS, follow_redirects=True
        )

    def _refused(self, response: httpx.Response) -> Exception:
        return status_error(
            response.status_code, response.headers, response.content, self.provider, self.key_hint
        )

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The reply's JSON object."""
        try:
            response = await self.http.post(self.url, content=dumps(body), headers=self.headers)
        except httpx.RequestError as exc:
            raise transport_error(exc) from exc
        if not response.is_success:
            raise self._refused(response)
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise malformed("JSON reply", exc) from exc
        if not isinstance(data, dict):
            raise malformed("JSON reply", TypeError(f"{type(data).__name__}, not an object"))
        return data

    async def open(self, body: dict[str, Any]) -> httpx.Response:
        """A 2xx streamed response; the caller closes it."""
        request = self.http.build_request(
            "POST", self.url, content=dumps(body), headers=self.headers
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.RequestError as exc:
            raise transport_error(exc) from exc
        if response.is_success:
            return response
        try:
            await response.aread()
        except httpx.RequestError as exc:
            raise transport_error(exc) from exc
        finally:
            await response.aclose()
        raise self._refused(response)

    async def aclose(self) -> None:
        await self.http.aclose()


async def sse_events(response: httpx.Response) -> AsyncGenerator[tuple[str | None, str], None]:
    """``(event name or None, data)`` of each server-sent event; a cut stream is ``Transient``."""
    event: str | None = None
    data: list[str] = []
    try:
        async for line in response.aiter_lines():
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
    except httpx.RequestError as exc:
        raise transport_error(exc) from exc


async def drain(events: AsyncIterator[object]) -> None:
    """Read the rest of a finished stream (briefly), so its connection goes back to the pool."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for _ in events:
                pass
    except (Transient, TimeoutError):
        pass  # the reply is complete; a failed cleanup must not turn it into an error
