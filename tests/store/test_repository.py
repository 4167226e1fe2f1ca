"""The skills registry and the CFN Loop tables, on both engines."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from cfn.errors import DatabaseError, InvalidIdError, InvalidInputError, NotFoundError
from cfn.store.records import AgentRecord, DecisionRecord, SkillChange
from cfn.store.repository import T_ITERATIONS, Store, record_llm_call, utcnow
from cfn.store.skills import add_skill, read_skill_source, verify_skill


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "skills" / "browser-automation").mkdir(parents=True)
    (root / "skills" / "browser-automation" / "SKILL.md").write_text("# browse\n")
    (root / "skills" / "lint.md").write_text("lint things\n")
    return root


def test_add_update_and_unchanged(store: Store, project: Path) -> None:
    record, change = add_skill(store, project / "skills" / "browser-automation", project)
    assert change is SkillChange.ADDED
    assert record.name == "browser-automation"
    assert record.content_path == "skills/browser-automation/SKILL.md"
    assert record.content_hash == hashlib.sha256(b"# browse\n").hexdigest()

    again, change = add_skill(store, project / "skills/browser-automation/SKILL.md", project)
    assert change is SkillChange.UNCHANGED
    assert again == record

    (project / "skills/browser-automation/SKILL.md").write_text("# browse v2\n")
    assert verify_skill(record, project) is False
    updated, change = add_skill(store, project / "skills/browser-automation", project)
    assert change is SkillChange.UPDATED
    assert updated.id == record.id
    assert updated.content_hash == hashlib.sha256(b"# browse v2\n").hexdigest()
    assert updated.updated_at is not None and record.updated_at is not None
    assert updated.updated_at > record.updated_at
    assert updated.created_at == record.created_at
    assert verify_skill(updated, project) is True

    lint, _ = add_skill(store, project / "skills/lint.md", project)
    assert lint.name == "lint"
    assert [s.name for s in store.list_skills()] == ["browser-automation", "lint"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/hostname", "outside the project"),
        ("skills/../../escape.md", "outside the project"),
        ("skills/missing.md", "does not exist"),
        ("skills", "has no SKILL.md"),
    ],
)
def test_bad_skill_paths_write_nothing(
    store: Store, project: Path, path: str, message: str
) -> None:
    (project.parent / "escape.md").write_text("outside")
    target = path if path.startswith("/") else str(project / path)
    with pytest.raises(InvalidInputError, match=message):
        add_skill(store, target, project)
    assert store.list_skills() == []


def test_symlink_out_of_the_project_is_refused(store: Store, project: Path) -> None:
    outside = project.parent / "secret.md"
    outside.write_text("secret")
    os.symlink(outside, project / "skills" / "sneaky.md")
    with pytest.raises(InvalidInputError, match="outside the project"):
        read_skill_source(project / "skills" / "sneaky.md", project)
    assert store.list_skills() == []


def test_unknown_skill(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_skill("nope")
    with pytest.raises(NotFoundError):
        store.history("nope")
    with pytest.raises(NotFoundError):
        store.add_approval("nope", "a", "APPROVE", 0.5)


def test_task_life_cycle(store: Store) -> None:
    store.create_task("task-1", "standard", "Build it", options="{}", checkpoint="{}")
    task = store.get_task("task-1")
    assert task.status == "pending"
    assert (task.options, task.checkpoint) == ("{}", "{}")
    with pytest.raises(InvalidInputError, match="exists already"):
        store.create_task("task-1", "standard", "again")
    with pytest.raises(InvalidInputError, match="unknown mode"):
        store.create_task("task-2", "turbo", "x")
    with pytest.raises(InvalidIdError):
        store.create_task("bad id", "mvp", "x")

    impl = AgentRecord("task-1", "impl-1-1", "implementer", 3, 1, None, "offline", "m", "pending")
    store.save_agent(impl)
    store.save_agent(
        AgentRecord("task-1", "val-1-1", "validator", 2, 1, "reviewer", None, None, "pending")
    )
    store.save_checkpoint("task-1", "{}", "running", iteration=1)
    store.save_agent(replace(impl, status="done", confidence=0.8))
    with pytest.raises(InvalidInputError):
        store.save_agent(replace(impl, confidence=1.2))
    with pytest.raises(NotFoundError):
        store.save_checkpoint("ghost", "{}", "running", iteration=1)
    with pytest.raises(DatabaseError):  # no such task: the foreign key refuses the agent
        store.save_agent(replace(impl, task_id="ghost"))
    store.save_checkpoint(
        "task-1", "{}", "running", iteration=1, gate_mean=0.8, consensus_mean=0.92
    )
    decision = store.record_decision(
        DecisionRecord("task-1", 1, "PROCEED", "product-owner", "looks good")
    )
    store.save_checkpoint("task-1", "{}", "succeeded", iteration=1)

    assert store.get_task("task-1").status == "succeeded"
    got = {a.agent_id: a for a in store.list_agents("task-1")}["impl-1-1"]
    assert (got.status, got.confidence, got.provider) == ("done", 0.8, "offline")
    assert [a.agent_id for a in store.list_agents("task-1")] == ["impl-1-1", "val-1-1"]
    [iteration] = store.iterations("task-1")
    assert (iteration.gate_mean, iteration.consensus_mean) == (0.8, 0.92)
    assert iteration.finished_at is not None  # the task finished, so did its iteration
    assert store.decisions("task-1") == [decision]
    assert store.decision("task-1", 1) == decision and decision.id is not None
    # The iteration's decision is unique: a second one gets the first back.
    again = DecisionRecord("task-1", 1, "ABORT", "product-owner", "changed my mind")
    assert store.record_decision(again) == decision
    assert [t.id for t in store.list_tasks(status="succeeded")] == ["task-1"]
    with pytest.raises(DatabaseError):  # unique (task, number)
        store.transaction(
            lambda conn: conn.execute(
                insert(T_ITERATIONS).values(task_id="task-1", number=1, started_at=utcnow())
            )
        )


def test_an_iteration_left_keeps_its_figures_and_is_finished_once(store: Store) -> None:
    store.create_task("t1", "mvp", "epic")
    store.save_checkpoint("t1", "{}", "running", iteration=1, gate_mean=0.9)
    [first] = store.iterations("t1")
    assert first.finished_at is None
    # Consensus failed in iteration 1: the checkpoint moves on to iteration 2 and
    # carries iteration 1's figures with it.
    store.save_checkpoint("t1", "{}", "running", iteration=2, ended=(1, 0.9, 0.75))
    one, two = store.iterations("t1")
    assert (one.number, one.gate_mean, one.consensus_mean) == (1, 0.9, 0.75)
    assert one.finished_at is not None and two.finished_at is None
    finished = one.finished_at
    store.save_checkpoint("t1", "{}", "running", iteration=2, ended=(1, 0.9, 0.75))
    assert store.iterations("t1") == [one, two]  # the same save again changes nothing
    assert (two.number, two.gate_mean, two.consensus_mean) == (2, None, None)
    store.save_checkpoint("t1", "{}", "failed", iteration=2, gate_mean=0.5, ended=(1, 0.9, 0.75))
    one, two = store.iterations("t1")
    assert two.finished_at is not None and two.gate_mean == 0.5
    assert one.finished_at == finished


def test_agents_across_tasks(store: Store) -> None:
    for task_id in ("t2", "t1"):
        store.create_task(task_id, "mvp", "epic")
        store.save_agent(AgentRecord(task_id, "impl-1-1", "implementer", 3, 1, None, None, None,
                                     "running"))  # fmt: skip
    store.save_agent(AgentRecord("t1", "val-1-1", "validator", 2, 1, None, None, None, "done"))
    assert [(a.task_id, a.agent_id) for a in store.list_agents(agent_id="impl-1-1")] == [
        ("t1", "impl-1-1"),
        ("t2", "impl-1-1"),
    ]
    assert [(a.task_id, a.agent_id) for a in store.list_agents(status="done")] == [
        ("t1", "val-1-1")
    ]
    with pytest.raises(InvalidInputError):
        store.list_agents(status="asleep")


def test_event_log_is_append_only(store: Store) -> None:
    first = store.append_event("task.created", {"mode": "mvp"}, "t1")
    store.append_event("note", '{"free": "json"}')
    assert [e.kind for e in store.events()] == ["task.created", "note"]
    assert [e.kind for e in store.events(task_id="t1")] == ["task.created"]
    assert [e.kind for e in store.events(after_id=first)] == ["note"]
    for statement in ("UPDATE events SET kind = 'x'", "DELETE FROM events"):
        with pytest.raises(DatabaseError, match="append-only"), store.write() as conn:
            conn.execute(text(statement))
    assert len(store.events()) == 2


def test_record_llm_call_and_usage(store: Store) -> None:
    record_llm_call(
        provider="anthropic",
        model="claude",
        input_tokens=100,
        output_tokens=20,
        cost_usd=0.0031,
        task_id="t1",
        agent_id="impl-1-1",
        store=store,
    )
    store.record_llm_call(
        provider="zai", model="glm-4.6", input_tokens=5, output_tokens=5, cost_usd=0.0
    )
    usage = store.llm_usage("t1")
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (1, 100, 20)
    assert usage.cost_usd == pytest.approx(0.0031)
    assert store.llm_usage().calls == 2
    with pytest.raises(InvalidInputError):
        store.record_llm_call(provider="p", model="m", input_tokens=-1, output_tokens=0, cost_usd=0)
    with pytest.raises(InvalidInputError):
        store.record_llm_call(
            provider="p", model="m", input_tokens=1, output_tokens=0, cost_usd=float("nan")
        )
    assert store.llm_usage().calls == 2
