"""Unix socket paths of any length (standard library only, nothing imported but ``os``).

``sun_path`` holds at most 107 bytes, and a socket under a deep directory (a
pytest temporary directory, a long ``CFN_AGENT_SERVER_DIR``) does not fit. A
long path is reached through ``/proc/self/fd/<fd of its directory>/<name>``,
which is short and names the same file, for bind and connect alike. The ``cfn``
launcher uses this before every command, so it avoids even ``contextlib`` (~3 ms).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

SUN_PATH_MAX = 107


def _call(method: str, sock: _socket.socket, path: str) -> None:
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        getattr(sock, method)(path)
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        getattr(sock, method)(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def connect_unix(sock: _socket.socket, path: str) -> None:
    """``sock.connect(path)`` for a unix socket path of any length."""
    _call("connect", sock, path)


def bind_unix(sock: _socket.socket, path: str) -> None:
    """``sock.bind(path)`` for a unix socket path of any length."""
    _call("bind", sock, path)
