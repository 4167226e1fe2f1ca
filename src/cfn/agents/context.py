"""The CLI agent context (seed: "Context Passing", ``generate_cli_context``).

Every agent gets one JSON file describing who it is and how to coordinate::

    {
      "task_id": "...", "agent_id": "...", "mode": "cli", "workspace": "...",
      "coordination": {
        "redis": {"host": "...", "port": 6379},
        "channels": {"complete": "coord:{task}:complete",
                     "error": "coord:{task}:error",
                     "signal": "coord:{task}:signal:{agent}"}
      },
      "resources": {"memory_limit": "1g", "timeout": "300"},
      "cfn": {...}
    }

The top-level keys and their value types are exactly the seed's (the seed
renders ``memory_limit`` and ``timeout`` as strings, so do we), so a bash
agent written against the seed reads ours unchanged. Everything cfn adds lives
under the one ``cfn`` object. No shared secret is written here: ``cfn.redis``
names the environment variables that carry the URL and password; with
per-agent Redis ACL users (cfn.coordination.acl) it also holds the agent's own
disposable ``username`` and ``password``, deleted from Redis when the agent ends.

The file is written 0600 to ``<state>/tasks/{task}/agents/{agent}/context.json``
(not ``<state>/agents/``, where agent profiles may live).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cfn import keys
from cfn.errors import AgentContextError, InvalidInputError
from cfn.settings import Settings

CONTEXT_FILE = "context.json"
CONTEXT_VERSION = 1
MAX_CONTEXT_BYTES = 4 * 1024 * 1024
DEFAULT_MODE = "cli"
DEFAULT_PROVIDER = "zai"
DEFAULT_COMPOSE_PROJECT = "cfn-main"
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def agent_name(task_id: str, agent_id: str) -> str:
    """``cfn-agent-{agent}-{task}``: the seed's container name, also our process name."""
    agent = keys.validate_id(agent_id, "agent id")
    task = keys.validate_id(task_id, "task id")
    return f"cfn-agent-{agent}-{task}"


def agent_dir(state_dir: Path, task_id: str, agent_id: str) -> Path:
    """Where one agent's context, log and exit record live (ids validated first)."""
    task = keys.validate_id(task_id, "task id")
    agent = keys.validate_id(agent_id, "agent id")
    return state_dir / "tasks" / task / "agents" / agent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RedisEndpoint(_Strict):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)


class Channels(_Strict):
    complete: str
    error: str
    signal: str


class Coordination(_Strict):
    redis: RedisEndpoint
    channels: Channels


class Resources(_Strict):
    """The seed's resources: both strings, as ``generate_cli_context`` renders them."""

    memory_limit: str = Field(min_length=1, max_length=32)
    timeout: str = Field(min_length=1, max_length=32)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if _DECIMAL.fullmatch(value) is None or float(value) <= 0:
            raise ValueError('must be a number of seconds above 0, as a string (e.g. "300")')
        return value

    @property
    def timeout_seconds(self) -> float:
        return float(self.timeout)


class RedisAccess(_Strict):
    """How to reach Redis beyond host/port, naming env variables instead of secrets."""

    url_env: str = "REDIS_URL"
    password_env: str = "REDISCLI_AUTH"  # noqa: S105 - a variable name, not a secret
    username: str = Field(default="", max_length=256)
    password: str = Field(default="", max_length=256, repr=False)
    db: int = Field(default=0, ge=0, le=1_000_000)


class Heartbeat(_Strict):
    key: str
    interval: float = Field(gt=0, le=3600)
    ttl_ms: int = Field(gt=0)


class CfnExtras(_Strict):
    """cfn's additions to the seed's context, kept apart under ``cfn``."""

    version: int = CONTEXT_VERSION
    name: str
    provider: str
    compose_project: str = DEFAULT_COMPOSE_PROJECT
    role: str | None = None
    loop: int | None = Field(default=None, ge=1, le=3)
    iteration: int | None = Field(default=None, ge=0)
    loop_mode: str | None = None
    profile: str | None = None
    model: str | None = None
    #: Which agent runs: cfn's own tool loop, or the Claude Code CLI under it.
    backend: Literal["builtin", "claude-code", "command"] = "builtin"
    epic: str | None = None
    feedback: list[str] = Field(default_factory=list)
    cpu_limit: str = "1.0"
    heartbeat: Heartbeat
    signal_key: str
    result_key: str
    payload_key: str
    redis: RedisAccess = Field(default_factory=RedisAccess)
    state_dir: str | None = None
    log_file: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cpu_limit")
    @classmethod
    def _cpus(cls, value: str) -> str:
        if _DECIMAL.fullmatch(value) is None or float(value) <= 0:
            raise ValueError('must be a positive number of CPUs, as a string (e.g. "1.0")')
        return value


#: The agent modes (``spawn-agent AGENT TASK [MODE]``, the context's ``mode``): the seed
#: names one, ``cli``. The loop's mvp / standard / enterprise are ``cfn run --mode``.
AGENT_MODES = ("cli",)


def check_agent_mode(mode: object) -> str:
    if mode not in AGENT_MODES:
        raise InvalidInputError(
            f"agent mode {mode!r} is not one of {', '.join(AGENT_MODES)} (the loop's "
            "mvp, standard and enterprise are `cfn run --mode`)"
        )
    return str(mode)


class AgentContext(_Strict):
    """One agent's context: the seed's keys plus the ``cfn`` object."""

    task_id: str
    agent_id: str
    mode: str
    workspace: str = Field(min_length=1)
    coordination: Coordination
    resources: Resources
    cfn: CfnExtras

    @field_validator("task_id", "agent_id")
    @classmethod
    def _ids(cls, value: str, info: Any) -> str:
        return keys.validate_id(value, str(info.field_name).replace("_", " "))

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return check_agent_mode(value)

    @model_validator(mode="after")
    def _consistent(self) -> AgentContext:
        """Channels and keys must be the ones cfn's key builders give for these ids,
        or the agent would report where nobody listens."""
        t, a = self.task_id, self.agent_id
        expected = {
            "coordination.channels.complete": (
                self.coordination.channels.complete,
                keys.coord_complete(t),
            ),
            "coordination.channels.error": (self.coordination.channels.error, keys.coord_error(t)),
            "coordination.channels.signal": (
                self.coordination.channels.signal,
                keys.coord_signal(t, a),
            ),
            "cfn.name": (self.cfn.name, agent_name(t, a)),
            "cfn.heartbeat.key": (self.cfn.heartbeat.key, keys.heartbeat(t, a)),
            "cfn.signal_key": (self.cfn.signal_key, keys.swarm_signal(t, a)),
            "cfn.result_key": (self.cfn.result_key, keys.swarm_result(t, a)),
            "cfn.payload_key": (self.cfn.payload_key, keys.coord_payload(t, a)),
        }
        for field, (got, want) in expected.items():
            if got != want:
                raise ValueError(f"{field} is {got!r}; for this task and agent it must be {want!r}")
        return self

    # --- conversion -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfn.name

    @property
    def provider(self) -> str:
        return self.cfn.provider

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, seed keys first, then ``cfn``."""
        data = self.model_dump(mode="json")
        if not self.cfn.redis.password:  # only an agent's own ACL user has one
            data["cfn"]["redis"].pop("password", None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "agent context") -> AgentContext:
        """Validate ``data``; any problem is one AgentContextError naming the field(s)."""
        if not isinstance(data, dict):
            raise AgentContextError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise AgentContextError(f"{source}: {_describe(exc)}") from None
        except InvalidInputError as exc:
            raise AgentContextError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "agent context") -> AgentContext:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise AgentContextError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AgentContext:
        """Read and validate a context file (``cfn agent run --context FILE``)."""
        file = Path(path)
        try:
            size = file.stat().st_size
            if size > MAX_CONTEXT_BYTES:
                raise AgentContextError(
                    f"context file {file}: {size} bytes, over the {MAX_CONTEXT_BYTES}-byte limit"
                )
            # Read no more than the limit allows whatever stat said: a device or a pipe
            # (/dev/zero, a FIFO) reports size 0 and would otherwise be read forever.
            with open(file, "rb") as handle:
                data = handle.read(MAX_CONTEXT_BYTES + 1)
            if len(data) > MAX_CONTEXT_BYTES:
                raise AgentContextError(
                    f"context file {file}: over the {MAX_CONTEXT_BYTES}-byte limit"
                )
            text = data.decode("utf-8")
        except FileNotFoundError:
            raise AgentContextError(f"context file {file} does not exist") from None
        except IsADirectoryError:
            raise AgentContextError(f"context file {file} is a directory") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentContextError(f"context file {file} cannot be read: {exc}") from None
        return cls.from_json(text, f"context file {file}")

    def write(self, state_dir: Path) -> Path:
        """Write this context 0600 to its agent directory (atomically); return the path."""
        directory = agent_dir(state_dir, self.task_id, self.agent_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / CONTEXT_FILE
        write_private(path, self.to_json())
        return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "context"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            parts.append(f"field {loc} is missing")
        elif err["type"] == "extra_forbidden":
            parts.append(f"field {loc} is not a context field")
        else:
            parts.append(f"field {loc}: {msg}" if loc != "context" else msg)
    return "; ".join(parts)


def redis_endpoint(url: str) -> RedisEndpoint:
    """host/port of a ``redis://`` URL for the seed's ``coordination.redis``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"invalid Redis URL: {exc}") from None
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise InvalidInputError("the agent context needs a redis:// URL with a host")
    return RedisEndpoint(host=parts.hostname, port=port or 6379)


async def resolve_endpoint(url: str) -> RedisEndpoint:
    """host/port for the seed's ``coordination.redis``: from a ``redis://`` URL, or for
    a ``redis+sentinel://`` one the master the sentinels name now (bash agents reach
    that address; Python agents get the Sentinel URL too and follow failovers)."""
    if url.startswith("redis+sentinel://"):
        from cfn.coordination.connection import sentinel_master_address

        host, port = await sentinel_master_address(url)
        return RedisEndpoint(host=host, port=port)
    return redis_endpoint(url)


def generate_cli_context(
    task_id: str,
    agent_id: str,
    *,
    settings: Settings,
    redis_host: str,
    redis_port: int,
    workspace: str | os.PathLike[str],
    mode: str = DEFAULT_MODE,
    provider: str = DEFAULT_PROVIDER,
    memory_limit: str | None = None,
    timeout: float | None = None,
    cpu_limit: float | None = None,
    heartbeat_interval: float | None = None,
    role: str | None = None,
    loop: int | None = None,
    iteration: int | None = None,
    loop_mode: str | None = None,
    profile: str | None = None,
    model: str | None = None,
    backend: str = "builtin",
    epic: str | None = None,
    feedback: list[str] | None = None,
    redis_username: str = "",
    redis_password: str = "",
    redis_db: int = 0,
    extra: dict[str, Any] | None = None,
) -> AgentContext:
    """The seed's ``generate_cli_context``; limits default to AGENT_* settings.

    ``memory_limit`` is validated by the spawner (parse_memory_limit) when it
    applies it, so a bad value is reported before any process starts.
    """
    keys.validate_id(task_id, "task id")
    keys.validate_id(agent_id, "agent id")
    check_agent_mode(mode)
    keys.validate_id(provider, "provider")
    interval = heartbeat_interval or settings.cfn_agent_heartbeat_interval
    seconds = settings.agent_timeout if timeout is None else timeout
    cpus = settings.agent_cpu_limit if cpu_limit is None else cpu_limit
    data: dict[str, Any] = {
        "task_id": task_id,
        "agent_id": agent_id,
        "mode": mode,
        "workspace": str(Path(workspace).resolve()),
        "coordination": {
            "redis": {"host": redis_host, "port": redis_port},
            "channels": {
                "complete": keys.coord_complete(task_id),
                "error": keys.coord_error(task_id),
                "signal": keys.coord_signal(task_id, agent_id),
            },
        },
        "resources": {
            "memory_limit": memory_limit or settings.agent_memory_limit,
            "timeout": _number(seconds),
        },
        "cfn": {
            "version": CONTEXT_VERSION,
            "name": agent_name(task_id, agent_id),
            "provider": provider,
            "compose_project": settings.compose_project_name or DEFAULT_COMPOSE_PROJECT,
            "role": role,
            "loop": loop,
            "iteration": iteration,
            "loop_mode": loop_mode,
            "profile": profile,
            "model": model,
            "backend": backend,
            "epic": epic,
            "feedback": list(feedback or []),
            "cpu_limit": repr(float(_number(cpus))),
            "heartbeat": {
                "key": keys.heartbeat(task_id, agent_id),
                "interval": interval,
                "ttl_ms": max(1, round(2 * interval * 1000)),
            },
            "signal_key": keys.swarm_signal(task_id, agent_id),
            "result_key": keys.swarm_result(task_id, agent_id),
            "payload_key": keys.coord_payload(task_id, agent_id),
            "redis": {"username": redis_username, "password": redis_password, "db": redis_db},
            "state_dir": str(settings.state_dir),
            "log_file": None,
            "extra": dict(extra or {}),
        },
    }
    return AgentContext.from_dict(data)


def _number(value: float) -> str:
    """Seconds/CPUs as the seed writes them: ``300``, not ``300.0``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInputError(f"expected a positive number, got {value!r}")
    return str(int(value)) if float(value).is_integer() else repr(float(value))
