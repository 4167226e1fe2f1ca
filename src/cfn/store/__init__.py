"""SQL persistence (layer 2) and the Redis cache layer (layer 1) of cfn.

See docs/store.md. The public surface:

- :class:`Store` (``Store.open(settings)``): every SQL read and write, one
  transaction per method (the loop's journal, :mod:`cfn.loop.journal`, writes
  through it).
- :class:`StatusReader` (:mod:`cfn.store.status`): the portal's fast status read.
- :mod:`cfn.store.reports`: counts and means for the portal's lists and metrics.
- :mod:`cfn.store.records`: one record type per table, used by every layer.
- :func:`record_llm_call`: the provider code's way to log token usage.
- :mod:`cfn.store.skills`: the skills registry (files in the project).
- :class:`QueryCache`, :class:`CachedStore`, :class:`SessionStore`: Redis layer 1.
- :mod:`cfn.store.migrate`: Alembic upgrade / downgrade / current.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cfn.store.cache import CachedStore, CacheStats, QueryCache, SessionStore
    from cfn.store.engine import database_url, make_engine
    from cfn.store.records import (
        AgentRecord,
        AgentTally,
        ApprovalInput,
        ApprovalRecord,
        DecisionRecord,
        EventRecord,
        IterationRecord,
        LlmCallRecord,
        SkillChange,
        SkillRecord,
        TaskRecord,
        TaskSnapshot,
        TaskStats,
        TaskSummary,
        UsageSummary,
    )
    from cfn.store.repository import Store, default_store, record_llm_call
    from cfn.store.status import StatusReader

# Imported on first use: the CLI should not pay for Redis or Alembic to list skills.
_LAZY = {
    "CachedStore": "cache",
    "CacheStats": "cache",
    "QueryCache": "cache",
    "SessionStore": "cache",
    "database_url": "engine",
    "make_engine": "engine",
    "AgentRecord": "records",
    "AgentTally": "records",
    "ApprovalInput": "records",
    "ApprovalRecord": "records",
    "DecisionRecord": "records",
    "EventRecord": "records",
    "IterationRecord": "records",
    "LlmCallRecord": "records",
    "SkillChange": "records",
    "SkillRecord": "records",
    "TaskRecord": "records",
    "TaskSnapshot": "records",
    "TaskStats": "records",
    "TaskSummary": "records",
    "UsageSummary": "records",
    "Store": "repository",
    "default_store": "repository",
    "record_llm_call": "repository",
    "StatusReader": "status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cfn.store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cfn.store.{module}"), name)


__all__ = [
    "AgentRecord",
    "AgentTally",
    "ApprovalInput",
    "ApprovalRecord",
    "CacheStats",
    "CachedStore",
    "DecisionRecord",
    "EventRecord",
    "IterationRecord",
    "LlmCallRecord",
    "QueryCache",
    "SessionStore",
    "SkillChange",
    "SkillRecord",
    "StatusReader",
    "Store",
    "TaskRecord",
    "TaskSnapshot",
    "TaskStats",
    "TaskSummary",
    "UsageSummary",
    "database_url",
    "default_store",
    "make_engine",
    "record_llm_call",
]
