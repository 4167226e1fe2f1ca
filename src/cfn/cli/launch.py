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

# The C modules behind socket and signal, and no json: socket.py, signal.py and json
# cost ~12, ~5 and ~12 ms to import, and this module runs before every command.
import _signal  # type: ignore[import-not-found]  # typeshed has no types for it
import _socket
import os
import sys

from cfn.settings import early
from cfn.system import forkwire as wire
from cfn.system.unix import connect_unix

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
        "decide",
        "health",
    }
)
#: Groups of which only some subcommands may be forked: ``cfn agents server ...``
#: manages the very server that would fork it, so it always runs here.
FORKABLE_SUBCOMMANDS = {"agents": frozenset({"list", "logs", "stats", "kill"})}
#: Top-level options that come before the command and keep it forkable.
OPTIONS = frozenset({"-v", "--verbose"})
CONNECT_TIMEOUT = 2.0
#: How long the fork may take once the request is sent. Longer than the connect: the
#: server may have forked the command already, so giving up early would run it twice
#: (here and there, until the forked one saw its caller gone).
PID_TIMEOUT = 30.0
RELAYED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)


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
    rest = argv[:]
    while rest and rest[0] in OPTIONS:
        rest.pop(0)
    if not rest or rest[0] in FORKABLE or rest[0] in ("--help", "--version"):
        return True
    subcommands = FORKABLE_SUBCOMMANDS.get(rest[0])
    return subcommands is not None and len(rest) > 1 and rest[1] in subcommands


def run_on_server(argv: list[str], path: str) -> int | None:
    """Run the command on the server at ``path``; its exit code, or None when the server
    did not take it (then nothing ran, and the caller runs it itself)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # Signals wait until the relay is in place: a Ctrl-C between the server's fork and
    # the pid's arrival used to kill this process by the default handler and leave the
    # command running on.
    unblocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, RELAYED)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        connect_unix(sock, path)
        fds = (0, 1, 2)
        rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
        sock.sendmsg([wire.COMMAND], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        request = wire.encode_command(prog_name(sys.argv[0]), os.getcwd(), argv, os.environ)
        sock.sendall(request)
        sock.settimeout(PID_TIMEOUT)
        pid = wire.parse_pid(wire.read_line(sock.recv))
    except (OSError, ValueError):
        sock.close()
        # A Ctrl-C that came meanwhile is raised here (KeyboardInterrupt, see main).
        _signal.pthread_sigmask(_signal.SIG_SETMASK, unblocked)
        return None  # not there, or refused (stale code, ...): nothing was forked

    def relay(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return

    for signum in RELAYED:
        _signal.signal(signum, relay)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, unblocked)  # one held meanwhile is relayed
    try:
        sock.settimeout(None)
        report = wire.parse_exit(wire.read_line(sock.recv))
    except OSError:
        report = None
    finally:
        sock.close()
    if report is None:
        os.write(2, b"[ERROR] the agent server went away while running the command\n")
        return 1
    code = os.waitstatus_to_exitcode(report[0])
    return code if code >= 0 else 128 - code


def start_in_background() -> None:
    """Start the agent server for the next command, without waiting (never fails the
    command that asks: a settings error is that command's to report)."""
    from cfn.agents.forkserver import AgentServer
    from cfn.errors import CfnError
    from cfn.settings import get_settings

    try:
        settings = get_settings()
    except CfnError:
        return
    if settings.cfn_agent_server == "auto":
        AgentServer.from_settings(settings).start_background()


def main() -> None:
    """Entry point of the ``cfn`` executable and ``python -m cfn``."""
    argv = sys.argv[1:]
    wanted = forkable(argv)
    path = early.launcher_socket() if wanted else None
    if path is not None:
        try:
            code = run_on_server(argv, path)
        except KeyboardInterrupt:  # before anything was forked: as a plain run ends
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    from cfn.cli.main import main as run_here

    if path is not None:
        start_in_background()
    run_here(prog_name(sys.argv[0]))
