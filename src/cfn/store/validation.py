"""Checks on values bound for SQL columns, shared by the library and the CLI.

Parameter binding already makes any text safe to *store*; these checks make
sure what we store is what the column means. Control characters are refused
everywhere: PostgreSQL cannot hold NUL in text at all, and the same input
must behave the same on both engines.
"""

from __future__ import annotations

import json
import math
import unicodedata

from cfn.errors import InvalidInputError
from cfn.store.models import DECISIONS


def text_field(value: object, what: str, max_len: int) -> str:
    """Printable text of 1..max_len characters (quotes, ``;``, ``--`` are fine)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be non-empty text")
    if len(value) > max_len:
        raise InvalidInputError(f"{what} is {len(value)} characters; the limit is {max_len}")
    for char in value:
        if unicodedata.category(char) in {"Cc", "Cs"}:
            raise InvalidInputError(
                f"{what} {value!r} contains the control character {char!r}; remove it"
            )
    return value


def skill_name(value: object) -> str:
    return text_field(value, "skill name", 255)


def approver_id(value: object) -> str:
    return text_field(value, "agent id", 255)


def decision(value: object) -> str:
    if not isinstance(value, str) or value.strip().upper() not in DECISIONS:
        raise InvalidInputError(f"unknown decision {value!r}: use one of {', '.join(DECISIONS)}")
    return value.strip().upper()


def confidence(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"confidence {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidInputError(f"confidence {value!r} is outside [0, 1]")
    return number


def metadata_json(value: object) -> str | None:
    """``None``, or JSON text re-serialised canonically (control chars escaped)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError("metadata must be JSON text")
    try:
        parsed = json.loads(value, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"metadata is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: keep it escaped
        text = json.dumps(parsed, ensure_ascii=True, separators=(",", ":"))
    return text


def _no_constant(name: str) -> object:
    raise InvalidInputError(f"metadata is not valid JSON ({name} is not a JSON value)")
