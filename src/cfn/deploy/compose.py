"""The compose files, generated from settings: the stack, the worktree override, the test stack.

``docker-compose.yml`` holds the seed's services (redis, postgres, orchestrator
and the four MCP servers) with the seed's resource table, health checks
(30 s / 10 s / 3) and networks: ``cfn-network`` (172.30.0.0/16) and the
internal ``mcp-network`` (172.31.0.0/16). An internal network has no route
out, so the two servers that must leave it, Playwright (the pages it browses)
and n8n (a hosted n8n), are also on ``mcp-egress``, a plain bridge with outbound
NAT and nothing else on it; the Redis Tools server is also on ``cfn-network``,
where Redis is. The security scanner stays internal only.

``docker-compose.worktree.yml`` is the seed's port override; host ports come from
CFN_*_PORT (``.cfn/worktree.env`` in a worktree) and are published on 127.0.0.1
only. ``docker-compose.test.yml`` is the seed's integration pattern: a throwaway
project (``COMPOSE_PROJECT_NAME=test-$(date +%s)``) with Redis, the orchestrator
and a one-shot ``test-runner`` that runs a loop.

No ``version:`` key: the Compose specification ignores it and Compose v2 warns
about it. The project name comes from COMPOSE_PROJECT_NAME (or ``-p``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cfn.settings import Settings
from cfn.worktree.ports import default_ports
from cfn.worktree.project import (
    CFN_NETWORK,
    EGRESS_NETWORK,
    MCP_NETWORK,
    POSTGRES_VOLUME,
    REDIS_VOLUME,
    compose_project,
)

COMPOSE_FILE = "docker-compose.yml"
WORKTREE_FILE = "docker-compose.worktree.yml"
TEST_FILE = "docker-compose.test.yml"
FILES = (COMPOSE_FILE, WORKTREE_FILE, TEST_FILE)

AGENT_DOCKERFILE = "deploy/Dockerfile.agent"
ORCHESTRATOR_DOCKERFILE = "deploy/Dockerfile.orchestrator"
STATE_VOLUME = "cfn-state"

#: The seed's health check timing.
HEALTH = {"interval": "30s", "timeout": "10s", "retries": 3}


@dataclass(frozen=True)
class Resources:
    """``deploy.resources``: limits / reservations as the seed writes them."""

    memory: str
    cpus: str
    reserve_memory: str
    reserve_cpus: str

    def deploy(self) -> dict[str, Any]:
        return {
            "resources": {
                "limits": {"memory": self.memory, "cpus": self.cpus},
                "reservations": {"memory": self.reserve_memory, "cpus": self.reserve_cpus},
            }
        }


@dataclass(frozen=True)
class McpService:
    service: str
    server_id: str
    port_setting: str
    resources: Resources
    networks: tuple[str, ...]


#: The seed's MCP table (limit / reservation).
MCP_SERVICES = (
    McpService(
        "mcp-playwright",
        "playwright",
        "mcp_playwright_port",
        Resources("512M", "0.5", "256M", "0.25"),
        (MCP_NETWORK, EGRESS_NETWORK),
    ),
    McpService(
        "mcp-redis-tools",
        "redis-tools",
        "mcp_redis_tools_port",
        Resources("256M", "0.25", "128M", "0.1"),
        (MCP_NETWORK, CFN_NETWORK),
    ),
    McpService(
        "mcp-n8n",
        "n8n",
        "mcp_n8n_port",
        Resources("1G", "1.0", "512M", "0.5"),
        (MCP_NETWORK, EGRESS_NETWORK),
    ),
    McpService(
        "mcp-security",
        "security-scanner",
        "mcp_security_scanner_port",
        Resources("512M", "0.5", "256M", "0.25"),
        (MCP_NETWORK,),
    ),
)
#: The seed's agent container table; the orchestrator gets the same.
AGENT_RESOURCES = Resources("1G", "1.0", "512M", "0.5")
# The seed is silent on Redis and PostgreSQL; these are ours.
REDIS_RESOURCES = Resources("512M", "0.5", "256M", "0.25")
POSTGRES_RESOURCES = Resources("1G", "1.0", "512M", "0.5")

INTERNAL = {"redis": 6379, "postgres": 5432, "orchestrator": 3000}


def _health(test: list[str]) -> dict[str, Any]:
    return {"test": test, **HEALTH}


def _build(context: str, dockerfile: str, settings: Settings, **args: str) -> dict[str, Any]:
    """A ``build:`` on the context `cfn docker build` assembles (the Dockerfiles + wheels)."""
    return {
        "context": context,
        "dockerfile": Path(dockerfile).name,
        "args": {"BASE_IMAGE": f"${{CFN_BASE_IMAGE:-{settings.cfn_base_image}}}", **args},
    }


def _build_context(out_dir: Path, settings: Settings) -> str:
    """``<state>/images/context`` relative to the files: the Dockerfiles install cfn from
    wheels built on the host there (no registry reachable inside a build), so
    ``cfn docker build`` must have run once before ``docker compose build``."""
    return os.path.relpath(settings.state_dir / "images" / "context", out_dir.resolve())


def _context(out_dir: Path, settings: Settings) -> str:
    """The build context (the checkout, where pyproject.toml is) relative to the files."""
    rel = os.path.relpath(settings.project_root, out_dir.resolve())
    return "." if rel == "." else rel


REDIS_ENV = {
    "REDIS_URL": "redis://redis:6379/0",
    "REDIS_PASSWORD": "${REDIS_PASSWORD:?set REDIS_PASSWORD}",
}


def compose_stack(settings: Settings, out_dir: Path) -> dict[str, Any]:
    """docker-compose.yml as a dict."""
    context = _context(out_dir, settings)
    build_context = _build_context(out_dir, settings)
    project = compose_project(settings)
    orchestrator_build = _build(build_context, ORCHESTRATOR_DOCKERFILE, settings)
    services: dict[str, Any] = {
        "redis": {
            "image": settings.cfn_redis_image,
            "command": [
                "redis-server",
                "--appendonly",
                "yes",
                "--notify-keyspace-events",
                "Klgxt",
                "--requirepass",
                "${REDIS_PASSWORD:?set REDIS_PASSWORD}",
            ],
            "environment": {"REDISCLI_AUTH": "${REDIS_PASSWORD:?set REDIS_PASSWORD}"},
            "volumes": [f"{REDIS_VOLUME}:/data"],
            "networks": [CFN_NETWORK],
            "deploy": REDIS_RESOURCES.deploy(),
            "healthcheck": _health(["CMD", "redis-cli", "ping"]),
            "restart": "unless-stopped",
        },
        "postgres": {
            "image": settings.cfn_postgres_image,
            "environment": {
                "POSTGRES_USER": "cfn",
                "POSTGRES_DB": "cfn",
                "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}",
            },
            "volumes": [f"{POSTGRES_VOLUME}:/var/lib/postgresql/data"],
            "networks": [CFN_NETWORK],
            "deploy": POSTGRES_RESOURCES.deploy(),
            "healthcheck": _health(["CMD", "pg_isready", "-U", "cfn", "-d", "cfn"]),
            "restart": "unless-stopped",
        },
        "orchestrator": {
            "image": settings.cfn_orchestrator_image,
            "build": orchestrator_build,
            "command": ["cfn", "portal", "--host", "0.0.0.0", "--port", "3000"],  # noqa: S104
            "environment": {
                **REDIS_ENV,
                "DATABASE_URL": "postgresql://cfn:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
                "@postgres:5432/cfn",
                "CFN_STATE_DIR": "/var/lib/cfn",
                "COMPOSE_PROJECT_NAME": f"${{COMPOSE_PROJECT_NAME:-{project}}}",
                "WORKTREE_BRANCH": "${WORKTREE_BRANCH:-}",
                "MCP_AUTH_TOKEN": "${MCP_AUTH_TOKEN:?set MCP_AUTH_TOKEN}",
                "CFN_PORTAL_SECRET": "${CFN_PORTAL_SECRET:-}",
            },
            "volumes": [f"{STATE_VOLUME}:/var/lib/cfn"],
            "networks": [CFN_NETWORK, MCP_NETWORK],
            "depends_on": {
                "redis": {"condition": "service_healthy"},
                "postgres": {"condition": "service_healthy"},
            },
            "deploy": AGENT_RESOURCES.deploy(),
            "healthcheck": _health(["CMD", "curl", "-f", "http://localhost:3000/api/ping"]),
            "restart": "unless-stopped",
        },
    }
    for mcp in MCP_SERVICES:
        port: int = getattr(settings, mcp.port_setting)
        env: dict[str, str] = {
            "MCP_SERVER_ID": mcp.server_id,
            "AUTH_TOKEN": "${MCP_AUTH_TOKEN}",
            "MCP_AUTH_TOKEN": "${MCP_AUTH_TOKEN}",
            "MCP_HOST": "0.0.0.0",  # noqa: S104 - inside its container
        }
        service: dict[str, Any] = {
            "image": settings.cfn_orchestrator_image,
            "command": [
                "python",
                "-m",
                "cfn.mcp.serve",
                mcp.server_id,
                "--host",
                "0.0.0.0",  # noqa: S104
                "--port",
                str(port),
            ],
        }
        if mcp.server_id == "playwright":
            service["image"] = "cfn-mcp-playwright:latest"
            service["build"] = _build(
                build_context, ORCHESTRATOR_DOCKERFILE, settings, WITH_CHROMIUM="1"
            )
            env["MCP_CHROMIUM_PATH"] = "/usr/bin/chromium"
            env["MCP_PLAYWRIGHT_ALLOWED_URLS"] = "${MCP_PLAYWRIGHT_ALLOWED_URLS:-}"
        elif mcp.server_id == "redis-tools":
            env.update(REDIS_ENV)
        elif mcp.server_id == "n8n":
            env["N8N_URL"] = "${N8N_URL:-" + settings.n8n_url + "}"
            env["N8N_API_KEY"] = "${N8N_API_KEY:-}"
        elif mcp.server_id == "security-scanner":
            env["MCP_WORKSPACE"] = "/workspace"
            service["volumes"] = [f"{context}:/workspace:ro"]
        service.update(
            {
                "environment": env,
                "networks": list(mcp.networks),
                "depends_on": ["orchestrator"] if mcp.server_id != "redis-tools" else ["redis"],
                "deploy": mcp.resources.deploy(),
                "healthcheck": _health(["CMD", "curl", "-f", f"http://localhost:{port}/health"]),
                "restart": "unless-stopped",
            }
        )
        services[mcp.service] = service
    services["agent"] = {
        # Not started by `up`: the seed's agent container, for `docker compose run agent`;
        # the container spawner runs the same image with the same limits.
        "image": settings.cfn_agent_image,
        "build": _build(build_context, AGENT_DOCKERFILE, settings),
        "profiles": ["agent"],
        "working_dir": "/workspace",
        "environment": {**REDIS_ENV, "CFN_STATE_DIR": "/var/lib/cfn"},
        "networks": [CFN_NETWORK],
        "deploy": AGENT_RESOURCES.deploy(),
    }
    return {
        "services": services,
        "networks": {
            CFN_NETWORK: {
                "driver": "bridge",
                "ipam": {
                    "config": [
                        {"subnet": f"${{CFN_NETWORK_SUBNET:-{settings.cfn_network_subnet}}}"}
                    ]
                },
            },
            MCP_NETWORK: {
                "driver": "bridge",
                "internal": True,
                "ipam": {"config": [{"subnet": f"${{CFN_MCP_SUBNET:-{settings.cfn_mcp_subnet}}}"}]},
            },
            EGRESS_NETWORK: {"driver": "bridge"},
        },
        "volumes": {REDIS_VOLUME: {}, POSTGRES_VOLUME: {}, STATE_VOLUME: {}},
    }


def compose_worktree(settings: Settings) -> dict[str, Any]:
    """docker-compose.worktree.yml: the seed's port override (defaults: this checkout's ports)."""
    ports = default_ports(settings.worktree_branch)
    host = {
        "redis": settings.cfn_redis_port or ports.redis,
        "postgres": settings.cfn_postgres_port or ports.postgres,
        "orchestrator": settings.cfn_orchestrator_port or ports.orchestrator,
    }
    env = {"redis": "CFN_REDIS_PORT", "postgres": "CFN_POSTGRES_PORT"}
    env["orchestrator"] = "CFN_ORCHESTRATOR_PORT"
    return {
        "services": {
            name: {"ports": [f"127.0.0.1:${{{env[name]}:-{host[name]}}}:{INTERNAL[name]}"]}
            for name in ("redis", "postgres", "orchestrator")
        }
    }


def compose_test(settings: Settings, out_dir: Path) -> dict[str, Any]:
    """docker-compose.test.yml: the seed's end-to-end pattern, on a throwaway project."""
    build_context = _build_context(out_dir, settings)
    test_env = {
        "REDIS_URL": "redis://redis:6379",
        "DB_PATH": "/var/lib/cfn/test.db",
        "CFN_STATE_DIR": "/var/lib/cfn",
    }
    return {
        "services": {
            "redis": {
                "image": settings.cfn_redis_image,
                "command": [
                    "redis-server",
                    "--appendonly",
                    "yes",
                    "--notify-keyspace-events",
                    "Klgxt",
                ],
                "volumes": [f"{REDIS_VOLUME}:/data"],
                "networks": [CFN_NETWORK],
                "deploy": REDIS_RESOURCES.deploy(),
                "healthcheck": _health(["CMD", "redis-cli", "ping"]),
            },
            "orchestrator": {
                "image": settings.cfn_orchestrator_image,
                "build": _build(build_context, ORCHESTRATOR_DOCKERFILE, settings),
                "command": ["cfn", "portal", "--host", "0.0.0.0", "--port", "3000"],  # noqa: S104
                "environment": test_env,
                "volumes": [f"{STATE_VOLUME}:/var/lib/cfn"],
                "networks": [CFN_NETWORK],
                "depends_on": {"redis": {"condition": "service_healthy"}},
                "deploy": AGENT_RESOURCES.deploy(),
                "healthcheck": _health(["CMD", "curl", "-f", "http://localhost:3000/api/ping"]),
            },
            "test-runner": {
                "image": settings.cfn_orchestrator_image,
                "profiles": ["run"],
                "command": [
                    "cfn",
                    "orchestrate",
                    "--task-id",
                    "${CFN_TEST_TASK_ID:-cfn-e2e}",
                    "--mode",
                    "standard",
                    "--epic",
                    "Test the entire CFN Loop",
                ],
                "environment": test_env,
                "volumes": [f"{STATE_VOLUME}:/var/lib/cfn"],
                "networks": [CFN_NETWORK],
                "depends_on": {"orchestrator": {"condition": "service_healthy"}},
                "deploy": AGENT_RESOURCES.deploy(),
            },
        },
        # No fixed subnet: several test projects may run at once.
        "networks": {CFN_NETWORK: {"driver": "bridge"}},
        "volumes": {REDIS_VOLUME: {}, STATE_VOLUME: {}},
    }


HEADER = (
    "# Generated by `cfn compose generate` from cfn's settings; edit the settings and "
    "generate again.\n"
)


def render(document: dict[str, Any], note: str = "") -> str:
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
    return HEADER + (f"# {note}\n" if note else "") + body


def generate(settings: Settings, out_dir: Path | None = None) -> list[Path]:
    """Write the three compose files into ``out_dir`` (default CFN_COMPOSE_DIR or the checkout)."""
    target = (out_dir or settings.cfn_compose_dir or settings.project_root).resolve()
    target.mkdir(parents=True, exist_ok=True)
    project = compose_project(settings)
    documents = {
        COMPOSE_FILE: render(
            compose_stack(settings, target),
            f"docker compose -p {project} up -d  (needs REDIS_PASSWORD, POSTGRES_PASSWORD, "
            "MCP_AUTH_TOKEN)",
        ),
        WORKTREE_FILE: render(
            compose_worktree(settings),
            "docker compose --env-file .cfn/worktree.env -f docker-compose.yml "
            "-f docker-compose.worktree.yml up -d",
        ),
        TEST_FILE: render(
            compose_test(settings, target),
            'COMPOSE_PROJECT_NAME="test-$(date +%s)" docker compose -f docker-compose.test.yml '
            "up -d; ... run test-runner; ... down -v",
        ),
    }
    written: list[Path] = []
    for name, text in documents.items():
        path = target / name
        tmp = path.with_suffix(".yml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
