"""``cfn validate-config``: a clean configuration exits 0; each problem is one
``[ERROR]`` line and the exit code counts them (capped at 125)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.deploy.compose import generate
from cfn.deploy.validate import Check, Report, validate
from cfn.settings import Settings
from tests.support.servers import free_port

CFN = [sys.executable, "-m", "cfn"]
FOREIGN = (
    "WORKTREE_BRANCH",
    "COMPOSE_PROJECT_NAME",
    "DEFAULT_PROVIDER",
    "HIGH_COMPLEXITY_PROVIDER",
    "COST_PROVIDER",
    "PROVIDER_ROUTES",
    "MCP_SKILL_MAPPING",
    "AGENT_TIMEOUT",
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A git checkout with generated compose files and free ports; cwd inside it."""
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    for name in FOREIGN:
        monkeypatch.delenv(name, raising=False)
    for name in ("CFN_REDIS_PORT", "CFN_POSTGRES_PORT", "CFN_ORCHESTRATOR_PORT"):
        monkeypatch.setenv(name, str(free_port()))
    monkeypatch.chdir(root)
    generate(Settings(), root)
    yield root


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN, "validate-config", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_clean_config_exits_zero(project: Path) -> None:
    report = validate()
    assert report.problem_count == 0, [c.problems for c in report.checks]
    names = [c.name for c in report.checks]
    assert names == [
        "settings",
        "worktree",
        "ports",
        "compose",
        "agent profiles",
        "provider routes",
        "mcp mapping",
    ]
    run = run_cli(project, "--verbose")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    assert "[OK] compose: docker-compose.yml, docker-compose.worktree.yml" in run.stdout
    assert run.stdout.strip().endswith("0 problem(s)")
    assert run_cli(project).stdout == ""  # quiet when all is well


def test_each_problem_is_one_line_and_counted(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = free_port()
    monkeypatch.setenv("CFN_REDIS_PORT", str(shared))
    monkeypatch.setenv("MCP_N8N_PORT", str(shared))  # 1: two services, one port
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "Bad_Name")  # 2: Compose refuses upper case
    monkeypatch.setenv("CFN_MCP_SUBNET", "172.30.1.0/24")  # 3: overlaps cfn-network
    monkeypatch.setenv("DEFAULT_PROVIDER", "nosuch")  # 4: no route
    monkeypatch.setenv("MCP_SKILL_MAPPING", '{"browser-automation": ["nope"]}')  # 5
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "broken.json").write_text('{"id": "x", "name": ""}')  # 6: bad profile
    monkeypatch.setenv("CFN_AGENTS_DIR", str(agents))
    (project / "docker-compose.test.yml").write_text("services: [unclosed\n")  # 7
    (project / "docker-compose.yml").write_text(
        "services:\n  redis:\n    image: r\n    networks: [nowhere]\n"  # 8: undeclared
    )
    (project / "docker-compose.worktree.yml").write_text(
        "services:\n  ghost:\n    ports: ['1:1']\n"  # 9: not in docker-compose.yml
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("CFN_ORCHESTRATOR_PORT", str(busy.getsockname()[1]))  # 10: taken
        report = validate()
        problems = [f"{c.name}: {p}" for c in report.checks for p in c.problems]
        assert len(problems) == 10, problems
        assert report.exit_code == 10
        run = run_cli(project)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 10, run.stderr
    assert len(lines) == 10 and all(line.startswith("[ERROR] ") for line in lines)
    text = run.stderr
    for fragment in (
        f"MCP_N8N_PORT {shared} is also CFN_REDIS_PORT",
        "'Bad_Name' is not a Compose project name",
        "overlap",
        "DEFAULT_PROVIDER 'nosuch' has no route",
        "unknown server(s) nope",
        "broken.json",
        "docker-compose.test.yml line 2: not readable YAML",
        "uses network nowhere, which is not declared",
        "service ghost is not in docker-compose.yml",
        "in use by another program",
    ):
        assert fragment in text, (fragment, text)


def test_bad_settings_stop_the_other_checks(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFN_REDIS_PORT", "not-a-port")
    monkeypatch.setenv("AGENT_TIMEOUT", "0")
    report = validate()
    assert [c.name for c in report.checks] == ["settings"]
    assert report.problem_count == 2
    run = run_cli(project)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("CFN_REDIS_PORT" in line for line in lines)
    assert any("AGENT_TIMEOUT" in line for line in lines)


def test_worktree_names_and_shared_state_are_problems(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKTREE_BRANCH", "feature-auth")
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "cfn-something-else")
    monkeypatch.setenv("CFN_STATE_DIR", str(tmp_path / "elsewhere"))
    (check,) = [c for c in validate().checks if c.name == "worktree"]
    assert len(check.problems) == 2, check.problems
    assert "not the branch's 'cfn-feature-auth'" in check.problems[0]
    assert "share one Redis and one database" in check.problems[1]


def test_exit_code_is_capped_at_125() -> None:
    report = Report([Check("x", problems=[str(i) for i in range(300)])])
    assert report.problem_count == 300 and report.exit_code == 125
