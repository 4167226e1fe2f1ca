"""cfn: run teams of AI coding agents through the CFN Loop.

Run a task from Python (docs/api.md has more)::

    import cfn

    outcome = cfn.run("Add a fizzbuzz(n) function with a test", mode="mvp")
    print(outcome.status, outcome.decision, outcome.iterations)

The loop's own names (``run_loop``, ``new_task``, ``TaskOptions``, ``Outcome``,
``Settings``) are imported on first use: ``import cfn`` stays as cheap as the
error types, because every agent process and every ``cfn`` command imports it
before anything else.
"""

from __future__ import annotations

from cfn._version import __version__
from cfn.errors import (
    AgentContextError,
    AgentLookupError,
    AgentSpawnError,
    AuthError,
    BudgetExceededError,
    CfnError,
    ConfigError,
    ConflictError,
    CorruptRecordError,
    DatabaseError,
    ForbiddenError,
    InvalidIdError,
    InvalidInputError,
    LockNotHeldError,
    McpAuthError,
    McpForbiddenError,
    McpServerError,
    McpToolError,
    MissingCredentialsError,
    NotFoundError,
    PayloadTooLargeError,
    PortUnavailableError,
    ProfileError,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailableError,
    RedisServerMissingError,
    RedisUnavailableError,
    RouteFormatError,
    TaskLeaseError,
    UnknownProviderError,
    UnknownWorktreeError,
    WaitTimeoutError,
    WorktreeError,
)

# Not typing's TYPE_CHECKING: importing typing costs ~20 ms, paid by every agent process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cfn.loop.app import new_task, run, run_loop
    from cfn.loop.orchestrator import Outcome
    from cfn.loop.state import TaskOptions
    from cfn.settings import Settings

__all__ = [
    "AgentContextError",
    "AgentLookupError",
    "AgentSpawnError",
    "AuthError",
    "BudgetExceededError",
    "CfnError",
    "ConfigError",
    "ConflictError",
    "CorruptRecordError",
    "DatabaseError",
    "ForbiddenError",
    "InvalidIdError",
    "InvalidInputError",
    "LockNotHeldError",
    "McpAuthError",
    "McpForbiddenError",
    "McpServerError",
    "McpToolError",
    "MissingCredentialsError",
    "NotFoundError",
    "Outcome",
    "PayloadTooLargeError",
    "PortUnavailableError",
    "ProfileError",
    "ProviderError",
    "ProviderRequestError",
    "ProviderUnavailableError",
    "RedisServerMissingError",
    "RedisUnavailableError",
    "RouteFormatError",
    "Settings",
    "TaskLeaseError",
    "TaskOptions",
    "UnknownProviderError",
    "UnknownWorktreeError",
    "WaitTimeoutError",
    "WorktreeError",
    "__version__",
    "new_task",
    "run",
    "run_loop",
]


def __getattr__(name: str) -> Any:
    if name in ("new_task", "run", "run_loop"):
        from cfn.loop import app

        return getattr(app, name)
    if name == "Outcome":
        from cfn.loop.orchestrator import Outcome

        return Outcome
    if name == "TaskOptions":
        from cfn.loop.state import TaskOptions

        return TaskOptions
    if name == "Settings":
        from cfn.settings import Settings

        return Settings
    raise AttributeError(f"module 'cfn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
