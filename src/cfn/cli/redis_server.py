"""``cfn redis start|status|env|stop``: the embedded redis-server."""

from __future__ import annotations

import typer
from rich.table import Table

from cfn.cli.common import out, print_plain, settings
from cfn.coordination.connection import mask_url
from cfn.coordination.embedded import EmbeddedRedis

redis_app = typer.Typer(help="The embedded redis-server.", no_args_is_help=True)


@redis_app.command("start")
def redis_start() -> None:
    """Start the embedded redis-server (or find the running one)."""
    url = EmbeddedRedis(settings()).ensure_running()
    print_plain(mask_url(url))


@redis_app.command("status")
def redis_status() -> None:
    """Show whether the embedded redis-server runs (exit 1 when it does not)."""
    if settings().redis_url:
        out.print(
            f"REDIS_URL is set ({mask_url(settings().redis_url or '')}); "
            "the embedded Redis is not used."
        )
    status = EmbeddedRedis(settings()).status()
    table = Table(show_header=False)
    table.add_row("running", "[green]yes[/]" if status.running else "[red]no[/]")
    table.add_row("port", str(status.port or "-"))
    table.add_row("pid", str(status.pid or "-"))
    table.add_row("data", str(status.data_dir))
    if status.running:
        table.add_row("url", mask_url(status.url or ""))
        table.add_row("keys", str(status.keys))
        table.add_row("memory", f"{(status.memory_bytes or 0) / 1024 / 1024:.1f} MiB")
        table.add_row("aof", "on" if status.aof_enabled else "off")
    out.print(table)
    if not status.running:
        raise typer.Exit(1)


@redis_app.command("env")
def redis_env() -> None:
    """Print shell exports so plain redis-cli (and the seed's bash scripts) reach it.

    Use as ``eval "$(cfn redis env)"``; it prints the password, so don't log it.
    """
    from urllib.parse import unquote, urlsplit

    url = settings().redis_url or EmbeddedRedis(settings()).ensure_running()
    parts = urlsplit(url)
    exports = {
        "REDIS_URL": url,
        "REDISCLI_AUTH": unquote(parts.password or ""),
        "CFN_REDIS_HOST": parts.hostname or "127.0.0.1",
        "CFN_REDIS_PORT": str(parts.port or 6379),
    }
    import shlex

    for name, value in exports.items():
        if value:
            print_plain(f"export {name}={shlex.quote(value)}")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded redis-server (its AOF keeps the data)."""
    if EmbeddedRedis(settings()).stop():
        out.print("embedded redis-server stopped")
    else:
        out.print("embedded redis-server was not running")
