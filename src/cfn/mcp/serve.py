"""Run one MCP server (or the gateway) in this process: ``python -m cfn.mcp.serve NAME``.

The launcher (``cfn mcp up``) starts one of these per server, under the
server's cgroup limits; tests start them the same way on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from typing import TYPE_CHECKING, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from cfn.errors import CfnError
from cfn.mcp.audit import AuditLog, audit_path
from cfn.mcp.base import Common
from cfn.mcp.routing import GATEWAY, SERVERS, port_of, skill_mapping
from cfn.mcp.tokens import TokenAuthority
from cfn.settings import Settings, load_settings

if TYPE_CHECKING:
    from cfn.store.repository import Store

KEEP_ALIVE = 60
QUIET_LOGGERS = ("httpx", "httpx2", "mcp", "alembic")


def common(settings: Settings, via: str = "direct") -> Common:
    def open_store() -> Store:
        from cfn.store.repository import Store

        return Store.open(settings)

    return Common(
        authority=TokenAuthority.from_settings(settings),
        mapping=skill_mapping(settings),
        audit=AuditLog(audit_path(settings), via=via, open_store=open_store),
    )


def build_app(name: str, settings: Settings) -> ASGIApp:
    """The ASGI app of server ``name`` (or the gateway)."""
    if name == GATEWAY:
        from cfn.mcp.gateway import Gateway

        return Gateway(settings, common(settings, via="gateway")).app(host=settings.mcp_host)
    spec = SERVERS.get(name)
    if spec is None:
        raise CfnError(f"unknown MCP server {name!r}; known: {', '.join(SERVERS)}, {GATEWAY}")
    module = importlib.import_module(spec.module)
    server = module.build(settings, common(settings))
    app: Starlette = server.app(host=settings.mcp_host)
    return app


def _http_protocol() -> type[asyncio.Protocol] | Literal["auto"]:
    """uvicorn's httptools protocol writing each reply in one send() (cfn.mcp.corked)."""
    try:
        from cfn.mcp.corked import http_protocol
    except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
        return "auto"
    return http_protocol()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cfn.mcp.serve")
    parser.add_argument("name", choices=[*SERVERS, GATEWAY])
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Per-request INFO lines of the HTTP clients and the SDK ("HTTP Request: POST ...",
    # "Processing request of type CallToolRequest") would be a log write per call.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
        app = build_app(args.name, settings)
    except CfnError as exc:
        logging.getLogger("cfn.mcp").error("[ERROR] %s", exc)
        return 2
    uvicorn.run(
        app,
        host=args.host or settings.mcp_host,
        port=args.port or port_of(args.name, settings),
        log_level="warning",
        access_log=False,
        http=_http_protocol(),
        # Neither header is used by a client of these servers; both cost every reply.
        server_header=False,
        date_header=False,
        # Agents call tools seconds apart (the model thinks in between): keep their
        # connections, and the gateway's upstream ones, open past uvicorn's 5 s default.
        timeout_keep_alive=KEEP_ALIVE,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
