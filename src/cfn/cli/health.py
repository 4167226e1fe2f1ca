"""``cfn health``: the seed's check_system_health as a table (or JSON)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cfn.cli.common import out, print_json, settings

if TYPE_CHECKING:
    from cfn.health import HealthReport

STYLE = {"ok": "green", "warn": "yellow", "error": "red"}


def render(report: HealthReport) -> Table:
    table = Table(title="cfn health")
    for column in ("check", "status", "latency", "detail"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    for item in report.checks:
        status = (
            "[dim]not configured[/]"
            if not item.configured
            else f"[{STYLE[item.status]}]{item.status}[/]"
        )
        latency = "-" if item.latency_ms is None else f"{item.latency_ms:.1f} ms"
        table.add_row(item.name, status, latency, item.detail)
    return table


def health_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds each check may wait for an answer.")
    ] = 3.0,
) -> None:
    """Check Redis, the database, MCP servers, the portal, agents and containers.

    Exit code: the number of failed checks (0 = healthy), at most 125.
    """
    # Imported here: cfn.health loads every part it checks, which no other command needs.
    from cfn.health import check_system, validate_timeout

    limit = validate_timeout(timeout)
    report = asyncio.run(check_system(settings(), timeout=limit))
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(render(report))
        colour = STYLE[report.status]
        out.print(
            f"[{colour}]{report.errors} error(s), {report.warnings} warning(s)[/] "
            f"in {report.took_ms:.0f} ms"
        )
    raise typer.Exit(report.exit_code)
