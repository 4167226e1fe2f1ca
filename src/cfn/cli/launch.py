"""The ``cfn`` executable: hand a short command to the agent server, or run it here.

A ``cfn`` process that imports the CLI pays about half a second of CPU before it
does anything (typer, Rich, pydantic, redis-py). The commands in
:data:`FORKABLE` are short and spawn nothing, so when this checkout's agent
server runs (:mod:`cfn.agents.forkserver`, started by the first agent or the
first plain command), this module, standard library only, passes it the
command's argv, environment, directory and standard streams; the server forks a
process that already imported everything, which runs the command
(:mod:`cfn.cli.served`). This process relays signals to it and exits with its
status. Output, errors and exit codes are the same as a plain run.

Anything else runs here as before: other commands, no server (and then one is
started in the background for the next command), ``CFN_AGENT_SERVER`` not auto,
a server of older code, a closed standard stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

from cfn.settings import early
from cfn.system.unix import unix_address

#: Commands that may run forked from the agent server: short, spawning nothing.
FORKABLE = frozenset(
    {
        "signal",
        "context",
        "lock",
        "keys",
        "collect-results",
        "wait-completion",
        "db",
        "skills",
        "providers",
        "logs",
        "stats",
        "token",
        "validate-config",
        "ports",
    }
)
#: Top-level options that come before the command and keep it forkable.
OPTIONS = frozenset({"-v", "--verbose"})
CONNECT_TIMEOUT = 2.0
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names (after top-level options), None when there is none."""
    for arg in argv:
        if arg not in OPTIONS:
            return arg
    return None


def prog_name(argv0: str) -> str:
    """What usage lines call the program: ``python -m cfn`` or the executable's name."""
    if os.path.basename(argv0) == "__main__.py":
        return "python -m cfn"
    return os.path.basename(argv0) or "cfn"


def forkable(argv: list[str]) -> bool:
    name = command_of(argv)
    return name is None or name in FORKABLE or name in ("--help", "--version")


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def run_on_server(argv: list[str], path: str) -> int | None:
    """Run the command on the server at ``path``; its exit code, or None when the server
    did not take it (then nothing ran, and the caller runs it itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        with unix_address(path) as address:
            sock.connect(address)
        socket.send_fds(sock, [b"C"], [0, 1, 2])
        request = {
            "argv": argv,
            "prog": prog_name(sys.argv[0]),
            "env": dict(os.environ),
            "cwd": os.getcwd(),
        }
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(_read_line(sock) or b"null")
    except (OSError, ValueError):
        sock.close()
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
        sock.close()
        return None  # refused (stale code, ...): nothing was forked
    pid: int = reply["pid"]

    def relay(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in RELAYED:
        signal.signal(signum, relay)
    try:
        sock.settimeout(None)
        report = json.loads(_read_line(sock) or b"null")
    except (OSError, ValueError):
        report = None
    finally:
        sock.close()
    if not isinstance(report, dict) or not isinstance(report.get("status"), int):
        os.write(2, b"[ERROR] the agent server went away while running the command\n")
        return 1
    code = os.waitstatus_to_exitcode(report["status"])
    return code if code >= 0 else 128 - code


def main() -> None:
    """Entry point of the ``cfn`` executable and ``python -m cfn``."""
    argv = sys.argv[1:]
    wanted = forkable(argv)
    path = early.launcher_socket() if wanted else None
    if path is not None:
        code = run_on_server(argv, path)
        if code is not None:
            sys.exit(code)
    from cfn.cli.main import main as run_here

    if path is not None:
        from cfn.cli.served import start_in_background

        start_in_background()
    run_here(prog_name(sys.argv[0]))
