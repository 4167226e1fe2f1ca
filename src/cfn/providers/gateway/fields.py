"""Checking a request body's fields, for both wire formats (cfn.providers.gateway).

Each check returns the value with its type narrowed, or raises one
``InvalidInputError`` naming the field's path (``messages[2].content[0].text``)
and what is wrong with it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cfn.errors import InvalidInputError


def fail(path: str, problem: str) -> NoReturn:
    raise InvalidInputError(f"invalid request body: {path} {problem}")


def obj(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(path, "must be a JSON object")
    return value


def list_of(value: object, path: str, cap: int) -> list[Any]:
    if not isinstance(value, list):
        fail(path, "must be a list")
    if len(value) > cap:
        fail(path, f"has {len(value)} items; at most {cap} are accepted")
    return value


def text(value: object, path: str, *, nonempty: bool = False, cap: int | None = None) -> str:
    if not isinstance(value, str):
        fail(path, "must be a string")
    if nonempty and not value:
        fail(path, "must not be empty")
    if cap is not None and len(value) > cap:
        fail(path, f"is longer than {cap} characters")
    return value


def integer(value: object, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, "must be an integer")
    if value < minimum:
        fail(path, f"must be at least {minimum}")
    return value


def number(value: object, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(path, "must be a number")
    if not low <= value <= high:
        fail(path, f"must be between {low:g} and {high:g}")
    return float(value)


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, "must be true or false")
    return value
