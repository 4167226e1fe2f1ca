"""One exception hierarchy for the whole package.

Every message tells the user what went wrong and, where it can, what to do.
The CLI maps ``exit_code`` to the process exit status: 2 for bad input (as
argument parsers do), 1 for everything that failed at run time.
"""

from __future__ import annotations


class CfnError(Exception):
    """Base class: a failure with a message meant for a person."""

    exit_code: int = 1


class InvalidInputError(CfnError, ValueError):
    """Input (an id, a flag, a payload, a config value) is not acceptable."""

    exit_code = 2


class InvalidIdError(InvalidInputError):
    """An id that would be unsafe as part of a Redis key or a path."""


class PayloadTooLargeError(InvalidInputError):
    """A value over the configured size limit."""


class ConfigError(CfnError):
    """The configuration (environment, settings file) is not usable."""

    exit_code = 2


class RedisUnavailableError(CfnError):
    """Neither the primary nor the fallback Redis could serve a request."""


class RedisServerMissingError(CfnError):
    """The redis-server binary needed for the embedded Redis is not installed."""


class WaitTimeoutError(CfnError):
    """A wait (signal, results, lock) ran out of time."""


class CorruptRecordError(CfnError):
    """A coordination record in Redis is not what cfn writes there (a list overwritten by
    a string, ...): an agent or another program damaged it."""


class LockNotHeldError(CfnError):
    """A lock operation by someone who does not hold the lock."""


class PortUnavailableError(CfnError):
    """No free port could be found for a service."""


# --- providers (issue 4) ------------------------------------------------------------


class ProviderError(CfnError):
    """An LLM call failed (after retries and fallbacks, where those apply)."""


class UnknownProviderError(InvalidInputError):
    """A provider or model name that the route table does not know."""


class RouteFormatError(InvalidInputError):
    """A route string that is not ``provider:model``, or a bad fallback chain."""


class ProfileError(InvalidInputError):
    """An agent profile whose fields are missing or wrong."""


class MissingCredentialsError(ConfigError):
    """A provider was chosen whose API key variable is not set."""


class ProviderUnavailableError(ProviderError):
    """Every provider of a fallback chain failed; the message lists each hop."""


class ProviderRequestError(ProviderError):
    """A provider refused the request itself (4xx other than 429): retrying cannot help."""


class BudgetExceededError(ProviderError):
    """The task's CFN_TASK_BUDGET_USD is spent; no further LLM calls for it."""


class DatabaseError(CfnError):
    """The SQL database could not be reached, or refused a statement."""


class NotFoundError(CfnError):
    """A named record (a skill, a task, an agent) does not exist."""


# --- agents (issue 5) ----------------------------------------------------------------


class AgentContextError(InvalidInputError):
    """An agent context file that is missing, not JSON, or has a bad field."""


class AgentSpawnError(CfnError):
    """An agent process could not be started (command missing, limits not applicable)."""


class AgentLookupError(CfnError):
    """No such agent to re-attach to, or a pid that is not that agent."""


# --- MCP (issue 6) ----------------------------------------------------------------------


class McpAuthError(CfnError):
    """An MCP token that is missing, malformed, forged or expired (HTTP 401)."""

    status = 401


class McpForbiddenError(CfnError):
    """A valid MCP token that may not do this: wrong skill, task or scope (HTTP 403)."""

    status = 403


class McpToolError(InvalidInputError):
    """A tool call with bad arguments, or one its server refuses (HTTP 400)."""

    status = 400


class McpServerError(CfnError):
    """An MCP server could not be started, reached, or answered with an error (HTTP 502)."""

    status = 502


# --- portal (issue 7) ----------------------------------------------------------------


class AuthError(CfnError):
    """A missing, forged, expired or otherwise unusable token (HTTP 401)."""


class ForbiddenError(CfnError):
    """A valid token whose role or task does not allow the request (HTTP 403)."""


class ConflictError(CfnError):
    """The request contradicts the current state (HTTP 409): a duplicate, an ambiguous id."""


class TaskLeaseError(ConflictError):
    """Another orchestrator runs the task (or took it over from this one)."""


# --- worktrees and deployment (issue 8) ------------------------------------------------


class WorktreeError(CfnError):
    """A git worktree operation failed (git's own message is included)."""


class UnknownWorktreeError(InvalidInputError):
    """No worktree of the named branch exists."""
