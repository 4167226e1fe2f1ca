"""``cfn logs`` and ``cfn stats``: the seed's ``docker logs -f`` and ``docker stats``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from cfn.cli.common import out, print_json, settings
from cfn.troubleshoot import (
    AgentStats,
    find_agent,
    find_agents,
    follow_log,
    sample_stats,
    tail_bytes,
)


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def logs_cmd(
    agent_id: Annotated[str, typer.Argument(help="The agent (e.g. impl-1-1).")],
    task_id: Annotated[
        str | None, typer.Option("--task-id", help="Its task, when several tasks use the id.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the agent ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", help="Only the last N lines first.")
    ] = None,
) -> None:
    """Print an agent's stdout and stderr (its agent.log), like `docker logs`."""
    agent = find_agent(settings(), agent_id, task_id)
    data, offset = tail_bytes(agent.log_path, tail)
    _write(data)
    if follow:
        for chunk in follow_log(agent, offset):
            _write(chunk)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f} MiB"


def _table(stats: list[AgentStats]) -> Table:
    table = Table(title=f"{len(stats)} running agent(s)")
    for column in ("task", "agent", "pid", "procs", "CPU %", "CPU s", "RSS", "cgroup mem", "limit"):
        table.add_column(column, justify="left" if column in ("task", "agent") else "right")
    for item in stats:
        limit = item.memory_limit_bytes
        table.add_row(
            item.agent.task_id,
            item.agent.agent_id,
            str(item.agent.pid or "-"),
            str(item.processes),
            f"{item.cpu_percent:.1f}",
            f"{item.cpu_seconds:.2f}",
            _mib(item.rss_bytes),
            _mib(item.cgroup_memory_bytes),
            "-" if limit is None or limit >= 2**62 else _mib(limit),
        )
    if stats:
        table.add_row(
            "total", "", "", str(sum(s.processes for s in stats)),
            f"{sum(s.cpu_percent for s in stats):.1f}", "",
            _mib(sum(s.rss_bytes for s in stats)), "", "",
        )  # fmt: skip
    return table


def stats_cmd(
    task_id: Annotated[str | None, typer.Option("--task-id", help="Only this task.")] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds CPU use is measured over.")
    ] = 1.0,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Running agents' CPU and memory (cgroups and /proc), like `docker stats --no-stream`."""
    cfg = settings()

    def measure() -> list[AgentStats]:
        return sample_stats(find_agents(cfg, task_id=task_id), interval)

    if as_json:
        print_json([s.to_dict() for s in measure()])
        return
    if not watch:
        out.print(_table(measure()))
        return
    with Live(_table(measure()), console=out, auto_refresh=False) as live:
        while True:  # each pass already waits `interval` while it measures
            live.update(_table(measure()), refresh=True)
