"""The ``cfn`` launcher on real processes: short commands forked from the agent server
answer exactly as a plain run does, signals reach them, a caller that dies takes its
command with it, and without a server the command runs here and starts one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.cli.launch import forkable
from cfn.settings import early
from cfn.system import forkwire
from cfn.system.proc import proc_alive
from tests.support.servers import RedisServer, cfn_env

CFN = [sys.executable, "-m", "cfn"]
#: The launcher run in-process, reporting whether it imported the CLI (typer) itself.
PROBE = (
    "import atexit, sys, runpy; "
    "atexit.register(lambda: print('TYPER', 'typer' in sys.modules, file=sys.stderr)); "
    "sys.argv = ['cfn', *sys.argv[1:]]; "
    "runpy.run_module('cfn', run_name='__main__', alter_sys=True)"
)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def probe(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marker = [line for line in done.stderr.splitlines() if line.startswith("TYPER ")]
    assert marker, done.stderr
    return done, marker[-1] == "TYPER True"


def wait_for(check: object, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, str]]:
    """A private agent server directory: this test starts and stops its own server."""
    values = cfn_env(
        tmp_path, REDIS_URL=redis_server.url, CFN_AGENT_SERVER_DIR=str(tmp_path / "srv")
    )
    try:
        yield values
    finally:
        run(values, "agents", "server", "stop")


@pytest.fixture
def shared(tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    """The checkout's own agent server (shared with other tests, so never stopped here)."""
    values = cfn_env(tmp_path, REDIS_URL=redis_server.url)
    assert run(values, "agents", "server", "start").returncode == 0
    return values


def test_which_commands_may_be_forked() -> None:
    assert forkable(["signal", "send"]) and forkable(["-v", "context", "get"])
    assert forkable([]) and forkable(["--help"])
    assert forkable(["decide", "T1", "PROCEED"]) and forkable(["health", "--json"])
    assert forkable(["agents", "list"]) and forkable(["-v", "agents", "kill", "a"])
    for name in ("run", "orchestrate", "resume", "portal", "agents", "spawn-agent", "redis"):
        assert not forkable([name])
    # the server's own management never runs on the server it manages
    assert not forkable(["agents", "server", "stop"]) and not forkable(["agents", "--help"])


def test_a_plain_run_starts_the_server_and_the_next_command_is_forked(
    env: dict[str, str],
) -> None:
    first, here = probe(env, "ports")
    assert first.returncode == 0 and here  # no server yet: the CLI ran in this process
    assert wait_for(lambda: run(env, "agents", "server", "status").returncode == 0)
    assert wait_for(lambda: probe(env, "ports")[1] is False, timeout=30)
    second, here = probe(env, "ports")
    assert not here and second.returncode == 0
    assert second.stdout == first.stdout


def test_forked_commands_answer_as_plain_ones(shared: dict[str, str]) -> None:
    env = shared
    plain = {**env, "CFN_AGENT_SERVER": "off"}
    value = json.dumps({"files": ["x.py"]})
    cases = [
        ("context", "store", "--task-id", "T1", "--key", "k", "--value", value),
        ("context", "get", "--task-id", "T1", "--key", "k"),
        ("context", "get", "--task-id", "T1", "--key", "missing"),
        ("signal", "send", "--task-id", "a b", "--channel", "x"),
        ("signal", "send", "--task-id", "T1", "--channel", "go", "--payload", "{bad"),
        ("keys", "--pattern", "context:*"),
        ("context",),
        ("--help",),
        ("context", "store", "--no-such-option"),
        ("decide", "T1", "SOMETIMES"),
        ("agents", "list", "--task-id", "T1"),
    ]
    for args in cases:
        forked, here = probe(env, *args)
        assert not here, args
        alone = run(plain, *args)
        assert (forked.returncode, forked.stdout) == (alone.returncode, alone.stdout), args
        strip = [line for line in forked.stderr.splitlines() if not line.startswith("TYPER ")]
        assert strip == alone.stderr.splitlines(), args
        assert "Traceback" not in forked.stderr


def test_signals_reach_the_command_and_a_dead_caller_takes_it_along(
    shared: dict[str, str], tmp_path: Path
) -> None:
    env = shared
    wait = ["signal", "wait", "--task-id", "T1", "--channel", "never", "--timeout", "60"]
    status = run(env, "agents", "server", "status").stdout
    pid = int(status.split("pid")[1].split()[1])

    def ours() -> list[int]:
        """The server's children working in this test's directory (others share it)."""
        found = []
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child}/cwd") == str(tmp_path):
                    found.append(int(child))
        return found

    # Ctrl-C at the caller: the command is interrupted as it would be here.
    caller = subprocess.Popen(
        [*CFN, *wait], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    assert wait_for(lambda: len(ours()) == 1)
    caller.send_signal(signal.SIGINT)
    _out, err = caller.communicate(timeout=30)
    assert caller.returncode == 130 and "Traceback" not in err  # as a plain run ends
    assert wait_for(lambda: ours() == [])
    # The caller SIGKILLed: its command notices the closed connection and ends too.
    caller = subprocess.Popen([*CFN, *wait], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(ours()) == 1)
    (command,) = ours()
    caller.kill()
    caller.wait()
    assert wait_for(lambda: not proc_alive(command), timeout=30)


def test_a_signal_before_the_pid_arrives_is_held_and_relayed() -> None:
    """A Ctrl-C between the server's fork and the pid line reaches the command (it used
    to kill the caller by the default handler and leave the command running)."""
    # A short directory: a unix socket's path holds at most 107 bytes.
    short = tempfile.TemporaryDirectory(prefix="cfn-sig-", dir="/tmp")
    env = {**os.environ, "CFN_AGENT_SERVER": "auto", "CFN_AGENT_SERVER_DIR": short.name}
    path = early.launcher_socket(env)
    assert path is not None
    Path(path).parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(30)
    command = subprocess.Popen(["sleep", "60"])  # stands in for the forked command
    caller = subprocess.Popen(
        [*CFN, "signal", "wait", "--task-id", "T1", "--channel", "c"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            assert conn.recv(1) == forkwire.COMMAND
            caller.send_signal(signal.SIGINT)  # the pid is not sent yet
            # A fork slower than the connect timeout (2 s; a loaded machine): the caller
            # still waits for the pid, which is not a refusal (it used to give up here,
            # exit 130 and leave the command to run).
            time.sleep(2.5)
            assert caller.poll() is None  # held, not fatal
            conn.sendall(forkwire.pid_line(command.pid))
            assert command.wait(timeout=30) == -signal.SIGINT  # relayed once the pid came
            conn.sendall(forkwire.exit_line(signal.SIGINT, 0.0, 0.0, 0))
            _out, err = caller.communicate(timeout=30)
        assert caller.returncode == 130 and "Traceback" not in err
    finally:
        for process in (command, caller):
            process.kill()
            process.wait()
        listener.close()
        short.cleanup()


def test_a_command_that_outlives_its_dead_callers_interrupt_is_killed() -> None:
    """The forked command of a caller that died gets SIGINT, then SIGKILL after the grace
    (a command that took the interrupt for something else ran on for its whole timeout)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, socket, time\n"
            "from cfn.cli.served import _watch_caller\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)  # deaf to the interrupt\n"
            "ours, caller = socket.socketpair()\n"
            "_watch_caller(ours)\n"
            "caller.close()  # the caller dies\n"
            "time.sleep(60)\n",
        ]
    )
    try:
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
