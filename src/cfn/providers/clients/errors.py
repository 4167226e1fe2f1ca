"""Sort a failed call into ``Transient`` or a cfn error, the same way for both wire formats.

The clients talk HTTP themselves (``wire``); what can go wrong arrives here as
an ``http11.HttpError`` (no answer, a dropped connection), a non-2xx status with
its body and headers, or an error inside a 200 stream (Anthropic's ``error``
event, an OpenAI chunk carrying ``error``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cfn.errors import ProviderRequestError
from cfn.providers.clients.base import Transient, parse_retry_after
from cfn.system.http11 import HttpError

_REQUEST_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)


def error_object(body: Any) -> dict[str, Any] | None:
    """The error object of an error body: ``{"error": {...}}``, or the body itself."""
    err = body
    # Unwrapped twice, as the SDKs did (the client unwrapped once, the message lookup again).
    for _ in range(2):
        if isinstance(err, dict):
            err = err.get("error", err)
    return err if isinstance(err, dict) else None


def error_message(body: Any, fallback: str) -> str:
    err = error_object(body)
    if err is not None and isinstance(err.get("message"), str):
        return str(err["message"])[:300]
    return fallback[:300]


def _error_type(body: Any) -> str | None:
    err = error_object(body)
    kind = err.get("type") if err is not None else None
    return kind if isinstance(kind, str) else None


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:  # not JSON (an HTML error page), or not UTF-8
        return None


def transport_error(exc: HttpError) -> Transient:
    """No answer in time, or no usable connection (refused, reset, cut mid-body)."""
    if exc.timeout:
        return Transient("timeout", f"no answer within the timeout ({exc.kind})")
    return Transient("connection_error", f"{exc.kind}: {exc.detail}"[:300])


def status_error(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    provider: str,
    key_hint: str,
) -> Transient | ProviderRequestError:
    """A non-2xx reply: 429, 5xx, 408 and 409 are transient; other 4xx the request's fault."""
    message = error_message(_json_or_none(content), f"Error code: {status}")
    if status == 429:
        return Transient(
            "rate_limited", message, status_code=status, retry_after=parse_retry_after(headers)
        )
    if status >= 500 or status in (408, 409):
        return Transient(
            "server_error", message, status_code=status, retry_after=parse_retry_after(headers)
        )
    if status in (401, 403):
        return ProviderRequestError(
            f"provider {provider!r} refused the credentials ({status}: {message}); check {key_hint}"
        )
    if status < 400:
        # A redirect that was not followed, or an informational status: no answer to use.
        return Transient("server_error", f"unexpected status {status}: {message}")
    return ProviderRequestError(f"provider {provider!r} rejected the request ({status}): {message}")


def stream_error_event(data: str, provider: str) -> Transient | ProviderRequestError:
    """Anthropic's ``error`` event inside a 200 stream, sorted by the error's own type."""
    try:
        body: Any = json.loads(data)
        fallback = f"{body}"
    except ValueError:
        body, fallback = None, data or "Error code: 200"
    message = error_message(body, fallback)
    kind = _error_type(body)
    if kind in _REQUEST_ERROR_TYPES:
        return ProviderRequestError(
            f"provider {provider!r} rejected the request mid-stream ({kind}): {message}"
        )
    return Transient("server_error", f"{kind or 'error'} event in stream: {message}")


def stream_error_chunk(error: Any) -> Transient:
    """An OpenAI-style chunk ``{"error": ...}`` inside a 200 stream."""
    return Transient("server_error", error_message(error, "An error occurred during streaming"))


def malformed(what: str, exc: Exception) -> Transient:
    """A 2xx reply whose body is not the JSON it should be (a proxy's page, a cut body)."""
    return Transient("server_error", f"malformed {what} from the provider: {exc}"[:300])
