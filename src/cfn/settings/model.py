"""Every setting cfn reads, in one pydantic model.

With :mod:`cfn.settings.early`, the only code that reads the environment. Names are the seed's
environment variables (REDIS_URL, REDIS_FALLBACK_1, ...); defaults are the
seed's ``config/redis.config.js`` values (connect timeout 10 s, lazy connect,
3 retries per request, 100 ms retry delay on failover).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from cfn.errors import ConfigError
from cfn.settings import early


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


WORKTREE_ENV = Path(".cfn") / "worktree.env"


def worktree_env_file(root: Path | None = None) -> Path:
    """The file ``cfn worktree create`` writes into a worktree: its branch, project, ports."""
    return (root or find_project_root()) / WORKTREE_ENV


def _environment_values(names: Iterable[str]) -> dict[str, str]:
    """The raw values of the fields ``names`` (lower case): the checkout's
    ``.cfn/worktree.env`` first, then the environment, whose variables win; variable
    names match case-insensitively, and every value is the text as given (pydantic
    parses it; list fields split it in their own validators, never as JSON).

    This is what pydantic-settings did for this model, without its import (~0.2 s of
    CPU on every cfn process, for the environment and one dotenv file).
    """
    wanted = set(names)
    found: dict[str, str] = {}
    file = worktree_env_file()
    if file.is_file():
        from dotenv import dotenv_values  # only where a worktree file exists

        for key, value in dotenv_values(file).items():
            if value is not None and key.lower() in wanted:
                found[key.lower()] = value
    for key, value in os.environ.items():
        if key.lower() in wanted:
            found[key.lower()] = value
    return found


class Settings(BaseModel):
    """cfn's configuration, from the environment, then the checkout's ``.cfn/worktree.env``.

    ``Settings(**values)`` reads both and lets ``values`` win (what tests use);
    ``model_copy(update=...)`` changes a copy without reading anything.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment_values(type(self).model_fields), **values})

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
    cfn_redis_sentinels: list[str] = Field(
        default_factory=list,
        description="Comma-separated host:port list of Redis Sentinels.",
    )
    cfn_redis_sentinel_master: str = "mymaster"
    cfn_redis_server_bin: str = "redis-server"
    cfn_redis_agent_acl: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Per-agent Redis ACL users: auto (when the server allows ACL SETUSER, "
        "else one warning), on (required), off (agents share the orchestrator's credentials).",
    )

    # --- Coordination limits -----------------------------------------------
    cfn_context_max_bytes: int = Field(default=1024 * 1024, gt=0, le=512 * 1024 * 1024)

    # --- Worktrees and Docker (seed: "Multi-Worktree Support") ---
    # A worktree made by `cfn worktree create` keeps these in <checkout>/.cfn/worktree.env,
    # which is read after the environment (the environment wins).
    worktree_branch: str | None = None
    compose_project_name: str | None = None
    cfn_redis_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_postgres_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_orchestrator_port: int | None = Field(default=None, ge=1, le=65535)
    cfn_state_dir: Path | None = Field(
        default=None, description="Where cfn keeps its state; default <checkout>/.cfn"
    )
    cfn_cache_dir: Path | None = Field(
        default=None,
        description="What checkouts of one machine share (the images' dependency wheels); "
        "default $XDG_CACHE_HOME/cfn, else ~/.cache/cfn.",
    )
    cfn_network_subnet: str = Field(
        default="172.30.0.0/16",
        description="cfn-network's subnet; a worktree gets its own (Docker refuses overlaps).",
    )
    cfn_mcp_subnet: str = Field(
        default="172.31.0.0/16", description="mcp-network's subnet (internal network)."
    )
    cfn_compose_dir: Path | None = Field(
        default=None, description="Where the compose files live; default: the checkout."
    )
    cfn_base_image: str = Field(
        default="cfn-python:bookworm",
        description="Base image of the agent and orchestrator Dockerfiles (BASE_IMAGE).",
    )
    cfn_agent_image: str = "cfn-agent:latest"
    cfn_orchestrator_image: str = "cfn-orchestrator:latest"
    cfn_redis_image: str = "redis:7-bookworm"
    cfn_postgres_image: str = "postgres:16-bookworm"
    # --- Containers (cfn.system.podman, cfn.agents.spawn.container) ---
    cfn_spawn_mode: Literal["process", "docker"] | None = Field(
        default=None,
        description="How the loop starts agents: process (default) or docker (containers).",
    )
    mode: str | None = Field(
        default=None, description="The seed's MODE: MODE=docker also selects the container spawner."
    )
    docker_host: str | None = Field(
        default=None, description="Docker API endpoint; unset: cfn's own podman service."
    )
    cfn_podman_bin: str = "podman"
    cfn_docker_network: str | None = Field(
        default=None, description="Agents' network; default {COMPOSE_PROJECT_NAME}_cfn-network."
    )

    # --- Agents (seed: "CLI Coordination") ----------------------------------
    agent_memory_limit: str = Field(
        default="1g", description="Per-agent memory limit (docker style: 512m, 1g)."
    )
    agent_timeout: int = Field(default=300, gt=0, le=7 * 24 * 3600)
    agent_cpu_limit: float = Field(
        default=1.0, gt=0, le=1024, description="Per-agent CPUs (docker --cpus style)."
    )
    cfn_agent_cpu_burst: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Process agents may run up to this fraction of a period's AGENT_CPU_LIMIT "
        "quota above it, from quota left unused before (a CLI's multi-threaded start-up); "
        "the average stays at the limit. 0: the strict quota of docker --cpus. Linux 5.14+.",
    )
    cfn_agent_cpu_period_us: int = Field(
        default=1_000_000,
        ge=1_000,
        le=1_000_000,
        description="The CFS period of process agents' CPU quota, in microseconds (docker "
        "--cpu-period; 1 ms to 1 s). The burst is a fraction of one period's quota, so a "
        "long period is what lets a CLI's start-up use more than AGENT_CPU_LIMIT for a "
        "moment; the average over any period stays at the limit.",
    )
    cfn_agent_heartbeat_interval: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between agent heartbeats; TTL is 2x."
    )
    cfn_agent_kill_grace: float = Field(
        default=5.0, ge=0, le=600, description="SIGTERM to SIGKILL grace when stopping an agent."
    )
    cfn_agent_cgroups: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Limits through cgroups (v1 or v2): auto (where writable, else RLIMIT_AS), on "
        "(required), off (RLIMIT_AS only).",
    )
    cfn_sandbox: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Commands a model drives (run_command, the Claude Code CLI and its tools, "
        "the Security Scanner's tools) run under bubblewrap: auto (where it works, else "
        "directly, said once in the log), on (required), off (never).",
    )
    cfn_agent_server: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: builtin process agents are forked from a preloaded agent server "
        "(started on demand, one per checkout); off: each agent starts its own Python.",
    )
    cfn_agent_server_idle: float = Field(
        default=600.0, gt=0, le=86400, description="Seconds the agent server stays without agents."
    )
    cfn_agent_server_dir: Path | None = Field(
        default=None,
        description="Where the agent servers live (default $XDG_RUNTIME_DIR or /tmp, "
        "then cfn-<uid>); each checkout's is a directory in it.",
    )
    xdg_runtime_dir: Path | None = None
    xdg_cache_home: Path | None = None

    # --- Providers (seed: "Provider Routing") -------------------------------
    cfn_custom_routing: bool = Field(
        default=False,
        description="true: route per agent profile and task (the seed's selectProvider); "
        "otherwise every call goes to DEFAULT_PROVIDER.",
    )
    provider_routes: list[str] = Field(
        default_factory=list,
        description="provider:model routes (comma/space separated) over the config file's.",
    )
    default_provider: str = "kimi"
    high_complexity_provider: str = "anthropic"
    cost_provider: str = "zai"
    cfn_providers_file: Path | None = Field(
        default=None,
        description="JSON routes/fallbacks/prices/providers; default <checkout>/.claude/"
        "providers.json when it exists.",
    )
    cfn_provider_fallbacks: str | None = Field(
        default=None, description="Fallback chains, e.g. 'zai=kimi,openrouter;kimi=zai'."
    )
    cfn_agents_dir: Path | None = Field(
        default=None, description="Agent profiles (*.json); default <checkout>/.claude/agents"
    )
    cfn_offline_when_no_keys: bool = Field(
        default=True,
        description="Use the offline provider when no real provider has credentials.",
    )
    cfn_task_budget_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    cfn_price_table: str | None = Field(
        default=None,
        description='Price overrides, JSON: {"model": [input_usd_per_mtok, output_usd_per_mtok]}.',
    )
    cfn_provider_timeout: float = Field(default=120.0, gt=0, le=3600)
    cfn_provider_max_retries: int = Field(default=2, ge=0, le=20)
    cfn_provider_backoff: float = Field(default=0.5, ge=0, le=60)
    cfn_provider_backoff_max: float = Field(default=8.0, ge=0, le=600)
    cfn_retry_after_max: float = Field(
        default=60.0, ge=0, le=3600, description="A longer Retry-After moves on at once."
    )
    # The standard proxy variables (either case), for provider calls from cfn's clients.
    https_proxy: str | None = Field(
        default=None, description="Proxy for https provider calls (a CONNECT tunnel)."
    )
    http_proxy: str | None = Field(default=None, description="Proxy for http provider calls.")
    all_proxy: str | None = Field(
        default=None, description="Proxy for both when the two above are unset (http:// only)."
    )
    no_proxy: str | None = Field(
        default=None, description="Hosts (comma-separated, .suffix or *) reached directly."
    )
    zai_api_key: SecretStr | None = None
    moonshot_api_key: SecretStr | None = None
    kimi_api_key: SecretStr | None = None
    openrouter_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    max_api_key: SecretStr | None = Field(
        default=None, description="Key for the `max` route; ANTHROPIC_API_KEY when unset."
    )
    gemini_api_key: SecretStr | None = None
    xai_api_key: SecretStr | None = None
    vllm_api_key: SecretStr | None = None
    zai_api_style: Literal["openai", "anthropic"] = "openai"
    zai_base_url: str = "https://api.z.ai/api/paas/v4"
    zai_anthropic_base_url: str = "https://api.z.ai/api/anthropic"
    kimi_base_url: str = "https://api.moonshot.ai/v1"
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    anthropic_base_url: str = "https://api.anthropic.com"
    max_base_url: str = "https://api.anthropic.com"
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta/openai/"
    xai_base_url: str = "https://api.x.ai/v1"
    ollama_base_url: str = "http://127.0.0.1:11434/v1"
    vllm_base_url: str = "http://127.0.0.1:8000/v1"

    # --- Database (seed: "Database Integration") ---------------------------
    db_path: Path | None = Field(
        default=None, description="SQLite database file (seed: DB_PATH); default <state>/cfn.db"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy/libpq URL, e.g. postgresql://user:pw@host:5432/cfn; "
        "wins over DB_PATH.",
    )
    cfn_db_busy_timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds SQLite waits for a lock."
    )
    cfn_db_connect_timeout: int = Field(
        default=10, gt=0, le=300, description="Seconds to wait for PostgreSQL to accept."
    )
    cfn_db_auto_migrate: bool = Field(
        default=True, description="Bring the schema up to date on first use."
    )
    cfn_query_cache_ttl: int = Field(
        default=300, gt=0, le=7 * 24 * 3600, description="TTL of cache:query:{hash} entries."
    )
    cfn_session_ttl: int = Field(
        default=3600, gt=0, le=30 * 24 * 3600, description="TTL of session:{task} data."
    )

    # --- MCP (seed: "MCP Integration") ---
    mcp_auth_token: SecretStr | None = Field(
        default=None,
        description="Secret that signs MCP tokens (seed: AUTH_TOKEN=${MCP_AUTH_TOKEN}); unset: "
        "one generated once under <state>/mcp/secret (0600). At least 32 characters.",
    )
    mcp_token_ttl: int = Field(
        default=3600, gt=0, le=30 * 24 * 3600, description="Lifetime of a minted MCP token (s)."
    )
    mcp_skill_mapping: str | None = Field(
        default=None,
        description='Skill routing, JSON {"skill": ["server", ...]} (or the seed\'s '
        '{"skill_to_mcp_mapping": {...}}); unset: the seed\'s mapping.',
    )
    mcp_host: str = Field(default="127.0.0.1", description="Address the MCP servers bind.")
    mcp_playwright_port: int = Field(default=8081, ge=1, le=65535)
    mcp_redis_tools_port: int = Field(default=8082, ge=1, le=65535)
    mcp_n8n_port: int = Field(default=8083, ge=1, le=65535)
    mcp_security_scanner_port: int = Field(default=8084, ge=1, le=65535)
    mcp_gateway_port: int = Field(
        default=8080, ge=1, le=65535, description="The gateway (not in the seed's table)."
    )
    mcp_gateway_url: str | None = Field(
        default=None,
        description="Where agents reach the gateway; set by `cfn mcp up` for spawned agents.",
    )
    cfn_mcp_token: SecretStr | None = Field(
        default=None, description="An agent's own MCP token (given to it at spawn)."
    )
    mcp_workspace: Path | None = Field(
        default=None,
        description="The only tree the security scanner may scan; default: the checkout.",
    )
    mcp_playwright_allowed_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:*", "http://localhost:*"],
        description="URL patterns (fnmatch, comma separated) the browser may load.",
    )
    mcp_chromium_path: str = "/usr/bin/chromium"
    mcp_browser_idle_timeout: float = Field(
        default=300.0, gt=0, le=24 * 3600, description="An idle browser session closes after."
    )
    mcp_scan_timeout: float = Field(default=120.0, gt=0, le=3600)
    n8n_url: str = Field(default="http://127.0.0.1:5678", description="n8n's base URL.")
    n8n_api_key: SecretStr | None = Field(default=None, description="n8n REST API key.")
    mcp_cgroups: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Server limits through cgroups (v1 or v2): auto, on (required), off.",
    )
    cfn_portal_mcp: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Mount the MCP gateway in the portal under /mcp: on, off, or auto (when "
        "the MCP servers are configured: MCP_AUTH_TOKEN set or `cfn mcp up` has run).",
    )

    # --- LLM gateway (cfn.providers.gateway) and agent backends ---
    cfn_llm_gateway_url: str | None = Field(
        default=None,
        description="The LLM gateway agents call; unset: cfn starts and reuses its own. "
        "An agent process is given its gateway here.",
    )
    cfn_llm_gateway_host: str = Field(
        default="127.0.0.1", description="Address cfn's own LLM gateway listens on."
    )
    cfn_llm_gateway_port: int | None = Field(
        default=None, ge=1, le=65535, description="Its port; unset: the orchestrator's + 10."
    )
    cfn_llm_gateway_idle: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 24 * 3600,
        description="cfn's own LLM gateway exits after this many seconds without a request.",
    )
    cfn_llm_token: SecretStr | None = Field(
        default=None, description="An agent's own LLM gateway token (given to it at spawn)."
    )
    cfn_llm_token_ttl: int = Field(
        default=6 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description="Lifetime of the LLM gateway tokens minted for agents.",
    )
    cfn_agent_backend: Literal["builtin", "claude-code", "command"] | None = Field(
        default=None,
        description="Which agent runs an agent: builtin (cfn's tool loop, default), "
        "claude-code (the Claude Code CLI) or command (AGENT_COMMAND).",
    )
    cfn_agent_command: str | None = Field(
        default=None,
        description="The executable a `command` agent runs (a shell-like line), when its "
        "profile names none; it keeps cfn's agent contract (examples/agents/bash-agent.sh).",
    )
    cfn_claude_bin: str | None = Field(
        default=None,
        description="The Claude Code CLI; unset: `claude` on PATH, else the one bundled "
        "with claude-agent-sdk.",
    )
    cfn_claude_max_turns: int = Field(default=40, ge=1, le=1000)

    # --- Portal (seed: "Web Portal Integration") ---
    cfn_portal_secret: SecretStr | None = Field(
        default=None,
        description="HS256 key for the portal's JWTs; unset: generated once into "
        "<state>/portal/jwt.secret (0600).",
    )
    cfn_portal_host: str = Field(
        default="127.0.0.1", description="Address the portal listens on (0.0.0.0: all)."
    )
    cfn_portal_token_ttl: int = Field(
        default=3600, gt=0, le=30 * 24 * 3600, description="Lifetime of minted tokens (seed: 1 h)."
    )
    cfn_portal_worker: bool = Field(
        default=True, description="The portal process runs an orchestrator worker too."
    )
    cfn_worker_concurrency: int = Field(
        default=4, ge=1, le=256, description="Tasks one orchestrator worker runs at once."
    )
    cfn_worker_claim_idle: float = Field(
        default=30.0,
        gt=0,
        le=24 * 3600,
        description="Seconds without its worker's keep-alive before another worker takes a "
        "task over.",
    )

    @field_validator("cfn_redis_sentinels", "mcp_playwright_allowed_urls", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("provider_routes", mode="before")
    @classmethod
    def _split_routes(cls, value: object) -> object:
        # A bash array cannot be exported, so accept commas, spaces, newlines and
        # the seed's own `( "zai:glm-4.6" ... )` spelling.
        if isinstance(value, str):
            cleaned = value.strip().removeprefix("(").removesuffix(")")
            return [p.strip().strip("\"'") for p in re.split(r"[,\s]+", cleaned) if p.strip()]
        return value

    @field_validator(
        "cfn_provider_timeout",
        "cfn_provider_backoff",
        "cfn_provider_backoff_max",
        "cfn_retry_after_max",
        "cfn_task_budget_usd",
    )
    @classmethod
    def _finite_provider(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
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

    def to_environment(self) -> dict[str, str | None]:
        """These settings as the variables a child process reads them from (None: the
        variable must be unset), for a cfn process started with the caller's settings
        rather than only its environment (the LLM gateway daemon)."""
        out: dict[str, str | None] = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is None:
                out[name.upper()] = None
            elif isinstance(value, bool):
                out[name.upper()] = "true" if value else "false"
            elif isinstance(value, list | tuple):
                out[name.upper()] = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                out[name.upper()] = json.dumps(value)
            else:
                out[name.upper()] = str(value)
        return out

    @property
    def project_root(self) -> Path:
        return find_project_root()

    @property
    def spawn_mode(self) -> Literal["process", "docker"]:
        """CFN_SPAWN_MODE, else the seed's MODE=docker, else process; never guessed."""
        if self.cfn_spawn_mode is not None:
            return self.cfn_spawn_mode
        return "docker" if (self.mode or "").strip().lower() == "docker" else "process"

    @property
    def agent_server_dir(self) -> Path:
        """This checkout's agent server directory (cfn.agents.forkserver), found as the
        launcher finds it (cfn.settings.early)."""
        base = early.agent_server_base(
            str(self.cfn_agent_server_dir) if self.cfn_agent_server_dir else None,
            str(self.xdg_runtime_dir) if self.xdg_runtime_dir else None,
        )
        return Path(early.agent_server_dir(base))

    @property
    def state_dir(self) -> Path:
        return (self.cfn_state_dir or self.project_root / ".cfn").resolve()

    @property
    def cache_dir(self) -> Path:
        if self.cfn_cache_dir is not None:
            return self.cfn_cache_dir.resolve()
        base = self.xdg_cache_home or Path.home() / ".cache"
        return (base / "cfn").resolve()


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
