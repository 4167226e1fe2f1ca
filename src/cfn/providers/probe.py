"""Is a provider's endpoint reachable? Any HTTP answer counts; a 401 still means "up"."""

from __future__ import annotations

import asyncio
import time

import httpx

from cfn.providers.routes import RouteTable


async def probe(client: httpx.AsyncClient, url: str) -> str:
    started = time.perf_counter()
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return f"no: {type(exc).__name__}"
    return f"yes ({response.status_code}, {(time.perf_counter() - started) * 1000:.0f} ms)"


async def probe_all(table: RouteTable, timeout: float = 2.0) -> dict[str, str]:
    """Probe every routed provider's base URL at once (no key is sent)."""
    names = [n for n in table.routes if not table.specs[n].is_offline]
    async with httpx.AsyncClient(timeout=timeout) as client:
        results = await asyncio.gather(*(probe(client, table.specs[n].base_url) for n in names))
    return dict(zip(names, results, strict=True))
