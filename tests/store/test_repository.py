"""The skills registry and the CFN Loop tables, on both engines."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from cfn.errors import DatabaseError, InvalidIdError, InvalidInputError, NotFoundError
from cfn.store.records import AgentSpec, SkillChange
from cfn.store.repository import Store, record_llm_call
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
    agents = [
        AgentSpec(id="impl-1-1", role="implementer", provider="offline", model="m"),
        AgentSpec(id="val-1-1", role="validator", profile="reviewer"),
    ]
    task = store.create_task("task-1", "standard", "Build it", agents)
    assert task.status == "pending"
    with pytest.raises(InvalidInputError, match="exists already"):
        store.create_task("task-1", "standard", "again")
    with pytest.raises(InvalidInputError, match="unknown mode"):
        store.create_task("task-2", "turbo", "x")
    with pytest.raises(InvalidIdError):
        store.create_task("bad id", "mvp", "x")

    store.set_task_status("task-1", "running")
    store.start_iteration("task-1", 1)
    store.update_agent("task-1", "impl-1-1", status="done", confidence=0.8, heartbeat=True)
    with pytest.raises(InvalidInputError):
        store.update_agent("task-1", "impl-1-1", confidence=1.2)
    with pytest.raises(NotFoundError):
        store.update_agent("task-1", "ghost", status="done")
    store.finish_iteration("task-1", 1, gate_mean=0.8, consensus_mean=0.92)
    decision = store.record_decision("task-1", 1, "PROCEED", "product-owner", "looks good")
    store.set_task_status("task-1", "succeeded")

    assert store.get_task("task-1").status == "succeeded"
    impl = {a.id: a for a in store.list_agents("task-1")}["impl-1-1"]
    assert (impl.status, impl.confidence, impl.provider) == ("done", 0.8, "offline")
    assert impl.heartbeat is not None
    [iteration] = store.iterations("task-1")
    assert (iteration.gate_mean, iteration.consensus_mean) == (0.8, 0.92)
    assert iteration.finished_at is not None
    assert store.decisions("task-1") == [decision]
    assert [t.id for t in store.list_tasks(status="succeeded")] == ["task-1"]
    with pytest.raises(DatabaseError):
        store.start_iteration("task-1", 1)  # unique (task, number)


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
