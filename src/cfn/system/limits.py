"""Memory and CPU limits as people write them (``512m``, ``1.5g``, ``0.5`` CPUs).

One parser for every limit cfn applies: agents (AGENT_MEMORY_LIMIT,
AGENT_CPU_LIMIT), the MCP servers' table and the compose stack's
``deploy.resources``, so ``1g`` means the same bytes everywhere.
"""

from __future__ import annotations

import math
import os
import re

from cfn.errors import InvalidInputError

MEMORY_MIN = 4 * 1024 * 1024
MEMORY_MAX = 1024**5
_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)([bkmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory_limit(value: object, what: str = "AGENT_MEMORY_LIMIT") -> int:
    """``512m``/``1g``/``1.5g``/``65536k``/bytes (docker's units) → bytes."""
    match = _MEMORY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInputError(
            f"{what} {value!r} is not a memory size: use a number with an optional unit "
            "b, k, m, g or t (e.g. 512m, 1g)"
        )
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MEMORY_MIN <= number <= MEMORY_MAX:
        raise InvalidInputError(
            f"{what} {value!r} is out of range: use at least 4m (and at most 1024t)"
        )
    return int(number)


def parse_cpu_limit(value: object, what: str = "AGENT_CPU_LIMIT") -> float:
    """CPUs as ``docker run --cpus`` takes them: 0.01 up to the machine's CPU count."""
    try:
        cpus = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        cpus = math.nan
    available = os.cpu_count() or 1
    if isinstance(value, bool) or not math.isfinite(cpus) or not 0.01 <= cpus <= available:
        raise InvalidInputError(
            f"{what} {value!r} is not a CPU limit: use a number from 0.01 to {available} "
            "(this machine's CPUs), e.g. 1.0 or 0.5"
        )
    return cpus
