"""Checks shared by the coordination primitives: JSON, sizes, timeouts, TTLs."""

from __future__ import annotations

import json
import math
from typing import Any

from cfn.errors import InvalidInputError, PayloadTooLargeError

MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_TTL = 30 * 24 * 3600


def check_json(value: str, what: str, max_bytes: int) -> Any:
    """Parse ``value`` as JSON within ``max_bytes``; return the parsed value."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a JSON string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes, over the {max_bytes}-byte limit "
            "(CFN_CONTEXT_MAX_BYTES raises it)"
        )
    try:
        return json.loads(value, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_timeout(value: float, what: str = "timeout") -> float:
    """A wait in seconds: positive, finite, at most a week."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
        or value > MAX_TIMEOUT
    ):
        raise InvalidInputError(
            f"{what} must be a number of seconds above 0 and at most {int(MAX_TIMEOUT)}, "
            f"got {value!r}"
        )
    return float(value)


def check_ttl(value: int, what: str = "ttl") -> int:
    """A time-to-live in whole seconds: 1 .. 30 days."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TTL:
        raise InvalidInputError(
            f"{what} must be a whole number of seconds from 1 to {MAX_TTL}, got {value!r}"
        )
    return value


def check_count(value: int, what: str, maximum: int = 100_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise InvalidInputError(f"{what} must be a whole number from 1 to {maximum}, got {value!r}")
    return value


def check_fraction(value: float, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        raise InvalidInputError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)
