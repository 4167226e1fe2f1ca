"""The agent server's wire format (standard library only, nothing imported but ``os``).

Its clients are the agent supervisor (:mod:`cfn.agents.shim`) and the ``cfn``
launcher (:mod:`cfn.cli.launch`), which runs before every short command and so
must not pay for ``json``, ``socket`` or ``re``; hence plain lines.

One connection per request::

    client -> server   1 byte, the kind (b"S" an agent's supervisor, b"C" a command,
                       b"M" an MCP server, b"G" the LLM gateway), with SCM_RIGHTS: the
                       descriptors the kind takes
    client -> server   the request, read by the forked child only:
                         S, M, G: JSON + b"\\n"  (cfn.agents.forkserver, cfn.mcp.forked,
                                  cfn.providers.gateway.forked)
                         C: b"<length>\\n" + <length> bytes of NUL-separated fields:
                            prog, cwd, number of arguments, the arguments,
                            then the environment as NAME=VALUE
    server -> client   b"pid <pid>\\n"                               once forked
                       b"exit <wait status> <utime> <stime> <maxrss KiB>\\n"  when it ends
    server -> client   b"error <reason>\\n"                          instead, on refusal
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

SUPERVISOR = b"S"
COMMAND = b"C"
MCP_SERVER = b"M"
LLM_GATEWAY = b"G"
LINE_MAX = 65536
#: The largest request a child reads (an agent's environment is the biggest part).
REQUEST_MAX = 4 * 1024 * 1024


def pid_line(pid: int) -> bytes:
    return b"pid %d\n" % pid


def exit_line(status: int, utime: float, stime: float, maxrss_kb: int) -> bytes:
    return b"exit %d %.6f %.6f %d\n" % (status, utime, stime, maxrss_kb)


def error_line(reason: str) -> bytes:
    return b"error " + " ".join(reason.split()).encode(errors="replace") + b"\n"


def read_line(recv: Callable[[int], bytes]) -> bytes:
    """Bytes up to and including the next newline (fewer when the peer closes)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < LINE_MAX:
        chunk = recv(1)
        if not chunk:
            break
        data += chunk
    return data


def parse_pid(line: bytes) -> int:
    """The pid of a ``pid`` line; ValueError with the server's reason otherwise."""
    word, _, rest = line.strip().partition(b" ")
    if word == b"pid" and rest.isdigit():
        return int(rest)
    if word == b"error":
        raise ValueError(rest.decode(errors="replace"))
    raise ValueError("the agent server closed the connection" if not line else "bad reply")


def parse_exit(line: bytes) -> tuple[int, float, float, int] | None:
    """``(wait status, utime, stime, maxrss KiB)`` of an ``exit`` line; None otherwise."""
    parts = line.split()
    if len(parts) != 5 or parts[0] != b"exit":
        return None
    try:
        return int(parts[1]), float(parts[2]), float(parts[3]), int(parts[4])
    except ValueError:
        return None


def read_json_request(recv: Callable[[int], bytes]) -> dict[str, Any]:
    """A JSON object on one line (kinds S, M and G), at most REQUEST_MAX bytes; ValueError
    when it is too large, not JSON, or not an object with an ``env`` object."""
    import json

    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > REQUEST_MAX:
            raise ValueError("request too large")
    request = json.loads(data)
    if not isinstance(request, dict) or not isinstance(request.get("env"), dict):
        raise ValueError("malformed request")
    return request


def take_request(conn: Any, log_fd: int) -> dict[str, Any]:
    """In a forked child of kind S, M or G: the log becomes stdout and stderr, /dev/null
    stdin; then the request is read and the connection closed."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        conn.settimeout(10.0)
        return read_json_request(conn.recv)
    finally:
        conn.close()


def encode_command(prog: str, cwd: str, argv: list[str], env: Mapping[str, str]) -> bytes:
    fields = [prog, cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    payload = b"\0".join(os.fsencode(f) for f in fields)
    return b"%d\n" % len(payload) + payload


def decode_command(payload: bytes) -> tuple[str, str, list[str], dict[str, str]]:
    """``(prog, cwd, argv, env)``; ValueError when the payload is not one."""
    fields = [os.fsdecode(f) for f in payload.split(b"\0")]
    if len(fields) < 3 or not fields[2].isdigit():
        raise ValueError("malformed command request")
    count = int(fields[2])
    argv, rest = fields[3 : 3 + count], fields[3 + count :]
    if len(argv) != count:
        raise ValueError("malformed command request")
    env: dict[str, str] = {}
    for item in rest:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError("malformed command request")
        env[name] = value
    return fields[0], fields[1], argv, env


def request_fork(
    path: str, kind: bytes, fds: list[int], request: bytes, timeout: float = 10.0
) -> tuple[int, Any]:
    """Ask the agent server at ``path`` to fork a child of ``kind``; ``(pid, connection)``.
    The connection later carries the child's ``exit`` line. OSError or ValueError (with
    the server's reason) when the server is not there or refuses."""
    import socket

    from cfn.system.unix import connect_unix

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        connect_unix(sock, path)
        socket.send_fds(sock, [kind], fds)
        sock.sendall(request)
        pid = parse_pid(read_line(sock.recv))
    except BaseException:
        sock.close()
        raise
    return pid, sock
