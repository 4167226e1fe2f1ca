"""``cfn demo``: the coordination primitives end to end on the embedded Redis."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cfn._version import __version__
from cfn.cli.common import out, settings
from cfn.coordination.completion import CollectReport
from cfn.coordination.connection import RedisManager, mask_url
from cfn.coordination.embedded import EmbeddedRedis


def demo_cmd(
    agents: Annotated[int, typer.Option("--agents", min=1, max=50)] = 3,
) -> None:
    """Show the coordination primitives end to end on the embedded Redis."""
    from cfn.demo import run_demo

    cfg = settings()
    url = cfg.redis_url or EmbeddedRedis(cfg).ensure_running()
    out.print(f"[bold]cfn {__version__}[/] coordination demo on Redis {mask_url(url)}")
    out.print(
        "[dim]The agents below are demo processes that call no LLM; "
        "the CFN Loop replaces this demo.[/]"
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=out,
    ) as progress:
        bar = progress.add_task("agents reporting", total=agents + 1)

        def on_progress(text: str, report: CollectReport | None) -> None:
            if report is not None:
                progress.update(bar, completed=report.arrived, total=report.expected)
            else:
                progress.console.print(f"  • {text}")

        async def main() -> object:
            manager = RedisManager.from_settings(cfg)
            try:
                return await run_demo(manager, url, agents, on_progress)
            finally:
                await manager.close()

        result = asyncio.run(main())

    from cfn.demo import DemoResult

    assert isinstance(result, DemoResult)
    table = Table(title=f"Loop 3 results for {result.task_id}")
    for col in ("agent", "kind", "confidence", "status"):
        table.add_column(col)
    for item in result.report.results:
        kind = (
            "bash + redis-cli"
            if item.agent_id.endswith(f"-{agents + 1}-1") and result.bash_agent
            else "python"
        )
        conf = "-" if item.confidence is None else f"{item.confidence:.2f}"
        table.add_row(item.agent_id, kind, conf, "ok" if item.ok else f"failed: {item.reason}")
    out.print(table)
    mean = result.report.mean
    verdict = "[green]passed[/]" if result.report.met else "[red]failed[/]"
    out.print(
        f"gate: mean {mean:.3f} vs 0.75 → {verdict}"
        if mean is not None
        else "gate: no usable confidence"
    )
    out.print(f"loop2:start payload received: {result.loop2_payload}")
    out.print(f"lock fencing number: {result.fence}")
    out.print("keys written: " + ", ".join(result.keys))
    out.print(f"inspect them: [bold]cfn keys --pattern '*{result.task_id}*'[/]")
