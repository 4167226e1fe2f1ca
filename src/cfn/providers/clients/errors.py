"""Turn an SDK exception (openai or anthropic, same shape) into Transient or a cfn error."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from cfn.errors import ProviderRequestError
from cfn.providers.clients.base import (
    TIMEOUT_ERRORS,
    TRANSPORT_ERRORS,
    Transient,
    parse_retry_after,
)


def _message(exc: BaseException) -> str:
    body: Any = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
    text = str(getattr(exc, "message", "") or exc)
    return text[:300]


_REQUEST_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)


def _error_type(exc: BaseException) -> str | None:
    body: Any = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    return kind if isinstance(kind, str) else None


def sort_error(exc: BaseException, sdk: ModuleType, provider: str, key_hint: str) -> BaseException:
    """The exception to raise instead of ``exc`` (``exc`` itself when it is not ours to sort)."""
    if isinstance(exc, (sdk.APITimeoutError, *TIMEOUT_ERRORS)):
        return Transient("timeout", f"no answer within the timeout ({type(exc).__name__})")
    if isinstance(exc, (sdk.APIConnectionError, *TRANSPORT_ERRORS)):
        cause = exc.__cause__ or exc
        return Transient("connection_error", f"{type(cause).__name__}: {cause}"[:300])
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        headers = dict(exc.response.headers) if exc.response is not None else None
        message = _message(exc)
        if status < 400:
            # An ``error`` event inside a 200 stream: sort it by the error's own type.
            kind = _error_type(exc)
            if kind in _REQUEST_ERROR_TYPES:
                return ProviderRequestError(
                    f"provider {provider!r} rejected the request mid-stream ({kind}): {message}"
                )
            return Transient("server_error", f"{kind or 'error'} event in stream: {message}")
        if status == 429:
            return Transient(
                "rate_limited",
                message,
                status_code=status,
                retry_after=parse_retry_after(headers),
            )
        if status >= 500 or status in (408, 409):
            return Transient(
                "server_error", message, status_code=status, retry_after=parse_retry_after(headers)
            )
        if status in (401, 403):
            return ProviderRequestError(
                f"provider {provider!r} refused the credentials ({status}: {message}); "
                f"check {key_hint}"
            )
        return ProviderRequestError(
            f"provider {provider!r} rejected the request ({status}): {message}"
        )
    if isinstance(exc, sdk.APIError):
        # An error event inside a stream (e.g. Anthropic's ``overloaded_error``).
        return Transient("server_error", _message(exc))
    return exc
