"""``cfn validate-config``: the seed's validate-config.sh, one line per problem.

Checks, in order: settings (every environment variable and ``.cfn/worktree.env``),
the worktree's names, ports (clashes between services, with other worktrees,
and listeners that are not ours), the compose files present in the compose
directory, agent profiles, provider routes, and the MCP skill mapping. When the
settings themselves do not load, nothing else can be checked and the settings'
problems are all that is reported.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from cfn.errors import CfnError
from cfn.settings import Settings, worktree_env_file
from cfn.worktree.ports import PortRegistry, default_ports, port_is_free
from cfn.worktree.project import (
    check_branch,
    check_project_name,
    compose_project,
    project_name_for,
)

MAX_EXIT = 125


@dataclass
class Check:
    name: str
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def problem_count(self) -> int:
        return sum(len(c.problems) for c in self.checks)

    @property
    def exit_code(self) -> int:
        return min(self.problem_count, MAX_EXIT)


def _settings_check() -> tuple[Check, Settings | None]:
    check = Check("settings")
    env_file = worktree_env_file()
    try:
        cfg = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            check.problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        return check, None
    check.detail = "loaded" + (f", with {env_file}" if env_file.is_file() else "")
    return check, cfg


def _worktree_check(cfg: Settings) -> Check:
    check = Check("worktree")
    project = compose_project(cfg)
    check.detail = f"branch {cfg.worktree_branch or '(main checkout)'}, project {project}"
    if cfg.worktree_branch:
        try:
            check_branch(cfg.worktree_branch)
        except CfnError as exc:
            check.problems.append(f"WORKTREE_BRANCH: {exc}")
    try:
        check_project_name(project)
    except CfnError as exc:
        check.problems.append(str(exc))
    if (
        cfg.worktree_branch
        and cfg.compose_project_name
        and cfg.compose_project_name != project_name_for(cfg.worktree_branch)
    ):
        check.problems.append(
            f"COMPOSE_PROJECT_NAME {cfg.compose_project_name!r} is not the branch's "
            f"{project_name_for(cfg.worktree_branch)!r}: its volumes and networks would not be "
            "the worktree's"
        )
    if cfg.worktree_branch and cfg.cfn_state_dir is not None:
        root = cfg.project_root.resolve()
        state = cfg.state_dir
        if state != root and root not in state.parents:
            check.problems.append(
                f"CFN_STATE_DIR {state} is outside the worktree {root}: worktrees sharing it "
                "share one Redis and one database; unset it"
            )
    subnets: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for name, value in (
        ("CFN_NETWORK_SUBNET", cfg.cfn_network_subnet),
        ("CFN_MCP_SUBNET", cfg.cfn_mcp_subnet),
    ):
        try:
            subnets.append((name, ipaddress.ip_network(value)))
        except ValueError as exc:
            check.problems.append(f"{name}: {value!r} is not a subnet ({exc})")
    if len(subnets) == 2 and subnets[0][1].overlaps(subnets[1][1]):
        check.problems.append(
            f"CFN_NETWORK_SUBNET {subnets[0][1]} and CFN_MCP_SUBNET {subnets[1][1]} overlap"
        )
    return check


def _ports_check(cfg: Settings) -> Check:
    check = Check("ports")
    defaults = default_ports(cfg.worktree_branch)
    wanted = {
        "CFN_REDIS_PORT": cfg.cfn_redis_port or defaults.redis,
        "CFN_POSTGRES_PORT": cfg.cfn_postgres_port or defaults.postgres,
        "CFN_ORCHESTRATOR_PORT": cfg.cfn_orchestrator_port or defaults.orchestrator,
        "MCP_PLAYWRIGHT_PORT": cfg.mcp_playwright_port,
        "MCP_REDIS_TOOLS_PORT": cfg.mcp_redis_tools_port,
        "MCP_N8N_PORT": cfg.mcp_n8n_port,
        "MCP_SECURITY_SCANNER_PORT": cfg.mcp_security_scanner_port,
        "MCP_GATEWAY_PORT": cfg.mcp_gateway_port,
    }
    seen: dict[int, str] = {}
    for name, port in wanted.items():
        if port in seen:
            check.problems.append(f"{name} {port} is also {seen[port]}")
        else:
            seen[port] = name
    check.detail = ", ".join(
        f"{k.removeprefix('CFN_').removesuffix('_PORT').lower()} {v}" for k, v in wanted.items()
    )

    registry = PortRegistry(cfg.state_dir)
    try:
        recorded = registry.read()
    except CfnError as exc:
        check.problems.append(str(exc))
        recorded = {}
    if not cfg.redis_url:
        from cfn.coordination.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(cfg)
        port = wanted["CFN_REDIS_PORT"]
        entry = recorded.get("redis")
        if entry and entry["preferred"] == port:
            port = entry["port"]
        if not port_is_free(port) and not embedded.is_ours(port):
            check.problems.append(
                f"redis port {port} is in use by another program; cfn would move its Redis to "
                "the next free port: set CFN_REDIS_PORT to a free one"
            )
    port = wanted["CFN_ORCHESTRATOR_PORT"]
    entry = recorded.get("orchestrator")
    if entry and entry["preferred"] == port:
        port = entry["port"]
    if not port_is_free(port) and not _portal_is_ours(cfg, port):
        check.problems.append(
            f"orchestrator port {port} is in use by another program; set CFN_ORCHESTRATOR_PORT "
            "to a free one"
        )

    with contextlib.suppress(CfnError):
        from cfn.worktree.manage import list_worktrees

        here = cfg.project_root.resolve()
        mine = {p for n, p in wanted.items() if not n.startswith("MCP_")}
        for tree in list_worktrees(cfg.project_root):
            if tree.path.resolve() == here:
                continue
            theirs = {tree.ports.redis, tree.ports.postgres, tree.ports.orchestrator}
            for clash in sorted(mine & theirs):
                check.problems.append(
                    f"port {clash} is also used by worktree {tree.path} "
                    f"({tree.branch or tree.head})"
                )
    return check


def _portal_is_ours(cfg: Settings, port: int) -> bool:
    from cfn.system.instances import running_instance

    instance = running_instance(cfg)
    return instance is not None and instance.port == port


def _compose_check(cfg: Settings) -> Check:
    from cfn.deploy.compose import COMPOSE_FILE, FILES, WORKTREE_FILE

    directory = (cfg.cfn_compose_dir or cfg.project_root).resolve()
    check = Check("compose")
    present = [directory / name for name in FILES if (directory / name).is_file()]
    if not present:
        check.detail = f"no compose files in {directory} (`cfn compose generate` writes them)"
        return check
    check.detail = ", ".join(p.name for p in present)
    documents: dict[str, dict[str, Any]] = {}
    for path in present:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            check.problems.append(f"{path.name}{where}: not readable YAML")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            check.problems.append(f"{path.name}: no `services:` mapping")
            continue
        documents[path.name] = data
        if path.name == WORKTREE_FILE:
            continue
        declared = set((data.get("networks") or {}).keys())
        volumes = set((data.get("volumes") or {}).keys())
        for name, service in data["services"].items():
            if not isinstance(service, dict):
                check.problems.append(f"{path.name}: service {name} is not a mapping")
                continue
            if "image" not in service and "build" not in service:
                check.problems.append(f"{path.name}: service {name} has neither image nor build")
            nets = service.get("networks") or []
            for net in nets if isinstance(nets, list) else list(nets):
                if net not in declared:
                    check.problems.append(
                        f"{path.name}: service {name} uses network {net}, which is not declared"
                    )
            for volume in service.get("volumes") or []:
                source = str(volume).split(":", 1)[0] if isinstance(volume, str) else ""
                if source and not source.startswith((".", "/", "$", "~")) and source not in volumes:
                    check.problems.append(
                        f"{path.name}: service {name} mounts volume {source}, which is not declared"
                    )
    main = documents.get(COMPOSE_FILE)
    override = documents.get(WORKTREE_FILE)
    if override is not None and main is not None:
        for name in override["services"]:
            if name not in main["services"]:
                check.problems.append(f"{WORKTREE_FILE}: service {name} is not in {COMPOSE_FILE}")
    return check


def _profiles_check(cfg: Settings) -> tuple[Check, list[tuple[str, str]]]:
    check = Check("agent profiles")
    hints: list[tuple[str, str]] = []
    try:
        from cfn.profiles import load_profiles

        profiles = load_profiles(cfg)
    except CfnError as exc:
        check.problems.append(str(exc))
        return check, hints
    check.detail = f"{len(profiles)} profile(s)"
    for profile in profiles:
        if profile.provider:
            hints.append((profile.id, profile.provider))
    return check, hints


def _routes_check(cfg: Settings, hints: list[tuple[str, str]]) -> Check:
    check = Check("provider routes")
    try:
        from cfn.providers.routes import load_route_table

        table = load_route_table(cfg)
    except CfnError as exc:
        check.problems.append(str(exc))
        return check
    check.detail = f"{len(table.routes)} route(s) from {', '.join(table.sources)}"
    for name, value in (
        ("DEFAULT_PROVIDER", cfg.default_provider),
        ("HIGH_COMPLEXITY_PROVIDER", cfg.high_complexity_provider),
        ("COST_PROVIDER", cfg.cost_provider),
    ):
        if value not in table.routes:
            check.problems.append(
                f"{name} {value!r} has no route ({', '.join(sorted(table.routes))})"
            )
    for agent, provider in hints:
        if provider not in table.routes:
            check.problems.append(f"agent profile {agent!r} asks for unknown provider {provider!r}")
    return check


def _mcp_check(cfg: Settings) -> Check:
    check = Check("mcp mapping")
    try:
        from cfn.mcp.routing import skill_mapping
    except ImportError:
        check.detail = "cfn.mcp is not installed; skipped"
        return check
    try:
        mapping = skill_mapping(cfg)
    except CfnError as exc:
        check.problems.append(str(exc))
        return check
    check.detail = ", ".join(f"{k} -> {'/'.join(v)}" for k, v in mapping.items())
    return check


def validate() -> Report:
    """Run every check; the report holds one line per problem."""
    report = Report()
    settings_check, cfg = _settings_check()
    report.checks.append(settings_check)
    if cfg is None:
        return report
    steps: list[Callable[[Settings], Check]] = [
        _worktree_check,
        _ports_check,
        _compose_check,
    ]
    for step in steps:
        report.checks.append(_guarded(step, cfg))
    profiles, hints = _profiles_check(cfg)
    report.checks.append(profiles)
    report.checks.append(_guarded(lambda c: _routes_check(c, hints), cfg))
    report.checks.append(_guarded(_mcp_check, cfg))
    return report


def _guarded(step: Callable[[Settings], Check], cfg: Settings) -> Check:
    try:
        return step(cfg)
    except CfnError as exc:
        name = getattr(step, "__name__", "check").strip("_").removesuffix("_check")
        return Check(name, problems=[str(exc)])


__all__ = ["Check", "Report", "validate"]
