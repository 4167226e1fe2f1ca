"""cfn's LLM gateway forked from the agent server (request kind b"G", cfn.system.forkwire).

``python -m cfn llm-gateway`` costs some 1.5 s of CPU to start (Starlette, uvicorn,
the store, redis-py, the provider clients); the loop starts it on first need,
so every first task of a checkout (and every test with agents) paid for it.
When this checkout's agent server runs, ``ensure_gateway`` asks it instead; the
forked child becomes what that command would have been: its own session, its
log as stdout and stderr, the checkout as directory, the caller's environment
(the provider keys are in it: the gateway is the one process that holds them),
then the same serving loop. The request (written by
``cfn.providers.gateway.server.fork_request``), read by the child only::

    {"host": "127.0.0.1", "port": 3010, "cwd": dir, "env": {...}}
"""

from __future__ import annotations

import os
import socket
import sys

from cfn.system import forkwire


def gateway_child(conn: socket.socket, fds: list[int]) -> int:
    """In the forked child: become ``python -m cfn llm-gateway --host H --port P``."""
    os.setsid()
    req = forkwire.take_request(conn, fds[0])
    host, port, env = req["host"], req["port"], req["env"]
    if not isinstance(host, str) or not isinstance(port, int) or not isinstance(env, dict):
        raise ValueError("malformed LLM gateway request")
    with open("/proc/self/comm", "w") as comm:  # `ps` names it, not the agent server
        comm.write("cfn-llm-gateway")
    os.chdir(str(req["cwd"]))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    sys.argv = ["python -m cfn llm-gateway", "--host", host, "--port", str(port)]
    from cfn.providers.gateway.server import run_forever
    from cfn.settings import load_settings

    return run_forever(load_settings(), host=host, port=port)
