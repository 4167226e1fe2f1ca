"""`cfn docker up|status|down|build`: the engine's lifecycle and bad input, as a user runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CFN


def _cfn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_podman_service_up_status_down(tmp_path: Path) -> None:
    # A state dir of its own: this test starts (and stops) its own podman service.
    state = tmp_path / ".cfn"
    env = {"CFN_STATE_DIR": str(state)}
    socket = state / "podman" / "podman.sock"
    try:
        up = _cfn("docker", "up", env=env)
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"DOCKER_HOST=unix://{socket}"
        pid = int((state / "podman" / "service.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"system", b"service", b"--time=0"]
        conf = (state / "podman" / "containers.conf").read_text()
        assert "default_ulimits = []" in conf and 'runtime = "runc"' in conf
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"CONTAINERS_CONF={state / 'podman' / 'containers.conf'}".encode() in environ
        # Idempotent: a second `up` reuses the running service.
        again = _cfn("docker", "up", env=env)
        assert again.returncode == 0 and int((state / "podman" / "service.pid").read_text()) == pid
        status = _cfn("docker", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert "yes" in status.stdout and str(pid) in status.stdout and "4." in status.stdout
    finally:
        down = _cfn("docker", "down", env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not socket.exists()
    stopped = _cfn("docker", "status", env=env)
    assert stopped.returncode == 1 and "no" in stopped.stdout
    assert _cfn("docker", "down", env=env).stdout.strip() == "podman service was not running"


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["docker", "build", "--image", "nope"], {}, 2, "unknown image 'nope'"),
        (["docker", "status"], {"DOCKER_HOST": "/no/scheme.sock"}, 2, "is not a Docker endpoint"),
        (["docker", "down"], {"DOCKER_HOST": "unix:///x.sock"}, 1, "not cfn's to stop"),
        (["docker", "up"], {"DOCKER_HOST": "unix:///nonexistent/x.sock"}, 1, "no Docker API"),
        (["docker", "up"], {"CFN_PODMAN_BIN": "no-such-podman"}, 1, "not installed"),
        (["docker", "compose", "up", "-f", "/nonexistent.yml"], {}, 2, "not found"),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    state = tmp_path / ".cfn"
    result = _cfn(*args, env={"CFN_STATE_DIR": str(state), **env})
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[ERROR]") and message in lines[0]
    assert not (state / "podman" / "service.pid").exists()  # nothing started
    assert not (state / "images").exists()  # nothing built
