"""Layer 1 (Redis, transient): the query cache and per-task session data.

**Query cache.** A read query's result is kept at ``cache:query:{hash}`` with
a TTL. The hash covers the query's identity, its parameters *and the current
version of every tag it read*; a tag names a table or a row set (``skills``,
one skill's approvals) and its version lives at ``cache:tag:{hash}``. A write
bumps the versions of the tags it touched after its transaction commits, so
every entry built from the old rows becomes unreachable at once, with no
SCAN and no race: a reader that loaded old rows stores them under the old
versions, which nobody asks for any more. Unreachable entries expire by TTL.

The hit ratio is a figure: ``cache:stats`` counts lookups and misses across
every process; :attr:`QueryCache.local` counts this instance's own.

Redis being down never fails a read: the cache logs once and reads SQL.
A failed invalidation is logged; the TTL bounds how long a stale entry lives.

**Session data** lives at ``session:{task_id}`` as one JSON document with a TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.errors import InvalidInputError, PayloadTooLargeError, RedisUnavailableError
from cfn.settings import Settings
from cfn.store.records import ApprovalInput, ApprovalRecord, SkillChange, SkillRecord
from cfn.store.repository import Store
from cfn.store.skills import add_skill

log = logging.getLogger(__name__)
T = TypeVar("T")

# --- tags ----------------------------------------------------------------------------


def tag(table: str, scope: str | None = None) -> str:
    """A cache tag: a whole table, or one row set of it (``scope``, e.g. a skill name)."""
    return table if scope is None else f"{table}\x1f{scope}"


def skill_write_tags(name: str) -> list[str]:
    """What adding or changing skill ``name`` invalidates."""
    return [tag("skills"), tag("skills", name)]


def approval_write_tags(name: str) -> list[str]:
    """What a new approval of skill ``name`` invalidates."""
    return [tag("approval_history"), tag("approval_history", name)]


def _tag_key(value: str) -> str:
    return keys.cache_tag(hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32])


# --- the query cache -------------------------------------------------------------------


@dataclass
class CacheStats:
    lookups: int = 0
    misses: int = 0

    @property
    def hits(self) -> int:
        return self.lookups - self.misses

    @property
    def hit_ratio(self) -> float | None:
        """hits / lookups, or None before the first lookup."""
        return None if self.lookups == 0 else self.hits / self.lookups


class QueryCache:
    """Versioned read-through cache of SQL query results in Redis."""

    def __init__(self, manager: RedisManager, ttl: int = 300) -> None:
        if ttl <= 0:
            raise InvalidInputError(f"cache TTL {ttl} must be > 0 seconds")
        self.manager = manager
        self.ttl = ttl
        self.local = CacheStats()
        self._warned = False

    @classmethod
    def from_settings(cls, manager: RedisManager, settings: Settings) -> QueryCache:
        return cls(manager, settings.cfn_query_cache_ttl)

    async def fetch(
        self,
        query: str,
        params: Mapping[str, Any],
        tags: Sequence[str],
        load: Callable[[], T],
        adapter: TypeAdapter[T],
    ) -> T:
        """The cached result of ``query(params)``, or ``load()``'s result (then cached)."""
        tag_keys = [_tag_key(t) for t in tags]
        try:
            versions = await self.manager.run(lambda r: r.mget(tag_keys)) if tag_keys else []
            digest = hashlib.sha256(
                json.dumps([query, params, versions], sort_keys=True, default=str).encode()
            ).hexdigest()
            key = keys.cache_query(digest)

            async def lookup(r: Any) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                pipe.get(key)
                pipe.hincrby(keys.cache_stats(), "lookups", 1)
                result: list[Any] = await pipe.execute()
                return result

            cached, _ = await self.manager.run(lookup)
        except RedisUnavailableError as exc:
            self._warn(exc)
            return await asyncio.to_thread(load)
        self.local.lookups += 1
        if cached is not None:
            return adapter.validate_json(cached)
        self.local.misses += 1
        value = await asyncio.to_thread(load)
        blob = adapter.dump_json(value).decode()

        async def store(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.set(key, blob, ex=self.ttl)
            pipe.hincrby(keys.cache_stats(), "misses", 1)
            await pipe.execute()

        try:
            await self.manager.run(store)
        except RedisUnavailableError as exc:
            self._warn(exc)
        return value

    async def invalidate(self, tags: Iterable[str]) -> None:
        """Bump the version of every tag: entries that read them are gone for readers."""
        tag_keys = sorted({_tag_key(t) for t in tags})
        if not tag_keys:
            return

        async def bump(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for key in tag_keys:
                pipe.incr(key)
            await pipe.execute()

        try:
            await self.manager.run(bump)
        except RedisUnavailableError as exc:
            log.warning(
                "query cache not invalidated (%s); stale entries live <= %d s", exc, self.ttl
            )

    async def stats(self) -> CacheStats:
        """Lookups and misses of every process sharing this Redis."""

        async def read(r: Any) -> dict[str, str]:
            raw: dict[str, str] = await r.hgetall(keys.cache_stats())
            return raw

        raw = await self.manager.run(read)
        return CacheStats(lookups=int(raw.get("lookups", 0)), misses=int(raw.get("misses", 0)))

    async def reset_stats(self) -> None:
        await self.manager.run(lambda r: r.delete(keys.cache_stats()))
        self.local = CacheStats()

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            log.warning("query cache unavailable (%s); reading SQL directly", exc)
            self._warned = True


_SKILL = TypeAdapter(SkillRecord)
_SKILLS = TypeAdapter(list[SkillRecord])
_HISTORY = TypeAdapter(list[ApprovalRecord])


class CachedStore:
    """The store's skill reads through the query cache, its writes invalidating it."""

    def __init__(self, store: Store, cache: QueryCache) -> None:
        self.store = store
        self.cache = cache

    async def list_skills(self) -> list[SkillRecord]:
        return await self.cache.fetch(
            "skills.list", {}, [tag("skills")], self.store.list_skills, _SKILLS
        )

    async def get_skill(self, name: str) -> SkillRecord:
        return await self.cache.fetch(
            "skills.get",
            {"name": name},
            [tag("skills", name)],
            lambda: self.store.get_skill(name),
            _SKILL,
        )

    async def history(self, name: str) -> list[ApprovalRecord]:
        return await self.cache.fetch(
            "skills.history",
            {"name": name},
            [tag("skills", name), tag("approval_history", name)],
            lambda: self.store.history(name),
            _HISTORY,
        )

    async def add_skill(
        self, path: str | Path, project_root: Path, name: str | None = None
    ) -> tuple[SkillRecord, SkillChange]:
        record, change = await asyncio.to_thread(add_skill, self.store, path, project_root, name)
        if change is not SkillChange.UNCHANGED:
            await self.cache.invalidate(skill_write_tags(record.name))
        return record, change

    async def add_approvals(self, items: Sequence[ApprovalInput]) -> list[ApprovalRecord]:
        records = await asyncio.to_thread(self.store.add_approvals, items)
        await self.cache.invalidate(
            [t for record in records for t in approval_write_tags(record.skill_name)]
        )
        return records

    async def add_approval(
        self,
        skill_name: str,
        agent_id: str,
        decision: str,
        confidence: float,
        metadata: str | None = None,
    ) -> ApprovalRecord:
        item = ApprovalInput(
            skill_name=skill_name,
            agent_id=agent_id,
            decision=decision,
            confidence=confidence,
            metadata=metadata,
        )
        return (await self.add_approvals([item]))[0]


# --- session data ----------------------------------------------------------------------


class SessionStore:
    """Per-task session data at ``session:{task_id}``: one JSON document with a TTL."""

    def __init__(self, manager: RedisManager, ttl: int = 3600, max_bytes: int = 1024 * 1024):
        if ttl <= 0:
            raise InvalidInputError(f"session TTL {ttl} must be > 0 seconds")
        self.manager = manager
        self.default_ttl = ttl
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, manager: RedisManager, settings: Settings) -> SessionStore:
        """CFN_SESSION_TTL, and CFN_CONTEXT_MAX_BYTES as the size limit."""
        return cls(manager, settings.cfn_session_ttl, settings.cfn_context_max_bytes)

    async def put(self, task_id: str, data: Mapping[str, Any], ttl: int | None = None) -> None:
        key = keys.session(task_id)
        seconds = self.default_ttl if ttl is None else ttl
        if seconds <= 0:
            raise InvalidInputError(f"session TTL {seconds} must be > 0 seconds")
        try:
            blob = json.dumps(dict(data), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"session data is not JSON-serialisable: {exc}") from None
        if len(blob.encode()) > self.max_bytes:
            raise PayloadTooLargeError(
                f"session data is {len(blob.encode())} bytes; the limit is {self.max_bytes}"
            )
        await self.manager.run(lambda r: r.set(key, blob, ex=seconds))

    async def get(self, task_id: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """The session, or None once it expired; ``refresh`` restarts its TTL."""
        key = keys.session(task_id)

        async def read(r: Any) -> str | None:
            if not refresh:
                value: str | None = await r.get(key)
                return value
            pipe = r.pipeline(transaction=True)
            pipe.get(key)
            pipe.expire(key, self.default_ttl)
            got, _ = await pipe.execute()
            return got  # type: ignore[no-any-return]

        blob = await self.manager.run(read)
        if blob is None:
            return None
        value = json.loads(blob)
        return value if isinstance(value, dict) else None

    async def ttl(self, task_id: str) -> int | None:
        """Seconds left, or None when there is no session."""
        left: int = await self.manager.run(lambda r: r.ttl(keys.session(task_id)))
        return None if left < 0 else left

    async def delete(self, task_id: str) -> bool:
        removed: int = await self.manager.run(lambda r: r.delete(keys.session(task_id)))
        return removed > 0


def cache_reachable(settings: Settings) -> bool:
    """Is there a Redis whose cache a CLI write should invalidate?

    REDIS_URL or Sentinels configured, or the embedded redis-server running. A
    write from the CLI does not start the embedded server just to invalidate:
    if it is not running, nothing is reading its cache either, and entries it
    kept on disk expire by their TTL.
    """
    if settings.redis_url or settings.cfn_redis_sentinels:
        return True
    from cfn.coordination.embedded import EmbeddedRedis

    return EmbeddedRedis(settings).status().running
