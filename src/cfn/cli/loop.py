"""``cfn orchestrate | run | resume | decide``: the CFN Loop from the terminal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cfn.cli.common import err, out, settings, with_redis
from cfn.errors import InvalidInputError
from cfn.loop.orchestrator import Outcome
from cfn.loop.state import BACKENDS, TaskOptions

STATUS_STYLE = {"running": "yellow", "done": "green", "failed": "red", "pending": "dim"}


class LiveView:
    """What a person wants to watch: iteration, loop, agents, gate, consensus, decision."""

    def __init__(self, task_id: str, mode: str) -> None:
        self.task_id = task_id
        self.mode = mode
        self.started = time.monotonic()
        self.iteration = 1
        self.loop = "-"
        self.progress = 0.0
        self.agents: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.offline = False
        self.live: Live | None = None

    def on_event(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "loop:progress":
            self.iteration = int(data.get("iteration", self.iteration))
            self.loop = f"Loop {data.get('loop')}"
            self.progress = float(data.get("progress", 0.0))
        elif kind == "agent:update":
            agent = self.agents.setdefault(str(data.get("agentId")), {})
            for field in ("status", "confidence", "provider", "model", "role", "reason", "backend"):
                if data.get(field) is not None:
                    agent[field] = data[field]
            if data.get("provider") == "offline":
                self.offline = True
        elif kind == "agent:step":
            agent = self.agents.setdefault(str(data.get("agentId")), {})
            agent["steps"] = int(agent.get("steps", 0)) + 1
            if data.get("kind") == "tool_use":
                agent["last"] = f"{data.get('tool')}"
        elif kind in ("gate", "consensus"):
            verdict = "passed" if data.get("passed") else "failed"
            self.lines.append(
                f"iteration {data.get('iteration')}: {kind} {verdict} "
                f"({data.get('score', 0):.3f} vs {data.get('threshold', 0):.2f})"
            )
        elif kind == "decision:awaiting":
            self.lines.append(
                f"waiting for your decision: cfn decide {task_id} PROCEED|ITERATE|ABORT"
            )
        elif kind == "decision":
            self.lines.append(
                f"iteration {data.get('iteration')}: {data.get('decision')} by {data.get('by')}"
                f" — {data.get('reason')}"
            )
        elif kind == "task:resumed":
            self.lines.append(f"resumed at iteration {data.get('iteration')} {data.get('phase')}")
        if self.live is not None:
            self.live.refresh()

    def render(self) -> Group:
        elapsed = time.monotonic() - self.started
        head = Text.from_markup(
            f"[bold]{self.task_id}[/] · mode {self.mode} · iteration {self.iteration} · "
            f"{self.loop} {self.progress * 100:.0f}% · {elapsed:.1f}s"
            + (" · [magenta]OFFLINE provider (no model called)[/]" if self.offline else "")
        )
        table = Table(expand=False)
        for col in ("agent", "role", "backend", "provider", "status", "confidence", "steps",
                    "note"):  # fmt: skip
            table.add_column(col)
        for agent_id, info in sorted(self.agents.items(), key=lambda kv: _order(kv[0])):
            status = str(info.get("status", "pending"))
            conf = info.get("confidence")
            steps = info.get("steps")
            table.add_row(
                agent_id,
                str(info.get("role", "")),
                str(info.get("backend", "")),
                str(info.get("provider", "")),
                f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
                "-" if conf is None else f"{float(conf):.2f}",
                "-" if steps is None else f"{steps} ({info.get('last', '')})".replace(" ()", ""),
                str(info.get("reason") or "")[:60],
            )
        return Group(head, table, *[Text(line) for line in self.lines[-8:]])


def _order(agent_id: str) -> tuple[int, str]:
    parts = agent_id.split("-")
    iteration = int(parts[-1]) if parts[-1].isdigit() else 0
    return iteration, agent_id


def _run(options: TaskOptions | None, resume: str | None) -> Outcome:
    from cfn.loop.app import run_loop

    cfg = settings()
    task_id = options.task_id if options else str(resume)
    mode = options.mode if options else "?"
    view = LiveView(task_id, mode)
    if out.is_terminal:
        with Live(console=out, refresh_per_second=4, get_renderable=view.render) as live:
            view.live = live
            outcome = asyncio.run(
                run_loop(cfg, options=options, resume_task=resume, listener=view.on_event)
            )
    else:

        def plain(task: str, kind: str, data: dict[str, Any]) -> None:
            view.on_event(task, kind, data)
            if kind in ("gate", "consensus", "decision", "decision:awaiting", "task:resumed"):
                out.print(view.lines[-1], markup=False)
            elif kind == "agent:update" and data.get("status") in ("done", "failed"):
                conf = data.get("confidence")
                out.print(
                    f"{data.get('agentId')}: {data.get('status')}"
                    + (f" ({conf:.2f})" if isinstance(conf, float) else "")
                    + (f" — {data.get('reason')}" if data.get("reason") else ""),
                    markup=False,
                )

        outcome = asyncio.run(run_loop(cfg, options=options, resume_task=resume, listener=plain))
    if options is not None:
        out.print(f"workspace: {options.workspace}", markup=False)
    out.print(
        f"events: cfn keys --pattern '*{task_id}*'  ·  resume: cfn resume {task_id}", markup=False
    )
    colour = "green" if outcome.exit_code == 0 else "red"
    out.print(
        f"[{colour}]{outcome.task_id}: {outcome.status}[/] after {outcome.iterations} "
        f"iteration(s) — {outcome.decision or 'no decision'}: {outcome.reason}"
    )
    return outcome


ModeOpt = Annotated[str, typer.Option("--mode", help="mvp | standard | enterprise.")]
EpicOpt = Annotated[str, typer.Option("--epic", help="What the team should do.")]
ComplexityOpt = Annotated[
    str | None, typer.Option("--complexity", help="low | high (feeds provider routing).")
]
CostOpt = Annotated[bool, typer.Option("--cost-sensitive", help="Prefer the cost provider.")]
DecisionOpt = Annotated[
    str, typer.Option("--decision", help="Product owner: policy | agent | human.")
]
TeamOpt = Annotated[int | None, typer.Option(min=1, max=50)]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Which agent runs every agent: builtin | claude-code | command "
        "(default: the profile's, else CFN_AGENT_BACKEND, else builtin).",
    ),
]


def _options(
    task_id: str,
    epic: str,
    mode: str,
    complexity: str | None,
    cost_sensitive: bool,
    decision: str,
    implementers: int | None,
    validators: int | None,
    workspace: Path | None,
    max_iterations: int | None = None,
    provider: str | None = None,
    backend: str | None = None,
) -> TaskOptions:
    from cfn.loop.app import new_task

    return new_task(
        settings(),
        epic,
        task_id=task_id,
        mode=mode,
        complexity=complexity,
        cost_sensitive=cost_sensitive,
        decision=decision,
        implementers=implementers,
        validators=validators,
        max_iterations=max_iterations,
        provider=provider,
        workspace=workspace,
        backend=backend,
    )


def orchestrate_cmd(
    task_id: Annotated[str, typer.Option("--task-id")],
    epic: EpicOpt,
    mode: ModeOpt = "standard",
    complexity: ComplexityOpt = None,
    cost_sensitive: CostOpt = False,
    decision: DecisionOpt = "policy",
    implementers: Annotated[int | None, typer.Option("--implementers", min=1, max=50)] = None,
    validators: Annotated[int | None, typer.Option("--validators", min=1, max=50)] = None,
    workspace: Annotated[Path | None, typer.Option("--workspace")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Force a provider.")] = None,
    max_iterations: Annotated[
        int | None, typer.Option("--max-iterations", min=1, max=100, help="Cap iterations.")
    ] = None,
    backend: BackendOpt = None,
) -> None:
    """Run a task through the CFN Loop (the seed's orchestrate.sh). Exit 0 on PROCEED."""
    options = _options(
        task_id,
        epic,
        mode,
        complexity,
        cost_sensitive,
        decision,
        implementers,
        validators,
        workspace,
        max_iterations,
        provider,
        backend,
    )
    raise typer.Exit(_run(options, None).exit_code)


def run_cmd(
    epic: EpicOpt,
    mode: ModeOpt = "standard",
    complexity: ComplexityOpt = None,
    cost_sensitive: CostOpt = False,
    decision: DecisionOpt = "policy",
    implementers: Annotated[int | None, typer.Option("--implementers", min=1, max=50)] = None,
    validators: Annotated[int | None, typer.Option("--validators", min=1, max=50)] = None,
    workspace: Annotated[Path | None, typer.Option("--workspace")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Force a provider.")] = None,
    max_iterations: Annotated[int | None, typer.Option("--max-iterations", min=1, max=100)] = None,
    backend: BackendOpt = None,
) -> None:
    """Like orchestrate, with a generated task id."""
    from cfn.loop.app import new_task_id

    if backend is not None and backend not in BACKENDS:  # before a task id is announced
        raise InvalidInputError(
            f"unknown agent backend {backend!r}; use one of {', '.join(BACKENDS)}"
        )
    task_id = new_task_id()
    # Every option is checked before the id is announced: a refused run names no task.
    options = _options(
        task_id,
        epic,
        mode,
        complexity,
        cost_sensitive,
        decision,
        implementers,
        validators,
        workspace,
        max_iterations,
        provider,
        backend,
    )
    out.print(f"task id: [bold]{task_id}[/]")
    raise typer.Exit(_run(options, None).exit_code)


def resume_cmd(task_id: Annotated[str, typer.Argument(help="The task to continue.")]) -> None:
    """Continue a task after the orchestrator stopped (even by SIGKILL)."""
    raise typer.Exit(_run(None, task_id).exit_code)


def decide_cmd(
    task_id: Annotated[str, typer.Argument()],
    decision: Annotated[str, typer.Argument(help="PROCEED | ITERATE | ABORT")],
    reason: Annotated[str, typer.Option("--reason")] = "",
) -> None:
    """Give the product owner's decision for a task waiting on a human."""
    from cfn.loop.app import submit_decision

    iteration = with_redis(lambda r: submit_decision(r, task_id, decision, "human:cli", reason))
    err.print(f"{decision.upper()} sent to {task_id} (iteration {iteration})")
