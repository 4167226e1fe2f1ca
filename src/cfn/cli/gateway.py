"""``cfn llm-gateway``: the LLM gateway every agent's LLM calls go through."""

from __future__ import annotations

from typing import Annotated

import typer

from cfn.cli.common import err, out, print_json, settings
from cfn.errors import CfnError

gateway_app = typer.Typer(
    help="The LLM gateway: Anthropic Messages and OpenAI Chat Completions for agents, "
    "with cfn's routing, budgets and per-call records.",
    invoke_without_command=True,
)


@gateway_app.callback()
def gateway_cmd(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Default: the orchestrator port + 10."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Default: CFN_LLM_GATEWAY_HOST (127.0.0.1).")
    ] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Run in the background; reuse the one already running."),
    ] = False,
) -> None:
    """Serve the gateway in the foreground (or --detach: start or reuse cfn's own)."""
    if ctx.invoked_subcommand is not None:
        return
    from cfn.providers.gateway import server

    cfg = settings()
    if detach:
        if cfg.cfn_llm_gateway_url:
            raise CfnError(
                f"CFN_LLM_GATEWAY_URL names another gateway ({cfg.cfn_llm_gateway_url}); "
                "unset it to run cfn's own"
            )
        out.print(f"LLM gateway: {server.ensure_gateway(cfg)}", markup=False)
        return
    chosen = port or server.gateway_port(cfg)
    server.run_forever(
        cfg,
        host=host,
        port=chosen,
        on_ready=lambda url: err.print(f"LLM gateway listening on {url}", markup=False),
    )


@gateway_app.command("status")
def gateway_status() -> None:
    """This checkout's own gateway: pid, URL (JSON); exit 1 when none runs."""
    from cfn.providers.gateway import server

    found = server.running_gateway(settings())
    if found is None:
        err.print("no LLM gateway of this checkout is running")
        raise typer.Exit(1)
    print_json({k: found[k] for k in ("pid", "url", "host", "port") if k in found})


@gateway_app.command("stop")
def gateway_stop() -> None:
    """Stop this checkout's own gateway."""
    from cfn.providers.gateway import server

    if server.stop_gateway(settings()):
        err.print("LLM gateway stopped")
    else:
        err.print("no LLM gateway of this checkout was running")
