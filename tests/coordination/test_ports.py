from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from cfn.worktree.ports import PortRegistry, calculate_ports, default_ports, port_is_free
from tests.support.servers import free_port

SEED_CALCULATE_PORTS = r"""
calculate_ports() {
  local branch="$1"
  local hash=$(echo "$branch" | sha256sum | cut -c1-2)
  local offset=$((0x$hash % 1000))

  echo $((6379 + offset)) # Redis
  echo $((5432 + offset)) # Postgres
  echo $((3001 + offset)) # Orchestrator
}
calculate_ports "$1"
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "branch", ["main", "feature-auth", "feature/auth", "fix_123", "ÄÖü-branch", "a b", "x" * 200]
)
def test_calculate_ports_matches_seed_bash(branch: str) -> None:
    out = subprocess.run(
        ["bash", "-c", SEED_CALCULATE_PORTS, "calc", branch],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ports = calculate_ports(branch)
    assert [ports.redis, ports.postgres, ports.orchestrator] == [int(p) for p in out]


def test_main_checkout_uses_seed_defaults() -> None:
    ports = default_ports(None)
    assert (ports.redis, ports.postgres, ports.orchestrator) == (6379, 5432, 3000)
    wt = default_ports("feature-auth")
    assert wt == calculate_ports("feature-auth")
    assert 3001 <= wt.orchestrator <= 3001 + 255


def test_taken_port_moves_to_next_free_and_is_recorded(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        registry = PortRegistry(tmp_path)
        chosen = registry.resolve("redis", taken)
        assert chosen != taken and chosen > taken
        assert port_is_free(chosen)
        recorded = json.loads((tmp_path / "ports.json").read_text())
        assert recorded["redis"] == {"port": chosen, "preferred": taken}
        # Every later command agrees, even once the preferred port is free again.
    assert PortRegistry(tmp_path).resolve("redis", taken) == chosen


def test_our_own_listener_is_reused(tmp_path: Path) -> None:
    with socket.socket() as ours:
        ours.bind(("127.0.0.1", 0))
        ours.listen()
        port = ours.getsockname()[1]
        assert PortRegistry(tmp_path).resolve("redis", port, lambda p: p == port) == port


def test_changed_preference_is_followed(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    registry = PortRegistry(tmp_path)
    assert registry.resolve("orchestrator", first) == first
    assert registry.resolve("orchestrator", second) == second


def test_corrupt_ports_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ports.json").write_text("{not json")
    from cfn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ports\.json is not valid JSON"):
        PortRegistry(tmp_path).resolve("redis", free_port())
