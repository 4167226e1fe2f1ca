"""Read-only inspection for debugging (seed: ``redis-cli --scan --pattern``)."""

from __future__ import annotations

from cfn.coordination.connection import RedisManager
from cfn.errors import InvalidInputError

MAX_PATTERN = 256


async def scan_keys(redis: RedisManager, pattern: str, limit: int = 1000) -> list[str]:
    """Keys matching ``pattern`` via SCAN (never KEYS, which blocks the server)."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN or "\n" in pattern:
        raise InvalidInputError(f"pattern must be 1 to {MAX_PATTERN} characters on one line")
    if isinstance(limit, bool) or not 0 < limit <= 1_000_000:
        raise InvalidInputError(f"limit must be from 1 to 1000000, got {limit!r}")

    async def scan(r: object) -> list[str]:
        found: list[str] = []
        async for key in r.scan_iter(match=pattern, count=1000):  # type: ignore[attr-defined]
            found.append(key)
            if len(found) >= limit:
                break
        return sorted(found)

    return await redis.run(scan)
