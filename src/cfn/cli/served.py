"""``cfn`` commands forked from the agent server: the server's CLI side.

The agent server (:mod:`cfn.agents.forkserver`) runs as ``cfn agents server
serve``; besides builtin agents it forks the short commands the launcher
(:mod:`cfn.cli.launch`) hands it, with everything a ``cfn`` process would have
imported already loaded. Wire format of a command (b"C")::

    client -> server   1 byte b"C", with SCM_RIGHTS: [stdin, stdout, stderr]
    client -> server   prog, cwd, argv and environment (cfn.system.forkwire.encode_command),
                       read by the child only
    server -> client   b"pid N\\n", later b"exit ...\\n" (as for agents)

The child takes the three descriptors as its own 0, 1 and 2, the caller's
directory, environment and arguments, fresh ``sys.std*`` streams and consoles
(so NO_COLOR, COLUMNS and a terminal are the caller's), empty settings caches,
and runs the command as ``cfn`` would. It watches the connection: when the
caller goes away (even SIGKILLed), the command is interrupted as Ctrl-C would.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from cfn.agents import forkserver
from cfn.mcp import forked
from cfn.providers.gateway import forked as gateway_forked
from cfn.system import forkwire as wire

#: Seconds a command whose caller died has to end after the SIGINT, before SIGKILL.
CALLER_GONE_GRACE = 2.0


def _preload() -> None:
    """What agents, the forkable commands (cfn.cli.launch.FORKABLE) and the MCP servers
    (cfn.mcp.forked) use."""
    forkserver.preload()
    import uvicorn.lifespan.on
    import uvicorn.protocols.http.auto
    import uvicorn.protocols.websockets.auto  # noqa: F401

    import cfn.providers.gateway.app
    import cfn.providers.gateway.recorder  # noqa: F401  (the LLM gateway, cfn.providers.gateway.forked)
    from cfn.cli.launch import FORKABLE, FORKABLE_SUBCOMMANDS
    from cfn.cli.main import warm

    warm([*FORKABLE, *FORKABLE_SUBCOMMANDS])


def serve(directory: Path, idle: float, *, preload: bool = True) -> int:
    if preload:
        _preload()
    kinds = {
        **forkserver.AGENT,
        wire.COMMAND: forkserver.Kind(3, command_child),
        wire.MCP_SERVER: forkserver.Kind(1, forked.mcp_child),
        wire.LLM_GATEWAY: forkserver.Kind(1, gateway_forked.gateway_child),
    }
    return forkserver.serve(directory, idle, kinds)


def _stream(fd: int, mode: str, unbuffered: bool) -> io.TextIOWrapper:
    errors = "backslashreplace" if fd == 2 else "strict"
    if mode == "r":
        return io.TextIOWrapper(io.FileIO(fd, "r", closefd=False), encoding="utf-8")
    tty = os.isatty(fd)
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors=errors,
        line_buffering=tty or fd == 2,
        write_through=unbuffered,
    )


def _read_payload(conn: socket.socket) -> bytes:
    conn.settimeout(10.0)
    header = wire.read_line(conn.recv)
    if not header.strip().isdigit() or int(header) > wire.REQUEST_MAX:
        raise ValueError("malformed command request")
    size = int(header)
    payload = bytearray()
    while len(payload) < size:
        chunk = conn.recv(min(65536, size - len(payload)))
        if not chunk:
            raise ValueError("the command request ended early")
        payload += chunk
    return bytes(payload)


def _watch_caller(conn: socket.socket) -> None:
    """Interrupt the command once the caller's end of the connection closes, and end it
    for good if the interruption does not (the caller waits for the command's end, so
    only a caller killed outright closes first, and a plain run would be gone with it).

    A command may outlive a Ctrl-C: code that takes KeyboardInterrupt or a cancellation
    for something else runs on, holding its Redis connections and subscriptions, for as
    long as its own timeout says.
    """

    def watch() -> None:
        try:
            conn.settimeout(None)
            while conn.recv(4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(CALLER_GONE_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="cfn-caller-watch", daemon=True).start()


def command_child(conn: socket.socket, fds: list[int]) -> int:
    """In the forked child: become the caller's ``cfn`` command and run it."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    prog, cwd, argv, env = wire.decode_command(_read_payload(conn))
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = _stream(0, "r", unbuffered)
    sys.stdout = _stream(1, "w", unbuffered)
    sys.stderr = _stream(2, "w", unbuffered)
    sys.argv = ["cfn", *argv]
    _watch_caller(conn)

    from cfn.cli.common import reset_consoles
    from cfn.cli.main import main
    from cfn.settings import get_settings

    get_settings.cache_clear()
    reset_consoles()
    try:
        main(prog or "cfn")
    except SystemExit as done:
        code = done.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
