"""The sandbox for commands a model drives, on real bwrap: what such a command sees,
what it does not, and the choice CFN_SANDBOX makes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cfn.system import sandbox
from cfn.system.sandbox import Sandbox, SandboxUnavailableError, scrubbed, usable

pytestmark = pytest.mark.skipif(not usable("auto"), reason="bwrap does not work here")


def run(
    box: Sandbox, script: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        box.argv(["bash", "-c", script]),
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    checkout = tmp_path / "checkout"
    state = checkout / ".cfn"
    state.mkdir(parents=True)
    (state / "secret").write_text("token-secret")
    (checkout / "code.py").write_text("print('hi')\n")
    other = tmp_path / "other-workspace"
    other.mkdir()
    (other / "theirs.txt").write_text("another agent's file")
    (checkout / "escape").symlink_to(other / "theirs.txt")
    return {"checkout": checkout, "state": state, "other": other}


def test_a_command_sees_the_workspace_and_nothing_of_cfn(layout: dict[str, Path]) -> None:
    box = Sandbox(layout["checkout"], hidden=(layout["state"],))
    out = run(
        box,
        "id -u; id -g; cat code.py; echo made > new.txt; ls -A .cfn | wc -l; "
        f"cat escape; ls {layout['other']}; ls /root; cat /etc/shadow; echo $HOME",
    )
    lines = out.stdout.splitlines()
    assert lines[:3] == ["1000", "1000", "print('hi')"], out
    assert lines[3] == "0"  # the state directory inside the checkout: an empty tmpfs
    assert "token-secret" not in out.stdout and "another agent's file" not in out.stdout
    assert lines[-1] == "/tmp/home"
    assert (layout["checkout"] / "new.txt").read_text() == "made\n"
    assert (layout["state"] / "secret").read_text() == "token-secret"  # untouched
    assert "No such file or directory" in out.stderr


def test_read_only_network_and_the_environment(layout: dict[str, Path]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        reach = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo reached || echo unreachable"
        closed = run(Sandbox(layout["checkout"], read_only=True), f"touch x; {reach}")
        assert "Read-only file system" in closed.stderr
        assert closed.stdout.strip().endswith("unreachable")
        assert not (layout["checkout"] / "x").exists()
        opened = run(Sandbox(layout["checkout"], network=True), reach)
        assert opened.stdout.strip() == "reached", opened
    finally:
        listener.close()
    # The environment is bwrap's own, never its command line.
    box = Sandbox(layout["checkout"])
    argv = box.argv(["bash", "-c", "echo $GIVEN"])
    assert "given-value" not in " ".join(argv)
    out = run(box, "echo $GIVEN", env={"PATH": "/usr/bin:/bin", "GIVEN": "given-value"})
    assert out.stdout.strip() == "given-value"


def test_this_python_and_its_packages_work_inside(layout: dict[str, Path]) -> None:
    out = subprocess.run(
        Sandbox(layout["checkout"], read_only=True).argv(
            [sys.executable, "-c", "import bandit, detect_secrets; print('ok')"]
        ),
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_credentials_are_scrubbed() -> None:
    env = {
        "PATH": "/bin",
        "HOME": "/root",
        "REDIS_URL": "redis://u:p@h:1",
        "REDISCLI_AUTH": "p",
        "REDIS_FALLBACK_1": "redis://x",
        "CFN_MCP_TOKEN": "t",
        "CFN_STATE_DIR": "/s",
        "PGPASSWORD": "pg",
        "LANG": "C.UTF-8",
    }
    assert scrubbed(env) == {"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def test_the_modes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert usable("off") is False
    assert usable("on") is True
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert sandbox.bwrap_path() is None
    assert usable("auto") is False
    with pytest.raises(SandboxUnavailableError, match="CFN_SANDBOX=on"):
        usable("on")
    with pytest.raises(SandboxUnavailableError):
        Sandbox(tmp_path).argv(["true"])
    assert os.environ["PATH"] == str(empty)
