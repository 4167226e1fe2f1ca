"""Redis layer 1: the query cache (hits, invalidation, hit ratio) and session TTLs."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert

from cfn.coordination.connection import RedisManager
from cfn.errors import InvalidIdError, PayloadTooLargeError
from cfn.settings import Settings
from cfn.store.cache import CachedStore, QueryCache, SessionStore, approval_write_tags
from cfn.store.repository import T_APPROVALS, Store
from tests.support.servers import RedisServer


@pytest.fixture
def cached(store: Store, manager: RedisManager) -> CachedStore:
    return CachedStore(store, QueryCache(manager, ttl=60))


async def test_second_read_is_a_hit_served_from_redis(
    cached: CachedStore, store: Store, redis_server: RedisServer
) -> None:
    store.upsert_skill("s", "0" * 64, "skills/s.md")
    await cached.add_approval("s", "a", "APPROVE", 0.5)
    first = await cached.history("s")
    assert cached.cache.local.misses == 1
    # A write behind the cache's back (no invalidation): a hit still shows the old rows,
    # which proves the second read never reached SQL.
    with store.write() as conn:
        conn.execute(
            insert(T_APPROVALS).values(
                skill_id=first[0].skill_id, agent_id="sneaky", decision="DEFER", confidence=0.1
            )
        )
    second = await cached.history("s")
    assert second == first
    assert (cached.cache.local.lookups, cached.cache.local.hits) == (2, 1)
    keys = redis_server.client().keys("cache:query:*")
    assert len(keys) == 1
    assert 0 < redis_server.client().ttl(keys[0]) <= 60


async def test_writes_through_the_store_invalidate_what_they_touched(
    cached: CachedStore, store: Store
) -> None:
    store.upsert_skill("s", "0" * 64, "skills/s.md")
    store.upsert_skill("other", "1" * 64, "skills/o.md")
    assert await cached.history("s") == []
    assert await cached.history("other") == []
    await cached.add_approval("s", "a", "REJECT", 0.3)
    # s's history was invalidated and reloads; other's entry is untouched (a hit).
    assert [h.decision for h in await cached.history("s")] == ["REJECT"]
    assert await cached.history("other") == []
    stats = cached.cache.local
    assert (stats.lookups, stats.misses) == (4, 3)


async def test_invalidate_by_tag_from_another_process_view(
    cached: CachedStore, store: Store, manager: RedisManager
) -> None:
    """A writer that is not this CachedStore (the CLI) invalidates through the same tags."""
    store.upsert_skill("s", "0" * 64, "skills/s.md")
    assert await cached.history("s") == []
    store.add_approval("s", "cli", "APPROVE", 1.0)
    await QueryCache(manager).invalidate(approval_write_tags("s"))
    assert [h.agent_id for h in await cached.history("s")] == ["cli"]


async def test_hit_ratio_is_a_figure_shared_through_redis(
    cached: CachedStore, store: Store, manager: RedisManager
) -> None:
    store.upsert_skill("s", "0" * 64, "skills/s.md")
    for _ in range(10):
        await cached.list_skills()
    other = QueryCache(manager)
    stats = await other.stats()
    assert (stats.lookups, stats.misses, stats.hits) == (10, 1, 9)
    assert stats.hit_ratio == pytest.approx(0.9)
    assert cached.cache.local.hit_ratio == pytest.approx(0.9)
    await other.reset_stats()
    assert (await other.stats()).hit_ratio is None


async def test_redis_down_falls_back_to_sql(store: Store, tmp_path: object) -> None:
    from tests.support.servers import free_port

    dead = RedisManager.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        Settings(redis_connect_timeout=0.5, redis_max_retries_per_request=0),
    )
    try:
        cached = CachedStore(store, QueryCache(dead))
        store.upsert_skill("s", "0" * 64, "skills/s.md")
        assert [s.name for s in await cached.list_skills()] == ["s"]
        await cached.add_approval("s", "a", "APPROVE", 0.5)  # commits; invalidation is logged
        assert len(store.history("s")) == 1
    finally:
        await dead.close()


async def test_session_data_with_ttl(manager: RedisManager, redis_server: RedisServer) -> None:
    sessions = SessionStore.from_settings(manager, Settings(cfn_session_ttl=1))
    await sessions.put("task-1", {"user": "o'neil; --", "step": 2})
    assert redis_server.client().exists("session:task-1")
    assert await sessions.get("task-1") == {"user": "o'neil; --", "step": 2}
    assert 0 < (await sessions.ttl("task-1") or 0) <= 1
    await sessions.put("task-2", {"keep": True}, ttl=30)
    await asyncio.sleep(1.2)
    assert await sessions.get("task-1") is None
    assert await sessions.ttl("task-1") is None
    assert await sessions.get("task-2", refresh=True) == {"keep": True}
    assert await sessions.ttl("task-2") == 1  # refresh restarted the default TTL
    assert await sessions.delete("task-2") is True
    with pytest.raises(InvalidIdError):
        await sessions.put("task:*", {})
    with pytest.raises(PayloadTooLargeError):
        await SessionStore(manager, max_bytes=10).put("t", {"x": "y" * 20})
