"""Every setting cfn reads, in one pydantic-settings model.

This is the only module that reads the environment. Names are the seed's
environment variables (REDIS_URL, REDIS_FALLBACK_1, ...); defaults are the
seed's ``config/redis.config.js`` values (connect timeout 10 s, lazy connect,
3 retries per request, 100 ms retry delay on failover).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cfn.errors import ConfigError


def find_project_root(start: Path | None = None) -> Path:
    """The checkout (or worktree) that contains ``start``: nearest dir with ``.git``.

    Falls back to ``start`` itself outside a git checkout, so cfn also works in
    a plain directory.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return candidate
    return here


class Settings(BaseSettings):
    """cfn's configuration, from the environment (and an optional ``.env``)."""

    model_config = SettingsConfigDict(
        env_file=None,
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # --- Redis (seed: "Redis Infrastructure") -------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Primary Redis. Unset: cfn starts and reuses its own redis-server.",
    )
    redis_username: str = ""
    redis_password: str = ""
    redis_fallback_1: str | None = Field(default=None, description="Fallback Redis URL.")
    redis_connect_timeout: float = Field(default=10.0, gt=0, le=300)
    redis_lazy_connect: bool = True
    redis_max_retries_per_request: int = Field(default=3, ge=0, le=100)
    redis_retry_delay_on_failover: float = Field(
        default=0.1, ge=0, le=60, description="Seconds between retries (seed: 100 ms)."
    )
    cfn_redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host:port list of Redis Sentinels.",
    )
    cfn_redis_sentinel_master: str = "mymaster"
    cfn_redis_server_bin: str = "redis-server"

    # --- Coordination limits -----------------------------------------------
    cfn_context_max_bytes: int = Field(default=1024 * 1024, gt=0, le=512 * 1024 * 1024)

    # --- Worktrees and ports (seed: "Multi-Worktree Support") --------------
    worktree_branch: str | None = None
    compose_project_name: str | None = None
    cfn_redis_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_postgres_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_orchestrator_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_state_dir: Path | None = Field(
        default=None, description="Where cfn keeps its state; default <checkout>/.cfn"
    )

    # --- Agents (seed: "CLI Coordination") ----------------------------------
    agent_memory_limit: str = "1g"
    agent_timeout: int = Field(default=300, gt=0, le=7 * 24 * 3600)

    @field_validator("cfn_redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cfn_redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for item in value:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"sentinel {item!r} is not host:port")
        return value

    @field_validator("redis_connect_timeout", "redis_retry_delay_on_failover")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def project_root(self) -> Path:
        return find_project_root()

    @property
    def state_dir(self) -> Path:
        return (self.cfn_state_dir or self.project_root / ".cfn").resolve()


def load_settings() -> Settings:
    """Read settings from the environment; a bad value is one clear ConfigError."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings``)."""
    return load_settings()
