"""Redis coordination: connections, context, signals, completions, locks."""

from cfn.coordination.completion import (
    AgentResult,
    CollectReport,
    collect_results,
    signal_completion,
    wait_for_loop_completion,
)
from cfn.coordination.connection import RedisManager
from cfn.coordination.context import delete_context, get_context, store_context
from cfn.coordination.locks import LockHandle, acquire_lock, extend_lock, release_lock
from cfn.coordination.signals import send_signal, wait_signal

__all__ = [
    "AgentResult",
    "CollectReport",
    "LockHandle",
    "RedisManager",
    "acquire_lock",
    "collect_results",
    "delete_context",
    "extend_lock",
    "get_context",
    "release_lock",
    "send_signal",
    "signal_completion",
    "store_context",
    "wait_for_loop_completion",
    "wait_signal",
]
