"""The four servers of the seed's table and the skill routing in front of them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cfn.errors import ConfigError, McpForbiddenError
from cfn.mcp.tokens import Claims
from cfn.settings import Settings


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server: name, port, limits (seed: limit / reservation) and its /execute tools."""

    name: str
    port_setting: str
    memory_limit: str
    memory_reservation: str
    cpu_limit: float
    cpu_reservation: float
    purpose: str
    execute_tools: tuple[str, ...]
    module: str

    def port(self, settings: Settings) -> int:
        value: int = getattr(settings, self.port_setting)
        return value


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "playwright", "mcp_playwright_port", "512m", "256m", 0.5, 0.25,
            "Browser automation", ("browser", "playwright"), "cfn.mcp.servers.browser",
        ),
        ServerSpec(
            "redis-tools", "mcp_redis_tools_port", "256m", "128m", 0.25, 0.1,
            "Redis management", ("redis", "redis-tools"), "cfn.mcp.servers.redis_tools",
        ),
        ServerSpec(
            "n8n", "mcp_n8n_port", "1g", "512m", 1.0, 0.5,
            "Workflow automation", ("n8n", "workflow"), "cfn.mcp.servers.n8n",
        ),
        ServerSpec(
            "security-scanner", "mcp_security_scanner_port", "512m", "256m", 0.5, 0.25,
            "Security analysis", ("security", "security-scanner", "scanner"),
            "cfn.mcp.servers.security",
        ),
    )
}  # fmt: skip

#: The authenticating gateway's name where a server's name goes (``cfn.mcp.serve gateway``).
GATEWAY = "gateway"


def port_of(name: str, settings: Settings) -> int:
    """The port of a server, or of the gateway."""
    if name == GATEWAY:
        return settings.mcp_gateway_port
    return SERVERS[name].port(settings)


DEFAULT_SKILL_MAPPING: dict[str, tuple[str, ...]] = {
    "browser-automation": ("playwright",),
    "redis-management": ("redis-tools",),
    "workflow-automation": ("n8n",),
    "security-scanning": ("security-scanner",),
}


def parse_skill_mapping(text: str) -> dict[str, tuple[str, ...]]:
    """JSON ``{"skill": ["server", ...]}`` or the seed's ``{"skill_to_mcp_mapping": {...}}``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"MCP_SKILL_MAPPING is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("skill_to_mcp_mapping"), dict):
        data = data["skill_to_mcp_mapping"]
    if not isinstance(data, dict) or not data:
        raise ConfigError('MCP_SKILL_MAPPING must be a JSON object {"skill": ["server", ...]}')
    mapping: dict[str, tuple[str, ...]] = {}
    for skill, servers in data.items():
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ConfigError(f"MCP_SKILL_MAPPING: {skill!r} must map to a list of server names")
        unknown = [s for s in servers if s not in SERVERS]
        if unknown:
            raise ConfigError(
                f"MCP_SKILL_MAPPING: {skill!r} names unknown server(s) {', '.join(unknown)}; "
                f"known: {', '.join(SERVERS)}"
            )
        mapping[str(skill)] = tuple(servers)
    return mapping


def skill_mapping(settings: Settings) -> dict[str, tuple[str, ...]]:
    if settings.mcp_skill_mapping:
        return parse_skill_mapping(settings.mcp_skill_mapping)
    return dict(DEFAULT_SKILL_MAPPING)


def servers_for(skills: Iterable[str], mapping: Mapping[str, Iterable[str]]) -> list[str]:
    """The servers a set of skills reaches, in the seed's table order."""
    reached = {server for skill in skills for server in mapping.get(skill, ())}
    return [name for name in SERVERS if name in reached]


def require_server(claims: Claims, server: str, mapping: Mapping[str, Iterable[str]]) -> None:
    """Refuse (403) a token whose skills do not map to ``server``."""
    if server not in servers_for(claims.skills, mapping):
        raise McpForbiddenError(
            f"token of agent {claims.agent_id} (skills: {', '.join(claims.skills)}) may not "
            f"use the {server} server; a skill mapped to it is needed"
        )


def server_for_execute_tool(tool: str) -> str | None:
    """Which server serves the seed's ``{"tool": ...}`` of ``POST /execute``."""
    for spec in SERVERS.values():
        if tool in spec.execute_tools or tool == spec.name:
            return spec.name
    return None


def mcp_endpoint(gateway_url: str) -> str:
    """The MCP endpoint (streamable HTTP) of the gateway at ``gateway_url``, as agents are
    given it (MCP_GATEWAY_URL: the gateway's base URL; ``/mcp`` already on it is kept)."""
    base = gateway_url.rstrip("/")
    return base if base.endswith("/mcp") else base + "/mcp"
