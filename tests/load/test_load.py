"""Many CFN Loop tasks at once, each a real `cfn orchestrate` process with real agent
processes, one redis-server and one SQLite database: every task finishes and no
agent's result is lost. The full run (20 tasks x 5 agents) is `make test-long`;
its figures come from `python -m bench load` (docs/benchmarks.md, "Load")."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.bench_load import run_load


def _check(
    root: Path, tasks: int, agents: int, validators: int, heartbeat: float | None = None
) -> None:
    _base, load = run_load(root, tasks, agents, validators, baseline=False, heartbeat=heartbeat)
    assert load.failed == [], load.failed
    assert load.lost == 0
    # Every iteration of every task ran the whole team, and each agent reported.
    assert load.iterations >= tasks
    assert load.results >= tasks * (agents + validators)
    assert load.results % (agents + validators) == 0
    # Every agent left an exit record. (The 0.2 s sampler of agents alive at once may
    # miss them all: an agent forked from the agent server is done in well under that.)
    assert load.commands > 0 and load.agents == load.results


def test_three_tasks_of_three_agents_lose_nothing(tmp_path: Path) -> None:
    _check(tmp_path, tasks=3, agents=3, validators=2)


@pytest.mark.long
def test_twenty_tasks_of_five_agents_lose_nothing(tmp_path: Path) -> None:
    # cfn's defaults: 100 agents starting at once on 2 cores need several start-up
    # grace periods to reach their first beat; the orchestrator extends the grace
    # while an agent uses CPU (it killed every implementer before it did).
    _check(tmp_path, tasks=20, agents=5, validators=5)
