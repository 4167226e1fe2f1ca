"""An MCP server forked from the agent server (request kind b"M", cfn.system.forkwire).

``python -m cfn.mcp.serve NAME`` costs over a second of CPU to start (the MCP SDK,
Starlette, uvicorn, the server's own modules), five times per launch. When this
checkout's agent server runs, the launcher (:mod:`cfn.mcp.launcher`) asks it
instead; the forked child becomes what that command would have been: its own
session (the launcher signals the process group), the server's cgroups joined before
it serves, its log as stdout and stderr, the project as directory, the launcher's
environment, then ``cfn.mcp.serve.main``. The request, read by the child only::

    {"name": "redis-tools", "port": 3101, "cwd": dir, "env": {...}, "cgroups": {...}}
"""

from __future__ import annotations

import json
import os
import socket
import sys

from cfn.system import forkwire
from cfn.system.cgroups import Cgroups


def request(name: str, port: int, cwd: str, env: dict[str, str], cgroups: dict[str, str]) -> bytes:
    payload = {"name": name, "port": port, "cwd": cwd, "env": env, "cgroups": cgroups}
    return json.dumps(payload).encode() + b"\n"


def mcp_child(conn: socket.socket, fds: list[int]) -> int:
    """In the forked child: become ``python -m cfn.mcp.serve NAME --port PORT``."""
    os.setsid()
    req = forkwire.take_request(conn, fds[0])
    name, port, env, groups = req["name"], req["port"], req["env"], req["cgroups"]
    if not isinstance(name, str) or not isinstance(port, int) or not isinstance(env, dict):
        raise ValueError("malformed MCP server request")
    if isinstance(groups, dict) and groups:
        Cgroups({str(k): str(v) for k, v in groups.items()}).join(os.getpid())
    os.chdir(str(req["cwd"]))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    argv = [name, "--port", str(port)]
    sys.argv = ["python -m cfn.mcp.serve", *argv]
    from cfn.mcp.serve import main

    return main(argv)
